"""One run of the gate over a repository, from its files to the report document: load and validate the
inputs, load the model, run the gate over an edit session, save what was asked for, and turn any
outcome (a verdict, invalid input, a failure part-way, an interruption) into a report. The CLI parses
arguments, calls `run_gate`, writes and prints; a notebook or a script can call it the same way.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path
from typing import Any, Callable

from editgate.errors import InputError
from editgate.interrupt import Interrupted

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


@dataclasses.dataclass
class RunOptions:
    base_ref: str | None = None
    save_model: Path | None = None
    save_delta: Path | None = None
    confirm: bool = False
    use_cache: bool = True
    out: Path | None = None  # the report directory: the run's result (edit pack, memory.json) goes beside the reports
    edit_pack: bool = True  # keep an edit pack of the written weights in `out`


def run_gate(repo: Path | str, policy_override: str | None = None, overrides: dict[str, Any] | None = None,
             log: Callable[[str], None] = print, options: RunOptions | None = None) -> tuple[dict, int]:
    """Run the gate and return its report document and exit code; never raises for expected failures.
    `overrides`: the operator's --model/--device/--dtype/--cache-dir/--trust-remote-code/--lm-eval-include
    values."""
    from editgate.reports import build_document, error_document

    repo, options = Path(repo), options or RunOptions()
    gate = None
    context: dict[str, Any] = {"repository": None, "base_ref": None, "new": None}
    try:
        from editgate.validate import load_inputs

        config, policy, edits = load_inputs(repo, policy_override, (overrides or {}).get("lm_eval_include"))
        config = with_overrides(config, overrides or {})
        _gather_context(config, edits, options, context, log)
        _check_outputs(options, config, edits)
        quiet_libraries()
        from editgate.gate import Gate

        loaded = load_for_gate(config, edits, log)
        gate = Gate(config, policy, edits, loaded, log=log, use_cache=options.use_cache)
        result = gate.run()
        artifacts = _save_outputs(gate, config, result.verdict, options, log)
        artifacts.update(_save_result(gate, config, options, log))
        if options.confirm and result.culprit is not None:  # after saving: it replays the edits without one
            result.confirmation = gate.confirm(result.culprit)
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
        return interrupted_document(error, gate, context), EXIT_INTERRUPTED
    except Exception as error:  # RunError, OOM, ... and bugs: exit 3 with a report
        message = f"{type(error).__name__}: {error}"
        log(f"the run failed: {message}")
        if os.environ.get("EDITGATE_DEBUG"):
            traceback.print_exc()
        return error_document("error", EXIT_RUN_FAILED, message, partial=_partial(gate, context)), EXIT_RUN_FAILED


def measure_baseline(repo: Path | str, policy_override: str | None = None, overrides: dict[str, Any] | None = None,
                     log: Callable[[str], None] = print) -> tuple[Path, list[str]]:
    """Measure and cache the unedited model's figures a run of this repository needs (`editgate baseline`);
    returns the cache directory and the kinds that were cached already. Raises InputError, RunError."""
    from editgate.validate import load_inputs

    config, policy, edits = load_inputs(Path(repo), policy_override, (overrides or {}).get("lm_eval_include"))
    config = with_overrides(config, overrides or {})
    quiet_libraries()
    from editgate.gate import Gate

    gate = Gate(config, policy, edits, load_for_gate(config, edits, log), log=log)
    gate.prepare()
    return gate.cache.root, list(gate.cache.hits)


def _interruption(error: BaseException) -> str:
    return str(error) if isinstance(error, Interrupted) else "interrupted by SIGINT"


def interrupted_document(error: BaseException, gate, context: dict[str, Any]) -> dict:
    """The report of an interrupted run: whatever the gate had done when the signal came."""
    from editgate.reports import error_document

    return error_document("interrupted", EXIT_INTERRUPTED, _interruption(error), partial=_partial(gate, context))


def load_for_gate(config, edits, log: Callable[[str], None]):
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
    from editgate.methods import get_method

    if options.out is not None:
        _check_out(options.out)
    if options.save_model is None and options.save_delta is None:
        return
    outside = [e for e in edits if not get_method(e.method or config.method).writes_weights]
    if outside:
        flag = "--save-model" if options.save_model is not None else "--save-delta"
        ids = [e.id for e in outside]
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        methods = ", ".join(sorted({e.method or config.method for e in outside}))
        raise InputError(f"{flag}: edit(s) {shown} use a method that keeps edits out of the weights "
                         f"({methods}); saved weights would not contain them")
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


def _save_result(gate, config, options: RunOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """The edited model as the run left it, beside the reports (`editgate generate --from OUT` loads it):
    an edit pack of the written weights and what methods keep outside them (memory.json)."""
    if options.out is None:
        return {}
    artifacts = gate.session.save_result(Path(options.out), config.model, gate.check_texts,
                                         [r.edit for r in gate.records], edit_pack=options.edit_pack)
    if artifacts["result"]["edit_pack"]:
        log(f"edit pack of the run's weights: {Path(options.out) / artifacts['result']['edit_pack']}")
    return artifacts


def _save_outputs(gate, config, verdict: str, options: RunOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Write the edited model and/or the edit pack; what was written goes into the report."""
    artifacts: dict[str, Any] = {}
    session = gate.session
    if options.save_delta is not None:
        metadata = session.save_delta(options.save_delta, config.model)
        artifacts["delta"] = str(options.save_delta)
        artifacts["delta_parameters"] = len(metadata["parameters"])
        log(f"edit pack: {len(metadata['parameters'])} changed tensor(s) in {options.save_delta}")
    if options.save_model is not None:
        log(f"saving the edited model into {options.save_model}")
        session.save_model(options.save_model, {"base_model": config.model, "verdict": verdict})
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


def with_overrides(config, overrides: dict[str, Any]):
    """Apply --model/--device/--dtype/--cache-dir/--trust-remote-code/--lm-eval-include; the device is
    checked here as editgate.yaml's would be."""
    from editgate.config import _DEVICE

    values = {k: v for k, v in overrides.items() if v is not None}
    if "device" in values and not _DEVICE.match(values["device"]):
        raise InputError(f"--device {values['device']!r}: use auto, cpu, cuda, cuda:N or multi")
    return dataclasses.replace(config, **values)


def quiet_libraries() -> None:
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
