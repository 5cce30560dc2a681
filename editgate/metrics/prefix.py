"""Skip the unedited layers of a check: cache the hidden states entering the lowest edited block.

An edit writes only its own layers, so every hidden state below the lowest edited block is the same
before and after it. For the check's fixed batches, those states are computed once and each later
check runs only the blocks from there up (plus the final norm and the output head). The saving is the
share of the compute below that block.

Mechanism (no per-architecture code): the model's block list is temporarily replaced by its upper
part and the cached states are passed as `inputs_embeds`. Whatever the model adds to `inputs_embeds`
before the first block (GPT-2's position embeddings; nothing for Llama, Qwen2, GPT-NeoX) is measured
once by feeding zeros and subtracted from the cached states. Building the cache verifies on the first
batch that this path reproduces the full forward pass; when it does not (an architecture that scales
its embeddings, say), the cache is disabled and the check runs the whole model, saying why.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from editgate.architecture import block_list

TOLERANCE = 1e-4  # largest accepted difference in log-probability between the two paths


class PrefixCache:
    """Hidden states entering block `layer` for each batch of a sample, keyed by the batch's tokens."""

    def __init__(self, model: nn.Module, layer: int):
        self.model = model
        self.layer = layer
        self.states: dict[str, torch.Tensor] = {}
        self.verified: bool | None = None  # None until the first batch has been compared
        self.problem: str | None = None
        self.offsets: dict[int, torch.Tensor] = {}  # by batch width

    @staticmethod
    def key(ids: torch.Tensor) -> str:
        return hashlib.sha1(ids.cpu().numpy().tobytes() + str(tuple(ids.shape)).encode()).hexdigest()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of a batch: from the cached states when present, else a full pass that fills them."""
        key = self.key(ids)
        if self.verified is False:
            return self.model(input_ids=ids, attention_mask=mask).logits
        if key not in self.states:
            logits, states = full_with_states(self.model, ids, mask, self.layer)
            width = ids.shape[1]
            if width not in self.offsets:  # measured at block 0, which may sit on another device than `layer`
                self.offsets[width] = input_offset(self.model, width, states).to(states.device)
            self.states[key] = states - self.offsets[width]
            if self.verified is None:
                self._verify(ids, mask, logits, key)
            return logits
        with upper_blocks(self.model, self.layer):
            return self.model(inputs_embeds=self.states[key], attention_mask=mask).logits

    def _verify(self, ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor, key: str) -> None:
        with upper_blocks(self.model, self.layer):
            skipped = self.model(inputs_embeds=self.states[key], attention_mask=mask).logits
        real = mask.bool()
        difference = (logits.float().log_softmax(-1) - skipped.float().log_softmax(-1))[real].abs().max()
        self.verified = bool(difference <= TOLERANCE)
        if not self.verified:
            self.problem = (f"running from block {self.layer} on cached states differs from the full model "
                            f"by {float(difference):.2e} in log-probability; checks run the whole model")
            self.states.clear()


def full_with_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward pass's logits and the hidden states entering block `layer`."""
    captured: list[torch.Tensor] = []
    handle = block_list(model)[1][layer].register_forward_pre_hook(_capture_into(captured), with_kwargs=True)
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    return logits, captured[0].detach().clone()


def input_offset(model: nn.Module, width: int, like: torch.Tensor) -> torch.Tensor:
    """What the model adds to `inputs_embeds` before its first block (position embeddings, if any)."""
    captured: list[torch.Tensor] = []
    handle = block_list(model)[1][0].register_forward_pre_hook(_capture_into(captured), with_kwargs=True)
    try:
        zeros = torch.zeros(1, width, like.shape[-1], dtype=like.dtype, device=like.device)
        model(inputs_embeds=zeros, attention_mask=torch.ones(1, width, dtype=torch.long, device=like.device))
    finally:
        handle.remove()
    return captured[0]


def _capture_into(store: list[torch.Tensor]) -> Callable:
    def hook(_module, args, kwargs):
        store.append(args[0] if args else kwargs["hidden_states"])
    return hook


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
