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
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from editgate.architecture import block_list
from editgate.hooks import Hooks
from editgate.metrics.scoring import Batch

TOLERANCE = 1e-4  # largest accepted difference in log-probability between the two paths


class PrefixCache:
    """Hidden states entering block `layer` for each batch of a sample, keyed by the batch's tokens."""

    def __init__(self, model: nn.Module, layer: int):
        self.model = model
        self.layer = layer
        self.first_block = block_list(model)[1][layer]  # where the cached states go in
        self.states: dict[str, torch.Tensor] = {}
        self.verified: bool | None = None  # None until the first batch has been compared
        self.problem: str | None = None

    @staticmethod
    def key(host_ids: torch.Tensor) -> str:
        return hashlib.sha1(host_ids.numpy().tobytes() + str(tuple(host_ids.shape)).encode()).hexdigest()

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of a batch: from the cached states when present, else a full pass that fills them."""
        if self.verified is False:
            return self.model(input_ids=batch.ids, attention_mask=batch.mask).logits
        key = self.key(batch.host_ids)
        if key not in self.states:
            logits, self.states[key] = full_with_states(self.model, batch.ids, batch.mask, self.layer)
            if self.verified is None:
                self._verify(batch, logits, key)
            return logits
        return self._from_states(batch, self.states[key])

    def _from_states(self, batch: Batch, states: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(*batch.ids.shape, states.shape[-1], dtype=states.dtype, device=batch.ids.device)
        with upper_blocks(self.model, self.layer), block_input(self.first_block, states):
            return self.model(inputs_embeds=zeros, attention_mask=batch.mask).logits

    def _verify(self, batch: Batch, logits: torch.Tensor, key: str) -> None:
        skipped = self._from_states(batch, self.states[key])
        real = batch.mask.bool()
        difference = (logits.float().log_softmax(-1) - skipped.float().log_softmax(-1))[real].abs().max()
        self.verified = bool(difference <= TOLERANCE)
        if not self.verified:
            self.problem = (f"running from block {self.layer} on cached states differs from the full model "
                            f"by {float(difference):.2e} in log-probability; checks run the whole model")
            self.states.clear()


def full_with_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward pass's logits and the hidden states entering block `layer`."""
    with Hooks() as hooks:
        captured = hooks.record_input(block_list(model)[1][layer])
        logits = model(input_ids=ids, attention_mask=mask).logits
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
