"""Skip the unedited layers of a check: cache the hidden states entering the lowest edited block.

An edit writes only its own layers, so every hidden state below the lowest edited block is the same
before and after it. For the check's fixed batches, those states are computed once and each later
check runs only the blocks from there up (plus the final norm and the output head). The saving is the
share of the compute below that block.

Mechanism (no per-architecture code): the model's block list is temporarily replaced by its upper
part, the model is called with zero `inputs_embeds` of the batch's shape (so its own preparation runs:
rotary tables, masks, position embeddings added to the zeros), and a pre-hook on the first upper block
replaces that block's input by the cached states, exactly as captured. Nothing is subtracted or added
back, so the path is exact in any dtype (GPT-2 in bfloat16 included). Building the cache verifies on the
first batch that this path reproduces the full forward pass; when it does not (an architecture that
feeds its blocks something derived from the input ids themselves, say), the cache is disabled and the
check runs the whole model, saying why.

The same states serve every fixed set of texts a run scores on the edited model: the check sample,
and at a checkpoint the benchmark docs and the edits' teacher-forced queries (`PrefixForwards` picks
the cached pass for whatever the applied edits wrote). They depend only on the unedited blocks below,
so `PrefixStore` keeps them across runs, keyed by the batch's tokens, the block and what decides the
arithmetic (model fingerprint, dtype, device, threads, library versions): a later run, such as a pull
request restoring its base branch's edited state, starts its check and its checkpoint at the edited
block. Only states whose path was verified are stored; the store is bounded (`STORE_BYTES`), its
least recently used entries pruned first.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from editgate import cachefile
from editgate.architecture import block_list
from editgate.baseline import digest
from editgate.hooks import Hooks
from editgate.metrics.scoring import Batch, Forward, logits_kwargs, model_forward

TOLERANCE = 1e-4  # largest accepted difference in log-probability between the two paths
STORE_BYTES = 1 << 30  # the most a model's stored states may take on disk (SmolLM2-135M: ~60 MB a run)


class PrefixStore:
    """States entering a block, kept across runs under <cache>/prefix/<model fingerprint>/.

    `settings` is what besides the tokens and the block decides the states' last bits (dtype, device,
    threads, library versions); `read=False` (`--no-cache`) measures everything again but still stores."""

    def __init__(self, cache_dir: Path, fingerprint: str, settings: dict[str, Any], *, read: bool = True,
                 max_bytes: int = STORE_BYTES, log: Callable[[str], None] = print):
        self.root = Path(cache_dir) / "prefix" / fingerprint
        self.settings, self.read, self.max_bytes, self.log = settings, read, max_bytes, log
        self.used: set[str] = set()  # entries this run read or wrote: never pruned to make room for its own
        self.full = False

    def _path(self, key: str, layer: int) -> Path:
        return self.root / f"{digest([key, layer, self.settings])}.pt"

    def get(self, key: str, layer: int) -> torch.Tensor | None:
        if not self.read:
            return None
        path = self._path(key, layer)
        states = cachefile.read_tensor(path, self.log)
        if not isinstance(states, torch.Tensor):
            return None
        try:
            os.utime(path)  # recently used: pruned last
        except OSError:
            pass
        self.used.add(str(path))
        return states

    def put(self, key: str, layer: int, states: torch.Tensor) -> None:
        """Store one batch's states when the store has room (after pruning other runs' oldest entries);
        a full or read-only cache costs later runs time, never this one's figures (said once)."""
        if self.full:
            return
        problem = self._make_room(states.numel() * states.element_size())
        if problem is None:
            path = self._path(key, layer)
            try:
                cachefile.write_tensor(path, states.detach().cpu())  # captured states are compact already
                self.used.add(str(path))
                return
            except OSError as error:
                problem = f"cannot write {path} ({error})"
        self.log(f"prefix states not stored from here on: {problem}")
        self.full = True

    def _make_room(self, size: int) -> str | None:
        """None when `size` more bytes fit (least recently used entries of other runs pruned), else why not."""
        try:
            entries = []
            for entry in os.scandir(self.root):
                if entry.is_file() and entry.name.endswith(".pt"):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
        except FileNotFoundError:
            entries = []  # nothing stored yet
        except OSError as error:  # unreadable (or an entry pruned by another job while listed)
            return f"cannot list {self.root} ({error})"
        entries.sort()
        total = sum(entry[1] for entry in entries)
        for _mtime, entry_size, path in entries:  # least recently used first
            if total + size <= self.max_bytes:
                break
            if path in self.used:
                continue
            try:
                os.remove(path)
                total -= entry_size
            except OSError:
                pass  # another job pruned it first
        return None if total + size <= self.max_bytes else f"{self.root} would exceed {self.max_bytes >> 20} MiB"


class PrefixCache:
    """Hidden states entering block `layer` for each batch of a sample, keyed by the batch's tokens;
    read from and written to `store` when one is given."""

    def __init__(self, model: nn.Module, layer: int, store: PrefixStore | None = None):
        self.model = model
        self.layer = layer
        self.first_block = block_list(model)[1][layer]  # where the cached states go in
        self.store = store
        self.own = model_forward(model)  # the full pass, trimmed as the caller's scoring is
        self.extra = logits_kwargs(model)
        self.states: dict[str, torch.Tensor] = {}
        self.verified: bool | None = None  # None until the first batch has been compared
        self.problem: str | None = None

    @staticmethod
    def key(host_ids: torch.Tensor) -> str:
        return hashlib.sha1(host_ids.numpy().tobytes() + str(tuple(host_ids.shape)).encode()).hexdigest()

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of a batch (from `batch.logits_from` where the model trims): from the cached states when
        present, else a full pass that fills them."""
        if self.verified is False:
            return self.own(batch)
        key = self.key(batch.host_ids)
        if key not in self.states and self.store is not None:
            stored = self.store.get(key, self.layer)
            if stored is not None:  # stored only after a verified run of this model and editgate version
                self.states[key] = stored.to(batch.ids.device)
                self.verified = True
        if key not in self.states:
            logits, self.states[key] = full_with_states(self.own, self.first_block, batch)
            if self.verified is None:
                self._verify(batch, logits, key)
            if self.verified and self.store is not None:
                self.store.put(key, self.layer, self.states[key])
            return logits
        return self._from_states(batch, self.states[key])

    def _from_states(self, batch: Batch, states: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(*batch.ids.shape, states.shape[-1], dtype=states.dtype, device=batch.ids.device)
        with upper_blocks(self.model, self.layer), block_input(self.first_block, states):
            return self.model(inputs_embeds=zeros, attention_mask=batch.mask, **self.extra(batch)).logits

    def _verify(self, batch: Batch, logits: torch.Tensor, key: str) -> None:
        skipped = self._from_states(batch, self.states[key])
        real = batch.mask.bool()[:, batch.mask.shape[1] - logits.shape[1]:]
        difference = (logits.float().log_softmax(-1) - skipped.float().log_softmax(-1))[real].abs().max()
        self.verified = bool(difference <= TOLERANCE)
        if not self.verified:
            self.problem = (f"running from block {self.layer} on cached states differs from the full model "
                            f"by {float(difference):.2e} in log-probability; checks run the whole model")
            self.states.clear()


class PrefixForwards:
    """The prefix-cached forward pass for the model as the applied edits left it: from the lowest block
    they wrote, the cache rebuilt lower when a later edit writes below it. None when it does not apply
    (switched off, nothing written, an edit outside the blocks, or a model that wraps the edited one)."""

    def __init__(self, enabled: bool = True, store: PrefixStore | None = None,
                 log: Callable[[str], None] = lambda _m: None):
        self.enabled, self.store, self.log = enabled, store, log
        self.prefix: PrefixCache | None = None
        self._told: set[str] = set()

    def forward(self, model: nn.Module, written: list[str]) -> tuple[Forward | None, int]:
        """(the forward pass, its first block), or (None, 0) for the model's own pass."""
        if not self.enabled or not written:
            return None, 0
        layer = lowest_written_layer(model, written)
        if layer == 0:
            return None, 0
        if self.prefix is None or self.prefix.layer > layer or self.prefix.model is not model:
            self.prefix = PrefixCache(model, layer, self.store)  # states below a lower edit: rebuilt there
        if self.prefix.verified is False:
            self._tell(self.prefix.problem or "prefix cache disabled")
            return None, 0
        return self.prefix.forward, self.prefix.layer

    @property
    def turned_off(self) -> bool:
        """Whether the cache turned itself off (on the first batch it compared)."""
        return self.prefix is not None and self.prefix.verified is False

    def _tell(self, message: str) -> None:
        if message not in self._told:
            self._told.add(message)
            self.log(message)


def full_with_states(forward: Forward, block: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward pass's logits and the hidden states entering `block`."""
    with Hooks() as hooks:
        captured = hooks.record_input(block)
        logits = forward(batch)
    return logits, captured[0].detach().clone()


@contextmanager
def block_input(block: nn.Module, states: torch.Tensor) -> Iterator[None]:
    """`block` called with `states` as its hidden-state input, whatever the model passes it."""
    def replace(_module, args, kwargs):
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    with Hooks() as hooks:
        hooks.before(block, replace, with_kwargs=True)
        yield


@contextmanager
def upper_blocks(model: nn.Module, layer: int):
    """The model with only blocks `layer`.. in its block list, restored afterwards."""
    name, blocks = block_list(model)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.ModuleList(list(blocks)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attribute, blocks)


def lowest_written_layer(model: nn.Module, parameter_names: list[str]) -> int:
    """The lowest block any of these parameters belongs to; 0 when one lies outside the blocks
    (an embedding or the output head changes everything from the bottom)."""
    name, blocks = block_list(model)
    lowest = len(blocks)
    for parameter in parameter_names:
        rest = parameter.removeprefix(f"{name}.")
        index = rest.split(".", 1)[0]
        if rest == parameter or not index.isdigit():
            return 0
        lowest = min(lowest, int(index))
    return lowest
