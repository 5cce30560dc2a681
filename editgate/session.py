"""An edit session: one loaded model, one instance of each editing method, and the stack of edits
applied to it. The gate, its bisection and confirmation, the bench scripts and a notebook drive edits
through it, so "apply these edits", "undo back to here" and "the model to evaluate now" mean one thing.

A method either writes the model's weights or wraps the model (the memory method routes inputs to
stored edits); the session asks each applied edit which, never a method's name. Undo restores exact
copies of what was written, so any earlier point of the sequence is reached bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

import editgate
from editgate import export
from editgate.corpora import sample_texts
from editgate.errors import RunError
from editgate.manifests import Edit
from editgate.methods import AppliedEdit, get_method
from editgate.methods.base import EditMethod, MethodContext
from editgate.models import LoadedModel

STATS_CORPUS = "builtin:wiki"  # what ROME-style key statistics are computed on
RESULT_PACK = "edits.safetensors"  # the edit pack a run keeps beside its reports


class EditSession:
    """Edits applied in order to one loaded model, undoable to any earlier point."""

    def __init__(self, loaded: LoadedModel, *, cache_dir: Path | str, method: str = "rome",
                 hparams: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                 log: Callable[[str], None] = print, stats_texts: Callable[[int], list[str]] | None = None):
        """`method`: for edits that name none; `hparams`: {method: overrides}, as in editgate.yaml;
        `stats_texts(n)`: the corpus of key statistics (default: n texts of builtin:wiki's stats split),
        read only when no statistics are cached."""
        self.loaded, self.default_method, self.log = loaded, method, log
        self.overrides = hparams or {}
        self.context = MethodContext(
            cache_dir=Path(cache_dir), model_fingerprint=loaded.fingerprint,
            stats_texts=stats_texts or (lambda n: sample_texts(STATS_CORPUS, "stats", n, seed)),
            stats_corpus_name=STATS_CORPUS, seed=seed, log=log)
        self.methods: dict[str, EditMethod] = {}
        self.applied: list[AppliedEdit] = []  # one per applied unit, in order

    @property
    def base_model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def model(self) -> torch.nn.Module:
        """The model to evaluate now: the base model's (edited) weights, or the latest wrapper around it."""
        wrapped = next((a.model for a in reversed(self.applied) if a.model is not None), None)
        return wrapped if wrapped is not None else self.loaded.model

    def method_of(self, edit: Edit) -> str:
        return edit.method or self.default_method

    def method(self, name: str) -> EditMethod:
        """One instance per method per session, so its memo (templates, inverse covariances) is shared."""
        if name not in self.methods:
            self.methods[name] = get_method(name)(self.loaded.model, self.loaded.tokenizer, self.context)
        return self.methods[name]

    def hparams(self, edit: Edit) -> Any:
        """Method defaults scaled to the model, then the session's overrides, then the edit's own."""
        method = self.method(self.method_of(edit))
        return method.default_hparams().updated({**self.overrides.get(method.name, {}), **edit.hparams})

    def prepare(self, edits: list[Edit]) -> None:
        """Each method's set-up for the hyperparameters these edits will use, on the model as it is now
        (call it before the first edit: see `EditMethod.prepare`)."""
        seen = []
        for edit in edits:
            name, hparams = self.method_of(edit), self.hparams(edit)
            if (name, hparams) not in seen:
                seen.append((name, hparams))
                self.method(name).prepare(hparams)

    def apply(self, edits: list[Edit]) -> AppliedEdit:
        """Apply edits as one update (they share a method and hyperparameters: the first edit's)."""
        applied = self.method(self.method_of(edits[0])).apply(edits, self.hparams(edits[0]))
        self.applied.append(applied)
        return applied

    @property
    def depth(self) -> int:
        """How many updates are applied; `undo_to(depth)` comes back to this point."""
        return len(self.applied)

    def undo_to(self, depth: int = 0) -> None:
        """Undo the latest updates, exactly, until `depth` remain."""
        while len(self.applied) > depth:
            self.applied.pop().undo(self.loaded.model)

    def written_parameters(self) -> list[str]:
        """Names of every parameter the applied updates wrote (they locate the checks' prefix cache)."""
        return [name for applied in self.applied for name in applied.originals]

    def edit_ids(self) -> list[str]:
        return [edit_id for applied in self.applied for edit_id in applied.edit_ids]

    def wraps_model(self) -> bool:
        """Whether some edits live outside the weights (a saved model or edit pack would lack them)."""
        return self.model is not self.loaded.model

    # -- saving ---------------------------------------------------------------------------------------

    def save_delta(self, path: Path | str, model_spec: str) -> dict[str, Any]:
        """The applied edits as an edit pack over the base model (`editgate apply-delta`); its metadata."""
        self._refuse_wrapped()
        loaded = self.loaded
        return export.save_delta(Path(path), loaded.model, list(self.applied), fingerprint=loaded.fingerprint,
                                 model_spec=model_spec, dtype=loaded.dtype, edit_ids=self.edit_ids())

    def save_model(self, path: Path | str, info: dict[str, Any]) -> None:
        """The edited model, tokenizer and config (safetensors), with `info` in its editgate marker file."""
        self._refuse_wrapped()
        loaded = self.loaded
        export.save_model(Path(path), loaded.model, loaded.tokenizer, {
            "base_fingerprint": loaded.fingerprint, "edits": self.edit_ids(), "editgate": editgate.__version__,
            **info})

    def save_result(self, out_dir: Path | str, model_spec: str, check_texts: list[str], edits: list[Edit],
                    edit_pack: bool = True) -> dict[str, Any]:
        """What `results.load_result` needs to rebuild the model as it is now, into `out_dir`: an edit pack
        of the written weights (unless `edit_pack` is false) and what each method keeps outside the
        weights (the memory method's memory.json). Returns the report's artifacts; `result` names the
        pack (relative to `out_dir`) and the methods whose artefacts to load. `edits`: the run's edits,
        each given to its own method."""
        out_dir = Path(out_dir)
        artifacts: dict[str, Any] = {}
        artifacts_of = []
        for name, method in self.methods.items():
            own = [edit for edit in edits if self.method_of(edit) == name]
            saved = method.save_artifacts(out_dir, check_texts, own, self.log)
            if saved:
                artifacts_of.append(name)
                artifacts.update(saved)
        written = [applied for applied in self.applied if applied.originals]
        pack = None
        if edit_pack and written:
            loaded = self.loaded
            export.save_delta(out_dir / RESULT_PACK, loaded.model, written, fingerprint=loaded.fingerprint,
                              model_spec=model_spec, dtype=loaded.dtype,
                              edit_ids=[edit_id for applied in written for edit_id in applied.edit_ids])
            pack = RESULT_PACK
        artifacts["result"] = {"edit_pack": pack, "artifacts_of": artifacts_of, "complete": bool(pack or not written)}
        return artifacts

    # -- loading what a run saved -------------------------------------------------------------------

    def apply_weights(self, weights: dict[str, torch.Tensor], label: str, edit_ids: list[str]) -> AppliedEdit:
        """Write saved edited weights (an edit pack's, a saved model's) as one undoable update."""
        params = dict(self.loaded.model.named_parameters())
        originals = {name: params[name].detach().clone() for name in weights}
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device))
        applied = AppliedEdit(label, list(edit_ids), originals, {"parameters": len(weights)})
        self.applied.append(applied)
        return applied

    def load_artifacts(self, method: str, out_dir: Path | str) -> AppliedEdit | None:
        """What `method` saved in `out_dir` (`save_artifacts`), in front of the model as one undoable update."""
        applied = self.method(method).load_artifacts(Path(out_dir))
        if applied is not None:
            self.applied.append(applied)
        return applied

    def _refuse_wrapped(self) -> None:
        if self.wraps_model():
            raise RunError("an edit wrapped the model instead of changing its weights; nothing can be saved")
