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

    def save_artifacts(self, out_dir: Path | str, check_texts: list[str], edits: list[Edit]) -> dict[str, Any]:
        """What each method keeps outside the weights (the memory method's memory.json), into `out_dir`;
        {report key: value}. `edits`: the run's edits, each given to its own method."""
        artifacts: dict[str, Any] = {}
        for name, method in self.methods.items():
            own = [edit for edit in edits if self.method_of(edit) == name]
            artifacts.update(method.save_artifacts(Path(out_dir), check_texts, own, self.log))
        return artifacts

    def _refuse_wrapped(self) -> None:
        if self.wraps_model():
            raise RunError("an edit wrapped the model instead of changing its weights; nothing can be saved")
