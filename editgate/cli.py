"""The `editgate` command line. Exit codes: 0 passed, 1 the gate failed, 2 invalid input, 3 the run failed.

Input errors never show a traceback: they are listed one per line as file:line: message.
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
from editgate.errors import InputError

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_RUN_FAILED = 0, 1, 2, 3


class Progress:
    """Progress lines on stderr, silenced by --quiet (stdout stays clean for the verdict)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


def _quiet_libraries() -> None:
    """transformers' progress bars and advice would drown editgate's own progress lines."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _fail_input(error: InputError) -> None:
    for problem in error.problems:
        click.echo(str(problem), err=True)
    click.echo(f"{len(error.problems)} problem(s) found; nothing was run.", err=True)
    sys.exit(EXIT_INVALID)


@click.group()
@click.version_option(editgate.__version__, prog_name="editgate")
def main() -> None:
    """editgate: apply knowledge edits to a language model and fail CI when they break it."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check config, manifests and policy without loading a model (default: the current directory)."""
    from editgate.validate import validate_paths

    try:
        summary = validate_paths(list(paths) or [Path(".")])
    except InputError as error:
        _fail_input(error)
    click.echo(f"ok: {summary.edit_count} edits valid")


@main.command()
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="The repository with editgate.yaml, manifests and policies.")
@click.option("--policy", help="A policy file, or builtin:default|strict|lenient (overrides editgate.yaml).")
@click.option("--model", help="Model to edit (overrides editgate.yaml): builtin:NAME, a directory, an id or a .gguf.")
@click.option("--device", help="cpu, cuda, cuda:N, multi or auto (overrides editgate.yaml).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Overrides editgate.yaml.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("editgate-report"),
              show_default=True, help="Where report.json and report.md are written (always, even on failure).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def run(repo: Path, policy: str | None, model: str | None, device: str | None, dtype: str | None,
        out: Path, quiet: bool) -> None:
    """Apply every edit in order, check the model after each, and gate on the policy."""
    from editgate.reports import write_reports

    log = Progress(quiet)
    document, code = _run_gate(repo, policy, {"model": model, "device": device, "dtype": dtype}, log)
    paths = write_reports(document, out)
    _echo_outcome(document, paths)
    sys.exit(code)


def _run_gate(repo: Path, policy_override: str | None, overrides: dict[str, Any],
              log: Callable[[str], None]) -> tuple[dict, int]:
    """Run the gate and return its report document and exit code; never raises for expected failures."""
    from editgate.reports import build_document, error_document

    gate = None
    try:
        from editgate.validate import load_inputs

        config, policy, edits = load_inputs(repo, policy_override)
        config = _with_overrides(config, overrides)
        _quiet_libraries()
        from editgate.gate import Gate
        from editgate.models import load_model, set_threads

        threads = set_threads(config.threads)
        log(f"loading {config.model} (device {config.device}, dtype {config.dtype}, {threads} threads)")
        loaded = load_model(config.model, device=config.device, dtype=config.dtype,
                            cache_dir=config.cache_path(), trust_remote_code=config.trust_remote_code, log=log)
        log(f"loaded in {loaded.load_seconds:.1f}s ({'cached copy' if loaded.from_cache else 'first load'})")
        gate = Gate(config, policy, edits, loaded, log=log)
        result = gate.run()
        code = EXIT_PASSED if result.verdict == "passed" else EXIT_FAILED
        return build_document(result, policy, code), code
    except InputError as error:
        for problem in error.problems:
            log(str(problem))
        return error_document("invalid", EXIT_INVALID, "invalid input", [str(p) for p in error.problems]), EXIT_INVALID
    except (Exception, KeyboardInterrupt) as error:  # RunError, OOM, ... and bugs: exit 3 with a report
        message = f"{type(error).__name__}: {error}"
        log(f"the run failed: {message}")
        if os.environ.get("EDITGATE_DEBUG"):
            traceback.print_exc()
        return error_document("error", EXIT_RUN_FAILED, message, partial=_partial(gate)), EXIT_RUN_FAILED


def _partial(gate) -> dict[str, Any] | None:
    """What a run had measured before it failed, so the report still shows it."""
    if gate is None:
        return None
    from editgate.reports.document import _edit_record

    base = gate.baseline
    return {"edits": [_edit_record(r) for r in gate.records],
            "baseline": None if base is None else {"perplexity": base.token_perplexity, "tokens": base.tokens,
                                                   "texts": len(base.text_tokens)},
            "timings": gate.timings}


def _with_overrides(config, overrides: dict[str, Any]):
    """Apply --model/--device/--dtype; the device is checked here as editgate.yaml's would be."""
    from editgate.config import _DEVICE

    values = {k: v for k, v in overrides.items() if v is not None}
    if "device" in values and not _DEVICE.match(values["device"]):
        raise InputError(f"--device {values['device']!r}: use auto, cpu, cuda, cuda:N or multi")
    return dataclasses.replace(config, **values)


def _echo_outcome(document: dict, paths: list[Path]) -> None:
    verdict = document["verdict"]
    click.echo(f"editgate: {verdict}")
    for reason in document.get("reasons") or []:
        click.echo(f"  {reason}")
    click.echo(f"report: {', '.join(str(p) for p in paths)}")


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


@main.command()
@click.argument("report", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
def report(report: Path, fmt: str) -> None:
    """Render a saved report.json again (to stdout)."""
    import json

    from editgate.reports import render_markdown

    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        click.echo(f"{report}: not a report.json ({error})", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(render_markdown(document) if fmt == "md" else json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
