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
from editgate.policy import BUILTIN_POLICIES
from editgate.run import (EXIT_INTERRUPTED, EXIT_INVALID, EXIT_RUN_FAILED, RunOptions, interrupted_document,
                          measure_baseline, quiet_libraries, run_gate)
from editgate.safetext import printable_line, printable_lines

POLICY_HELP = f"A policy file, or builtin:{'|'.join(BUILTIN_POLICIES)} (overrides editgate.yaml)."


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


def _lm_eval_option(command: Callable) -> Callable:
    """Where `lm-eval:` suites' own task files come from: the runner's owner's directory, never the repository
    (lm-eval task YAMLs can run code)."""
    return click.option("--lm-eval-include", type=click.Path(path_type=Path, file_okay=False, exists=True),
                        default=None, metavar="DIR",
                        help="lm-evaluation-harness task YAMLs that `lm-eval:` suites may name besides lm-eval's "
                             "own (also: EDITGATE_LM_EVAL_INCLUDE). They can run code: keep them outside the gated "
                             "repository.")(command)


def _include(directory: Path | None) -> str | None:
    return None if directory is None else str(directory.absolute())


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@_lm_eval_option
def validate(paths: tuple[Path, ...], lm_eval_include: Path | None) -> None:
    """Check config, manifests and policy without loading a model (default: the current directory)."""
    from editgate.validate import validate_paths

    try:
        summary = validate_paths(list(paths) or [Path(".")], _include(lm_eval_include))
    except InputError as error:
        _fail_input(error)
    for warning in summary.warnings:
        echo(f"warning: {warning}", err=True)
    shown = f" ({len(summary.warnings)} warning(s): edits that contradict each other)" if summary.warnings else ""
    echo(f"ok: {summary.edit_count} edits valid{shown}")


@main.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="The repository with editgate.yaml, manifests and policies.")
@click.option("--policy", help=POLICY_HELP)
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
@click.option("--no-edit-pack", is_flag=True,
              help="Do not keep an edit pack of the written weights in --out (it holds each written matrix).")
@click.option("--confirm", is_flag=True,
              help="On failure, re-run without the culprit and report whether the rest passes.")
@click.option("--no-cache", is_flag=True,
              help="Measure the unedited model's figures again instead of reading the cache.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_runner_options
@_lm_eval_option
def run(repo: Path, policy: str | None, model: str | None, device: str | None, dtype: str | None,
        out: Path, base_ref: str | None, save_model: Path | None, save_delta: Path | None, no_edit_pack: bool,
        confirm: bool, no_cache: bool, quiet: bool, cache_dir: Path | None, trust_remote_code: bool | None,
        lm_eval_include: Path | None) -> None:
    """Apply every edit in order, check the model after each, and gate on the policy."""
    from editgate.reports import github

    log = Progress(quiet)
    options = RunOptions(base_ref=base_ref, save_model=save_model, save_delta=save_delta, confirm=confirm, out=out,
                         use_cache=not no_cache, edit_pack=not no_edit_pack)
    overrides = {"model": _operator_model(model), "device": device, "dtype": dtype,
                 "cache_dir": None if cache_dir is None else str(cache_dir.absolute()),
                 "trust_remote_code": trust_remote_code or None, "lm_eval_include": _include(lm_eval_include)}
    on_github = github.active()
    with interruptible() as guard:
        try:
            if on_github and not quiet:  # the log folds into a group; text from manifests cannot act as commands
                with github.LogGroup(lambda line: click.echo(line, err=True)):  # our own commands, unescaped
                    document, code = run_gate(repo, policy, overrides, log, options)
            else:
                document, code = run_gate(repo, policy, overrides, log, options)
        except Interrupted as error:  # a signal before or after the gate's own handling of one
            document, code = interrupted_document(error, None, {}), EXIT_INTERRUPTED
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


def _echo_outcome(document: dict, paths: list[Path]) -> None:
    verdict = document["verdict"]
    echo(f"editgate: {verdict}")
    for reason in document.get("reasons") or []:
        echo(f"  {reason}")
    echo(f"report: {', '.join(str(p) for p in paths) or 'not written'}")


@main.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True)
@click.option("--policy", help=POLICY_HELP)
@click.option("--model", help="Model (overrides editgate.yaml).")
@click.option("--device", help="cpu, cuda, cuda:N, multi or auto (overrides editgate.yaml).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_runner_options
@_lm_eval_option
def baseline(repo: Path, policy: str | None, model: str | None, device: str | None, dtype: str | None,
             quiet: bool, cache_dir: Path | None, trust_remote_code: bool | None, lm_eval_include: Path | None) -> None:
    """Measure and cache the unedited model's figures (perplexity, benchmarks, pre-edit answers)."""
    log = Progress(quiet)
    try:
        root, hits = measure_baseline(repo, policy, {
            "model": _operator_model(model), "device": device, "dtype": dtype,
            "trust_remote_code": trust_remote_code or None, "lm_eval_include": _include(lm_eval_include),
            "cache_dir": None if cache_dir is None else str(cache_dir.absolute())}, log)
    except InputError as error:
        _fail_input(error)
    except (RunError, MemoryError, RuntimeError, OSError) as error:
        echo(f"the run failed: {type(error).__name__}: {error}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    cached = ", ".join(hits) or "nothing (all measured now)"
    echo(f"baseline cached under {root} (already cached: {cached})")


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
            options = f.metadata.get("choices")
            click.echo(f"    {f.name} = {shown}" + (f"  (one of: {', '.join(options)})" if options else ""))


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

    from editgate.reports import render_json, render_junit, render_markdown
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
            text = render_json(document)
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


@main.command()
@click.argument("prompts", nargs=-1)
@click.option("--from", "source", type=click.Path(path_type=Path), default=Path("editgate-report"),
              show_default=True, help="A run's report directory, an edit pack, a saved model directory or a "
                                      "memory.json.")
@click.option("--model", help="The base model, when the result does not record it (or it has moved).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, multi or auto.")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=16, show_default=True,
              help="Tokens generated after each PROMPT (an edit's prompt: its target's length plus two, as the "
                   "gate measures).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_runner_options
def generate(prompts: tuple[str, ...], source: Path, model: str | None, device: str, max_new_tokens: int,
             quiet: bool, cache_dir: Path | None, trust_remote_code: bool) -> None:
    """Print what the edited model answers next to the unedited model's: each PROMPT, or else every edit's
    prompt. The edits are loaded as the run left them: an edit pack, saved weights, or a memory."""
    from editgate import results
    from editgate.config import runner_cache_dir, runner_trusts_remote_code

    log = Progress(quiet)
    saved = results.locate(source)
    asked = results.questions(saved, list(prompts), max_new_tokens)
    quiet_libraries()
    session = results.open_base(saved, model=_operator_model(model), device=device,
                                cache_dir=cache_dir or runner_cache_dir(),
                                trust_remote_code=trust_remote_code or runner_trusts_remote_code(), log=log)
    before = results.answers(session, asked)
    results.apply_result(session, saved)
    after = results.answers(session, asked)
    for question, unedited, edited in zip(asked, before, after):
        echo(results.describe(question, unedited, edited))


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
        quiet_libraries()
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
