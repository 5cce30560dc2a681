"""A run's result, found on disk and loaded back as a model to call `generate` on.

A run keeps its result beside its reports (`EditSession.save_result`): an edit pack of the weights the
edits wrote (`edits.safetensors`) and what methods keep outside the weights (the memory method's
`memory.json`), named in report.json's `artifacts.result`. `locate` accepts that report directory, or
one of the result files on its own: an edit pack (`--save-delta`), a saved model directory
(`--save-model`, `apply-delta`) or a memory.json. `load_result` loads the base model into an
`EditSession` and applies the result to it as undoable updates, so `session.model` answers as the gated
model did (the memory routed exactly as in the gate) and `session.undo_to(0)` gives the base model back.

A report directory may come from a downloaded artefact: only file names inside it are followed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from editgate.errors import InputError, Problem

REPORT_FILE = "report.json"


@dataclass
class SavedResult:
    """Where a run's edits are kept, and what is known of the run that made them."""

    shown: str  # the path as the user named it, for messages
    base_model: str | None = None  # the model spec the run edited
    dtype: str | None = None
    edit_pack: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)  # method -> what it saved (file or directory)
    model_dir: Path | None = None  # whole edited weights
    edits: list[dict[str, Any]] = field(default_factory=list)  # report.json's records: id, prompt, target, ...


def locate(path: Path | str) -> SavedResult:
    """What `path` holds: a report directory, an edit pack, a saved model directory or a memory.json.
    InputError when it holds no result editgate can load."""
    from editgate.export import MODEL_MARKER

    path = Path(path)
    shown = str(path)
    if path.is_dir() and (path / REPORT_FILE).is_file():
        return _from_report(path, shown)
    if path.is_dir() and (path / MODEL_MARKER).is_file():
        marker = _read_json(path / MODEL_MARKER, shown)
        config = _read_json(path / "config.json", shown) if (path / "config.json").is_file() else {}
        dtype = config.get("dtype") or config.get("torch_dtype")
        return SavedResult(shown, marker.get("base_model"), dtype if isinstance(dtype, str) else None, model_dir=path,
                           edits=_ids(marker.get("edits")))
    if path.is_file() and path.suffix == ".safetensors":
        from editgate.export import read_pack

        _, metadata = read_pack(path, shown="")
        return SavedResult(shown, metadata.get("base_model"), metadata.get("dtype"), edit_pack=path,
                           edits=_ids(metadata.get("edits")))
    if path.is_file() and path.suffix == ".json":
        report = path.parent / REPORT_FILE
        known = _from_report(path.parent, str(report)) if report.is_file() else SavedResult(shown)
        return SavedResult(shown, known.base_model, known.dtype, artifacts={"memory": path}, edits=known.edits)
    raise _unusable(shown, f"not a report directory (with {REPORT_FILE}), an edit pack (.safetensors), "
                     "a model directory saved by editgate or a memory.json")


def _from_report(directory: Path, shown: str) -> SavedResult:
    report = _read_json(directory / REPORT_FILE, shown)
    environment = report.get("environment") or {}
    result = (report.get("artifacts") or {}).get("result")
    if not isinstance(result, dict):
        raise _unusable(shown, "the run kept no result (it stopped before a verdict, or an older "
                         "editgate wrote it); run the gate again to get one")
    if not result.get("complete", False):
        raise _unusable(shown, "the run kept no edit pack of the weights it wrote (--no-edit-pack); "
                         "run the gate again without it")
    pack = result.get("edit_pack")
    edits = [e for e in report.get("edits") or [] if isinstance(e, dict) and e.get("status") != "not-run"]
    return SavedResult(shown, environment.get("model"), environment.get("dtype"),
                       edit_pack=_inside(directory, pack, shown) if pack else None,
                       artifacts={str(m): directory for m in result.get("artifacts_of") or []}, edits=edits)


def _ids(values: Any) -> list[dict[str, Any]]:
    """Edit ids as a saved model or pack records them, in report.json's record shape."""
    return [{"id": i} for i in values or [] if isinstance(i, str)]


def _unusable(shown: str, message: str) -> InputError:
    return InputError(Problem(shown, None, message))


def _inside(directory: Path, name: Any, shown: str) -> Path:
    """A file the report names, which must be a plain name in its own directory."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise _unusable(shown, f"report.json names {name!r} as a result file; only a file name in the "
                         "report directory is accepted")
    return directory / name


def _read_json(path: Path, shown: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _unusable(shown, f"cannot read {path.name} ({error})") from None
    if not isinstance(data, dict):
        raise _unusable(shown, f"{path.name} is not a JSON object")
    return data


def open_base(saved: SavedResult, *, model: str | None = None, device: str = "cpu", cache_dir: Path | str,
              trust_remote_code: bool = False, log: Callable[[str], None] = print):
    """An EditSession over the base model the result was made from (`model` overrides the recorded one)."""
    from editgate.models import load_model
    from editgate.session import EditSession

    spec = model or saved.base_model
    if not spec:
        raise _unusable(saved.shown, "which base model it was made from is not recorded; "
                         "name it with --model")
    cache_dir = Path(cache_dir).expanduser()
    loaded = load_model(spec, device=device, dtype=saved.dtype or "auto", cache_dir=cache_dir,
                        trust_remote_code=trust_remote_code, log=log)
    return EditSession(loaded, cache_dir=cache_dir, log=log)


def apply_result(session, saved: SavedResult) -> None:
    """Apply the saved result to the session's base model: the weights first, then the artefacts."""
    from editgate import export

    ids = [e["id"] for e in saved.edits if "id" in e]
    if saved.edit_pack is not None:
        tensors, metadata = export.read_pack(saved.edit_pack, shown="")
        session.apply_weights(export.pack_weights(session.base_model, tensors, metadata), "edit pack",
                              metadata.get("edits", ids))
    if saved.model_dir is not None:
        session.apply_weights(export.saved_weights(saved.model_dir, session.base_model), "saved model", ids)
    for method, where in saved.artifacts.items():
        if session.load_artifacts(method, where) is None:
            raise _unusable(saved.shown, f"the {method} method's saved files are missing from {where}")


def load_result(path: Path | str, *, model: str | None = None, device: str = "cpu",
                cache_dir: Path | str = "~/.cache/editgate", trust_remote_code: bool = False,
                log: Callable[[str], None] = print):
    """The edited model of a run, as an EditSession: `session.model` generates as the gated model did."""
    saved = locate(path)
    session = open_base(saved, model=model, device=device, cache_dir=cache_dir,
                        trust_remote_code=trust_remote_code, log=log)
    apply_result(session, saved)
    return session


# -- what the edited model says ----------------------------------------------------------------------


@dataclass
class Question:
    """A prompt to generate from: one the user typed, or an edit's (then `edit` is its report record)."""

    prompt: str
    new_tokens: int | None  # None: the edit's target's length plus a little, as the gate measures
    edit: dict[str, Any] | None = None


def questions(saved: SavedResult, prompts: list[str], max_new_tokens: int) -> list[Question]:
    """The user's prompts, or else the prompt of every edit the run applied."""
    if prompts:
        return [Question(prompt, max_new_tokens) for prompt in prompts]
    edits = [e for e in saved.edits if isinstance(e.get("prompt"), str) and isinstance(e.get("target"), str)]
    if not edits:
        raise _unusable(saved.shown, "records no edit prompts (only a report directory does); name the "
                                     "prompts to generate from")
    return [Question(e["prompt"], None, e) for e in edits]


def answers(session, asked: list[Question]) -> list[str]:
    """What the session's model (as it is now) generates for each question, greedily and batched."""
    from editgate.metrics.edit_metrics import answer_budget
    from editgate.metrics.generation import generate_answers

    tokenizer = session.loaded.tokenizer
    budgets = [q.new_tokens if q.new_tokens is not None else answer_budget(tokenizer, q.edit["target"])
               for q in asked]
    return [text.strip() for text in generate_answers(session.model, tokenizer, [q.prompt for q in asked], budgets)]


def describe(question: Question, unedited: str, edited: str) -> str:
    """A few lines for a reviewer: the prompt, both answers, and whether the edited one says the target."""
    from editgate.answers import begins_with_answer
    from editgate.safetext import printable

    lines = [printable(question.prompt)]
    if question.edit is not None:
        edit = question.edit
        where = f" ({edit['file']}:{edit['line']})" if edit.get("file") and edit.get("line") else ""
        said = "says it" if begins_with_answer(edited, edit["target"]) else "does not say it"
        lines = [printable(f"edit {edit.get('id')}{where} [{edit.get('method', '?')}], target "
                           f"{edit['target']!r}: the edited model {said}"), "  " + lines[0]]
    lines += [f"    unedited: {printable(unedited)}", f"    edited:   {printable(edited)}"]
    return "\n".join(lines)
