"""The `editgate` command line. Exit codes: 0 passed, 1 the gate failed, 2 invalid input, 3 the run failed,
4 interrupted (SIGINT/SIGTERM: the report says how far the run got).

No command shows a traceback: input errors are listed one per line as file:line: message, anything else
is one line naming the error (EDITGATE_DEBUG=1 prints the traceback too). Every line printed goes
through editgate/safetext.py, since much of it quotes the repository.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

import editgate
from editgate.errors import InputError, RunError
from editgate.interrupt import Interrupted, interruptible
from editgate.safetext import printable_line, printable_lines

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


def echo(message: str, err: bool = False) -> None:
    """One line (or several) of output, made safe to print (no control characters, no workflow commands)."""
    click.echo(printable_lines(message), err=err)


class Progress:
    """Progress lines on stderr, silenced by --quiet (stdout stays clean for the verdict)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        if quiet:  # third-party tqdm bars too (the GGUF conversion's): read when tqdm is first imported
            os.environ.setdefault("TQDM_DISABLE", "1")

    def __call__(self, message: str) -> None:
        if not self.quiet:
            click.echo(printable_line(message), err=True)


def _quiet_libraries() -> None:
    """transformers' and datasets' progress bars and advice would drown editgate's own progress lines."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def _fail_input(error: InputError) -> None:
    for problem in error.problems:
        echo(str(problem), err=True)
    echo(f"{len(error.problems)} problem(s) found; nothing was run.", err=True)
    sys.exit(EXIT_INVALID)


class _Main(click.Group):
    """The command group, with the last word on errors: no traceback ever reaches the user."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except InputError as error:
            _fail_input(error)
        except (KeyboardInterrupt, Interrupted):
            echo("editgate: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as error:  # a bug, or an environment editgate did not foresee
            echo(f"editgate: {type(error).__name__}: {error}", err=True)
            if os.environ.get("EDITGATE_DEBUG"):
                traceback.print_exc()
            else:
                echo("(set EDITGATE_DEBUG=1 for the traceback)", err=True)
            sys.exit(EXIT_RUN_FAILED)


@click.group(cls=_Main)
@click.version_option(editgate.__version__, prog_name="editgate")
def main() -> None:
    """editgate: apply knowledge edits to a language model and fail CI when they break it."""


def _runner_options(command: Callable) -> Callable:
    """What only the runner's owner decides (never editgate.yaml): the cache and remote code."""
    command = click.option("--trust-remote-code", is_flag=True,
                           help="Let transformers run the model repository's own code (also: "
                                "EDITGATE_TRUST_REMOTE_CODE=1). Never set by the gated repository.")(command)
    command = click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                           help="The shared cache (also: EDITGATE_CACHE_DIR; default ~/.cache/editgate).")(command)
    return command


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check config, manifests and policy without loading a model (default: the current directory)."""
    from editgate.validate import validate_paths

    try:
        summary = validate_paths(list(paths) or [Path(".")])
    except InputError as error:
        _fail_input(error)
    echo(f"ok: {summary.edit_count} edits valid")


@main.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="The repository with editgate.yaml, manifests and policies.")
@click.option("--policy", help="A policy file, or builtin:default|strict|lenient (overrides editgate.yaml).")
@click.option("--model", help="Model to edit (overrides editgate.yaml): builtin:NAME, a directory, an id or a .gguf.")
@click.option("--device", help="cpu, cuda, cuda:N, multi or auto (overrides editgate.yaml).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Overrides editgate.yaml.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("editgate-report"),
              show_default=True, help="Where report.json, report.md, junit.xml and perplexity.png are written "
                                      "(always, even on failure).")
@click.option("--base-ref", metavar="REF",
              help="Mark the edits that are new relative to this git ref (e.g. origin/main), by content.")
@click.option("--save-model", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Also save the edited model (safetensors, tokenizer, config) into DIR.")
@click.option("--save-delta", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also save only the changed tensors as an edit pack (see `editgate apply-delta`).")
@click.option("--confirm", is_flag=True,
              help="On failure, re-run without the culprit and report whether the rest passes.")
@click.option("--no-cache", is_flag=True,
              help="Measure the unedited model's figures again instead of reading the cache.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_runner_options
def run(repo: Path, policy: str | None, model: str | None, device: str | None, dtype: str | None,
        out: Path, base_ref: str | None, save_model: Path | None, save_delta: Path | None, confirm: bool,
        no_cache: bool, quiet: bool, cache_dir: Path | None, trust_remote_code: bool | None) -> None:
    """Apply every edit in order, check the model after each, and gate on the policy."""
    from editgate.reports import github

    log = Progress(quiet)
    options = RunOptions(base_ref=base_ref, save_model=save_model, save_delta=save_delta, confirm=confirm, out=out,
                         use_cache=not no_cache)
    overrides = {"model": _operator_model(model), "device": device, "dtype": dtype,
                 "cache_dir": None if cache_dir is None else str(cache_dir.absolute()),
                 "trust_remote_code": trust_remote_code or None}
    on_github = github.active()
    with interruptible() as guard:
        try:
            if on_github and not quiet:  # the log folds into a group; text from manifests cannot act as commands
                with github.LogGroup(lambda line: click.echo(line, err=True)):  # our own commands, unescaped
                    document, code = _run_gate(repo, policy, overrides, log, options)
            else:
                document, code = _run_gate(repo, policy, overrides, log, options)
        except Interrupted as error:  # a signal before or after the gate's own handling of one
            document, code = _interrupted(error, None, {}), EXIT_INTERRUPTED
        guard.hold()  # a second signal (SIGTERM after SIGINT) must not cut the report short
        paths = _write_reports(document, out, log)
        _echo_outcome(document, paths)
        if on_github:
            github.publish(document, paths, lambda line: click.echo(line, err=True), repo_dir=repo)
    sys.exit(code)


def _write_reports(document: dict, out: Path, log: Callable[[str], None]) -> list[Path]:
    """The reports, or a clear message when --out cannot take them (the exit code stays the run's)."""
    from editgate.reports import write_reports

    try:
        return write_reports(document, out, log)
    except OSError as error:
        echo(f"the reports could not be written to {out}: {error.strerror or error}", err=True)
        return []


def _operator_model(model: str | None) -> str | None:
    """--model is the operator's: a path is relative to the working directory, not to the repository."""
    if model is None or model.startswith("builtin:"):
        return model
    path = Path(model).expanduser()
    return str(path.absolute()) if path.exists() else model


@dataclasses.dataclass
class RunOptions:
    base_ref: str | None = None
    save_model: Path | None = None
    save_delta: Path | None = None
    confirm: bool = False
    use_cache: bool = True
    out: Path | None = None  # the report directory: memory.json goes beside the reports


def _run_gate(repo: Path, policy_override: str | None, overrides: dict[str, Any],
              log: Callable[[str], None], options: RunOptions | None = None) -> tuple[dict, int]:
    """Run the gate and return its report document and exit code; never raises for expected failures."""
    from editgate.reports import build_document, error_document

    options = options or RunOptions()
    gate = None
    context: dict[str, Any] = {"repository": None, "base_ref": None, "new": None}
    try:
        from editgate.validate import load_inputs

        config, policy, edits = load_inputs(repo, policy_override)
        config = _with_overrides(config, overrides)
        _gather_context(config, edits, options, context, log)
        _check_outputs(options, config, edits)
        _quiet_libraries()
        from editgate.gate import Gate

        loaded = _load(config, edits, log)
        gate = Gate(config, policy, edits, loaded, log=log, use_cache=options.use_cache)
        result = gate.run(confirm=options.confirm)
        artifacts = _save_outputs(gate, config, result.verdict, options, log)
        artifacts.update(_save_artifacts(gate, options, log))
        code = EXIT_PASSED if result.verdict == "passed" else EXIT_FAILED
        return build_document(result, policy, code, new=context["new"], repository=context["repository"],
                              base_ref=context["base_ref"], artifacts=artifacts), code
    except InputError as error:
        for problem in error.problems:
            log(str(problem))
        partial = {k: context[k] for k in ("repository", "base_ref")}
        if gate is not None:  # found after loading (a layer beyond the model's depth): keep what was measured
            partial = _partial(gate, context)
        return error_document("invalid", EXIT_INVALID, "invalid input", error.problems, partial=partial), EXIT_INVALID
    except (Interrupted, KeyboardInterrupt) as error:
        log(f"{_interruption(error)}: writing the report of what was done so far")
        return _interrupted(error, gate, context), EXIT_INTERRUPTED
    except Exception as error:  # RunError, OOM, ... and bugs: exit 3 with a report
        message = f"{type(error).__name__}: {error}"
        log(f"the run failed: {message}")
        if os.environ.get("EDITGATE_DEBUG"):
            traceback.print_exc()
        return error_document("error", EXIT_RUN_FAILED, message, partial=_partial(gate, context)), EXIT_RUN_FAILED


def _interruption(error: BaseException) -> str:
    return str(error) if isinstance(error, Interrupted) else "interrupted by SIGINT"


def _interrupted(error: BaseException, gate, context: dict[str, Any]) -> dict:
    """The report of an interrupted run: whatever the gate had done when the signal came."""
    from editgate.reports import error_document

    return error_document("interrupted", EXIT_INTERRUPTED, _interruption(error), partial=_partial(gate, context))


def _load(config, edits, log: Callable[[str], None]):
    """Load the model, then check what needs its depth before the first edit (still exit 2)."""
    from editgate.architecture import num_layers
    from editgate.models import load_model, set_threads
    from editgate.validate import check_model_fit

    threads = set_threads(config.threads)
    log(f"loading {config.model} (device {config.device}, dtype {config.dtype}, {threads} threads)")
    loaded = load_model(config.model_spec(), device=config.device, dtype=config.dtype,
                        cache_dir=config.cache_path(), trust_remote_code=config.trust_remote_code, log=log)
    log(f"loaded in {loaded.load_seconds:.1f}s ({'cached copy' if loaded.from_cache else 'first load'})")
    check_model_fit(config, edits, num_layers(loaded.model))
    return loaded


def _gather_context(config, edits, options: RunOptions, context: dict[str, Any], log: Callable[[str], None]) -> None:
    """The repository's git address and commit (for links), and with --base-ref which edits are new."""
    from editgate import vcs

    context["repository"] = vcs.repository_info(config.root)
    if options.base_ref is None:
        return
    base = vcs.edits_at_ref(config.root, config.manifests, config.method, options.base_ref)
    context["new"] = {edit.id: base.is_new(edit) for edit in edits}
    context["base_ref"] = base.summary(edits)
    log(f"--base-ref {options.base_ref} ({base.commit[:12]}): {context['base_ref']['new_edits']} of "
        f"{len(edits)} edits are new ({len(base.files)} manifest(s) there)")


def _check_outputs(options: RunOptions, config, edits) -> None:
    """--save-model / --save-delta targets are checked before the model is loaded, and so is whether the
    edits live in the weights at all (a method that wraps the model keeps them out of the weights)."""
    from editgate.export import check_model_target
    from editgate.methods import METHODS

    if options.out is not None:
        _check_out(options.out)
    if options.save_model is None and options.save_delta is None:
        return
    outside = [e.id for e in edits if not METHODS[e.method or config.method].writes_weights]
    if outside:
        flag = "--save-model" if options.save_model is not None else "--save-delta"
        shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise InputError(f"{flag}: edit(s) {shown} use a method that keeps edits out of the weights "
                         "(memory); saved weights would not contain them")
    if options.save_model is not None:
        check_model_target(options.save_model)
    if options.save_delta is not None and options.save_delta.is_dir():
        raise InputError(f"--save-delta {options.save_delta}: is a directory; name a file")


def _check_out(out: Path) -> None:
    """--out must be creatable and writable now, not found unwritable after the whole gate has run."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".editgate-write-test-"):
            pass
    except OSError as error:
        raise InputError(f"--out {out}: cannot write reports there ({error.strerror or error}); "
                         "name a directory editgate can create and write") from None


def _save_artifacts(gate, options: RunOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """What each method keeps outside the weights (the memory method's memory.json), beside the reports."""
    if options.out is None:
        return {}
    artifacts: dict[str, Any] = {}
    for name, method in gate.session.methods.items():
        edits = [r.edit for r in gate.records if r.method == name]
        artifacts.update(method.save_artifacts(Path(options.out), gate.check_texts, edits, log))
    return artifacts


def _save_outputs(gate, config, verdict: str, options: RunOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Write the edited model and/or the edit pack; what was written goes into the report."""
    from editgate import export
    from editgate.errors import RunError

    artifacts: dict[str, Any] = {}
    if options.save_model is None and options.save_delta is None:
        return artifacts
    loaded, session = gate.loaded, gate.session
    if session.wraps_model():
        raise RunError("an edit wrapped the model instead of changing its weights; nothing can be saved")
    applied, edit_ids = list(session.applied), session.edit_ids()
    if options.save_delta is not None:
        metadata = export.save_delta(options.save_delta, loaded.model, applied, fingerprint=loaded.fingerprint,
                                     model_spec=config.model, dtype=loaded.dtype, edit_ids=edit_ids)
        artifacts["delta"] = str(options.save_delta)
        artifacts["delta_parameters"] = len(metadata["parameters"])
        log(f"edit pack: {len(metadata['parameters'])} changed tensor(s) in {options.save_delta}")
    if options.save_model is not None:
        log(f"saving the edited model into {options.save_model}")
        export.save_model(options.save_model, loaded.model, loaded.tokenizer, {
            "base_model": config.model, "base_fingerprint": loaded.fingerprint, "edits": edit_ids,
            "verdict": verdict, "editgate": editgate.__version__})
        artifacts["model"] = str(options.save_model)
    return artifacts


def _partial(gate, context: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What a run had measured before it failed, so the report still shows it."""
    context = context or {}
    partial = {k: context[k] for k in ("repository", "base_ref") if context.get(k) is not None}
    if gate is None:
        return partial or None
    from editgate.reports import partial_document

    return {**partial, **partial_document(gate, context.get("new"))}


def _with_overrides(config, overrides: dict[str, Any]):
    """Apply --model/--device/--dtype/--cache-dir/--trust-remote-code; the device is checked here as
    editgate.yaml's would be."""
    from editgate.config import _DEVICE

    values = {k: v for k, v in overrides.items() if v is not None}
    if "device" in values and not _DEVICE.match(values["device"]):
        raise InputError(f"--device {values['device']!r}: use auto, cpu, cuda, cuda:N or multi")
    return dataclasses.replace(config, **values)


def _echo_outcome(document: dict, paths: list[Path]) -> None:
    verdict = document["verdict"]
    echo(f"editgate: {verdict}")
    for reason in document.get("reasons") or []:
        echo(f"  {reason}")
    echo(f"report: {', '.join(str(p) for p in paths) or 'not written'}")


@main.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True)
@click.option("--policy", help="A policy file, or builtin:default|strict|lenient (overrides editgate.yaml).")
@click.option("--model", help="Model (overrides editgate.yaml).")
@click.option("--device", help="cpu, cuda, cuda:N, multi or auto (overrides editgate.yaml).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_runner_options
def baseline(repo: Path, policy: str | None, model: str | None, device: str | None, dtype: str | None,
             quiet: bool, cache_dir: Path | None, trust_remote_code: bool | None) -> None:
    """Measure and cache the unedited model's figures (perplexity, benchmarks, pre-edit answers)."""
    from editgate.validate import load_inputs

    log = Progress(quiet)
    try:
        config, policy_, edits = load_inputs(repo, policy)
        config = _with_overrides(config, {
            "model": _operator_model(model), "device": device, "dtype": dtype,
            "trust_remote_code": trust_remote_code or None,
            "cache_dir": None if cache_dir is None else str(cache_dir.absolute())})
        _quiet_libraries()
        from editgate.gate import Gate

        gate = Gate(config, policy_, edits, _load(config, edits, log), log=log)
        gate.prepare()
    except InputError as error:
        _fail_input(error)
    except (RunError, MemoryError, RuntimeError, OSError) as error:
        echo(f"the run failed: {type(error).__name__}: {error}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    cached = ", ".join(gate.cache.hits) or "nothing (all measured now)"
    echo(f"baseline cached under {gate.cache.root} (already cached: {cached})")


@main.command()
def methods() -> None:
    """List the editing methods and their hyperparameters (None: scaled to the model)."""
    from editgate.methods import METHODS

    for name in sorted(METHODS):
        cls = METHODS[name]
        click.echo(f"{name}: {cls.description}")
        for f in dataclasses.fields(cls.HParams):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            shown = "auto (scaled to the model)" if default is None else default
            click.echo(f"    {f.name} = {shown}")


@main.command("cache-key")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True)
def cache_key(repo: Path) -> None:
    """Print `version=` and `model=` lines for a CI cache key (append them to $GITHUB_OUTPUT).

    editgate.yaml is read through editgate's own bounded loader, so a workflow never parses repository
    YAML itself; an invalid file gives the default key (the run step then reports the problems)."""
    import re

    from editgate.config import load_config_collecting

    config, problems, _ = load_config_collecting(repo)
    model = "default" if problems else config.model
    if problems:
        echo(f"editgate cache-key: {len(problems)} problem(s) in the configuration; using the default key", err=True)
    click.echo(f"version={editgate.__version__}")
    click.echo("model=" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:100])


@main.command()
@click.argument("report", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "junit", "html", "json"]), default="md", show_default=True)
def report(report: Path, fmt: str) -> None:
    """Render a saved report.json again (to stdout): Markdown, JUnit XML, HTML or the JSON itself."""
    import json

    from editgate.reports import render_junit, render_markdown
    from editgate.reports.html import render_html

    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as error:
        echo(f"{report}: not a report.json ({error})", err=True)
        sys.exit(EXIT_INVALID)
    except RecursionError:
        echo(f"{report}: not a report.json (nested too deeply)", err=True)
        sys.exit(EXIT_INVALID)
    if not isinstance(document, dict) or "verdict" not in document or "schema_version" not in document:
        echo(f"{report}: not an editgate report.json (no verdict or schema_version)", err=True)
        sys.exit(EXIT_INVALID)
    if document["schema_version"] != 1:
        echo(f"{report}: schema version {document['schema_version']!r}; this editgate reads version 1", err=True)
        sys.exit(EXIT_INVALID)
    try:
        if fmt == "md":
            text = render_markdown(document)
        elif fmt == "junit":
            text = render_junit(document)
        elif fmt == "html":
            text = render_html(document, report.parent / "perplexity.png")
        else:
            text = json.dumps(document, indent=2)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as error:
        echo(f"{report}: malformed report.json ({type(error).__name__}: {error})", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(text.rstrip("\n"))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=Path("."), required=False)
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(directory: Path, force: bool) -> None:
    """Scaffold a gated repository in DIRECTORY: editgate.yaml, a sample manifest, the policies, the workflow."""
    from editgate.scaffold import scaffold

    try:
        written = scaffold(directory, force=force)
    except InputError as error:
        _fail_input(error)
    for path in written:
        echo(f"created {path}")
    echo(f"next: editgate validate {directory}  (then: editgate run --repo {directory})")


@main.command("apply-delta")
@click.option("--model", "model_spec", required=True,
              help="The base model the edit pack was made from: builtin:NAME, a directory, an id or a .gguf.")
@click.option("--delta", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The edit pack written by `editgate run --save-delta`.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for the edited model (safetensors, tokenizer, config).")
@click.option("--device", default="cpu", show_default=True, help="Where to load the model to apply the pack.")
@click.option("--cache-dir", default="~/.cache/editgate", show_default=True,
              help="Cache for converted models (GGUF and builtin models).")
@click.option("--trust-remote-code", is_flag=True, help="Let transformers run the model repository's code.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def apply_delta(model_spec: str, delta: Path, out: Path, device: str, cache_dir: str, trust_remote_code: bool,
                quiet: bool) -> None:
    """Apply an edit pack to its base model and save the result: the edited weights, bit for bit."""
    from editgate import export

    log = Progress(quiet)
    try:
        tensors, metadata = export.read_pack(delta)
        export.check_model_target(out)
        _quiet_libraries()
        from editgate.models import load_model

        loaded = load_model(model_spec, device=device, dtype=metadata["dtype"],
                            cache_dir=Path(cache_dir).expanduser(), trust_remote_code=trust_remote_code, log=log)
        if loaded.fingerprint != metadata.get("base_fingerprint"):
            log(f"note: {model_spec} has fingerprint {loaded.fingerprint}, the pack was made on "
                f"{metadata.get('base_fingerprint')}; the changed tensors' base weights are checked exactly")
        written = export.apply_pack(loaded.model, tensors, metadata)
        export.save_model(out, loaded.model, loaded.tokenizer, {
            "base_model": model_spec, "base_fingerprint": loaded.fingerprint, "edits": metadata.get("edits", []),
            "delta": str(delta), "editgate": editgate.__version__})
    except InputError as error:
        _fail_input(error)
    except (Exception, KeyboardInterrupt) as error:
        echo(f"apply-delta failed: {type(error).__name__}: {error}", err=True)
        if os.environ.get("EDITGATE_DEBUG"):
            traceback.print_exc()
        sys.exit(EXIT_RUN_FAILED)
    echo(f"applied {len(written)} tensor(s) from {delta} to {model_spec}; saved to {out}")


if __name__ == "__main__":
    main()
