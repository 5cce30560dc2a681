"""The interface every editing method implements, and the record of what an edit changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from editgate.manifests import Edit


@dataclass
class AppliedEdit:
    """What one application of a method changed, so the gate can undo, diff or export it.

    `originals` holds exact copies of every parameter the method wrote, taken before it wrote them,
    so `undo` restores the weights bit for bit (adding back a negated delta would not, in floating
    point).
    """

    method: str
    edit_ids: list[str]
    originals: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    on_undo: list[Callable[[], None]] = field(default_factory=list, repr=False)  # method state to restore
    # the model to evaluate from now on, when the method wraps the base model instead of writing to it
    # (memory: a MemoryModel routing inputs to stored edits); None: the base model itself
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def weights_only(self) -> bool:
        """Whether the weights it wrote are all it changed (no method state, no wrapper): then an edit
        pack of them reproduces it."""
        return not self.on_undo and self.model is None

    def undo(self, model: torch.nn.Module) -> None:
        """Restore every written parameter (and the method's own state) exactly; undo in reverse order."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original.to(params[name].device))
        for restore in reversed(self.on_undo):
            restore()

    def deltas(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The change to each written parameter (edited minus original), on the CPU."""
        params = dict(model.named_parameters())
        return {
            name: params[name].detach().float().cpu() - original.float().cpu()
            for name, original in self.originals.items()
        }


class EditMethod:
    """A model-editing method. Subclasses set `name`, `description`, `HParams` and implement `apply`."""

    name: ClassVar[str]
    description: ClassVar[str]
    HParams: ClassVar[type]
    # its edits are weight changes (saved models and edit packs contain them); False: it wraps the model
    writes_weights: ClassVar[bool] = True
    # its edit is a value written at the subject's last token, which reaches the tokens after the subject
    # only through the blocks above: the model's last block cannot hold it (ROME, MEMIT)
    needs_a_block_above: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, tokenizer: Any, context: "MethodContext"):
        self.model = model
        self.tokenizer = tokenizer
        self.context = context

    def default_hparams(self) -> Any:
        """Defaults scaled to the model's depth and width."""
        raise NotImplementedError

    def prepare(self, hparams: Any) -> None:
        """Compute, on the unedited model, what every edit with these hyperparameters reuses (context
        prefixes, key statistics): they then describe the model, not whichever edits came first, and a
        run that starts from a stored state computes them as a full replay does."""

    def apply(self, edits: list[Edit], hparams: Any) -> AppliedEdit:
        raise NotImplementedError

    def figures(self, texts: list[str], edits: list[Edit]) -> dict[str, Any]:
        """What the method measures of its stored edits on these texts beyond the weights' figures (the
        memory method: how its scope classifier routes them); empty for a method that writes weights."""
        return {}

    def save_artifacts(self, out_dir: Any, check_texts: list[str], edits: list[Edit], log: Any) -> dict[str, Any]:
        """What the method keeps outside the weights, saved beside the reports: {report key: value}."""
        return {}

    def load_artifacts(self, out_dir: Any) -> "AppliedEdit | None":
        """The inverse of `save_artifacts`: what it saved in `out_dir`, put back in front of the model as
        one undoable update (None when there is nothing of this method's there)."""
        return None


@dataclass
class MethodContext:
    """What methods share across edits in one run: the cache directory, the statistics corpus, progress."""

    cache_dir: Any
    model_fingerprint: str
    stats_texts: Any  # callable returning the statistics corpus texts (loaded only when needed)
    stats_corpus_name: str
    seed: int = 0
    log: Any = print
    memo: dict[str, Any] = field(default_factory=dict)  # per-run caches (context prefixes, inverse covariances)
