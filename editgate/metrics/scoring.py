"""Batched teacher-forced scoring: the log-probability the model gives each token of a sequence.

One mechanism serves perplexity (score every token after the first) and edit metrics (score only the
answer after its prompt). Sequences are sorted by length and packed into batches of about
`batch_tokens` padded tokens, padded on the right: a causal model's real tokens never attend to
right padding, so every sequence scores as if it were alone, and no positions shift.

The output head runs only where a batch has something to score: from the earliest scored position of
any of its rows to the end (transformers' `logits_to_keep`, where the model's forward takes it). The
head of a model with a large vocabulary is a fifth of its compute per token (SmolLM2-135M: 28M of 135M
multiply-adds), and a benchmark doc or an edit query scores only its last few tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

@dataclass
class Batch:
    """A right-padded batch: ids and attention mask on the model's device, and the ids as built on the
    host (a cache can key on them without reading the device back)."""

    ids: torch.Tensor
    mask: torch.Tensor
    host_ids: torch.Tensor
    logits_from: int = 0  # the first position whose logits are needed


# computes the logits of a padded batch: of every position, or only from `batch.logits_from` on (the
# caller tells which by the width it gets back); the default is the model's own forward pass
Forward = Callable[[Batch], torch.Tensor]


def logits_kwargs(model: torch.nn.Module) -> Callable[[Batch], dict]:
    """The extra arguments of a forward pass that computes logits only at the positions a batch asks
    for, when the model's forward can (a wrapper that post-processes logits by position does not declare
    it) and the model sits on one device (split over several, accelerate moves the positions to the first
    device and the last block's states stay on the last: such a model is scored on every position)."""
    trims = ("logits_to_keep" in inspect.signature(model.forward).parameters
             and len({p.device for p in model.parameters()}) == 1)

    def extra(batch: Batch) -> dict:
        if not trims or batch.logits_from <= 0:
            return {}
        # positions as an index, not a count: transformers slices the hidden states for a count, and a
        # strided slice sends the head through a batched matmul slower than the full one
        return {"logits_to_keep": torch.arange(batch.logits_from, batch.ids.shape[1], device=batch.ids.device)}

    return extra


def model_forward(model: torch.nn.Module) -> Forward:
    """The model's own forward pass, trimmed as `logits_kwargs` allows."""
    extra = logits_kwargs(model)

    def forward(batch: Batch) -> torch.Tensor:
        return model(input_ids=batch.ids, attention_mask=batch.mask, **extra(batch)).logits

    return forward


@dataclass
class Scored:
    """Per-token results for the scored span of one sequence."""

    logprobs: torch.Tensor  # [n] log p(token | prefix), float32 on the CPU
    argmax: torch.Tensor  # [n] the model's most likely token at each position
    targets: torch.Tensor  # [n] the tokens scored
    alternatives: torch.Tensor | None = None  # [k] log p of other tokens at the first scored position

    @property
    def greedy_hits(self) -> torch.Tensor:
        """Whether each token is the model's argmax at its position (teacher-forced accuracy)."""
        return self.argmax == self.targets


MAX_PADDING = 0.1  # a batch closes before padding would exceed this share of it


def batches_by_length(lengths: list[int], batch_tokens: int, *, max_padding: float | None = MAX_PADDING,
                      min_width: int = 0) -> list[list[int]]:
    """Indices grouped into batches whose padded size (count x longest) stays within `batch_tokens`
    and whose padding stays within `MAX_PADDING` of it: padded tokens cost a full forward pass each
    (on short texts, a token budget alone padded 30-70% of a batch; the bound gained 10-20% tok/s).

    `max_padding=None` drops the padding bound, for callers whose batches must keep the shapes the
    budget alone gives them; `min_width` is the narrowest batch the caller pads to (`pad_right`'s
    `min_width`), so the budget counts what is really run."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, real = [], [], 0
    for i in order:
        padded = (len(current) + 1) * max(lengths[i], min_width)
        too_padded = max_padding is not None and padded - real - lengths[i] > max_padding * padded
        if current and (padded > batch_tokens or too_padded):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def pad_right(sequences: list[list[int]], pad_id: int, *, min_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the right to the longest sequence, and the attention mask (CPU tensors).

    `min_width`: pad to at least this width (a model cannot run a batch of empty sequences at width 0;
    at width 1 their rows are all padding, masked out)."""
    width = max(max(len(s) for s in sequences), min_width)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def score_sequences(model: torch.nn.Module, sequences: list[list[int]], score_from: list[int],
                    batch_tokens: int = 2048, pad_id: int = 0, forward: Forward | None = None,
                    alternatives: list[list[int] | None] | None = None) -> list[Scored]:
    """Score tokens `score_from[i]`.. of each sequence (score_from >= 1: the first token has no prefix).

    `alternatives[i]`: token ids whose log-probabilities at sequence i's first scored position are
    returned too (`Scored.alternatives`): one forward pass scores every one-token choice of a
    multiple-choice doc."""
    device = next(model.parameters()).device
    forward = forward or model_forward(model)
    results: list[Scored | None] = [None] * len(sequences)
    for batch in batches_by_length([len(s) for s in sequences], batch_tokens):
        ids, mask = pad_right([sequences[i] for i in batch], pad_id)
        spans = [(score_from[i] - 1, len(sequences[i]) - 1) for i in batch]
        with torch.inference_mode():
            on_device = ids.to(device)
            logits = forward(Batch(on_device, mask.to(device), ids, logits_from=min(s for s, _ in spans)))
            alts = [alternatives[i] if alternatives else None for i in batch]
            logprobs, argmax = _score_spans(logits, on_device, spans, alts, offset=ids.shape[1] - logits.shape[1])
        for row, (i, (start, end)) in enumerate(zip(batch, spans)):
            width = end - start
            extra = logprobs[row][width:] if alts[row] else None
            results[i] = Scored(logprobs[row][:width], argmax[row], ids[row, start + 1 : end + 1], extra)
    return results  # type: ignore[return-value]


def _score_spans(logits: torch.Tensor, ids: torch.Tensor, spans: list[tuple[int, int]],
                 alternatives: list[list[int] | None], offset: int = 0):
    """Log-probabilities (float32 whatever the model's dtype, so bf16 runs compare fairly) and argmax
    of each row's span of positions, each row's alternatives' log-probabilities appended to its span's,
    moved to the CPU in one transfer per batch: no host synchronisation per sequence on a GPU.
    `offset`: the position of `logits`' first column (the positions before it were not computed)."""
    logprobs, argmax = [], []
    for row, (start, end) in enumerate(spans):
        span = logits[row, start - offset:end - offset].float()
        logprobs.append(-F.cross_entropy(span, ids[row, start + 1 : end + 1], reduction="none"))
        if alternatives[row]:
            wanted = torch.tensor(alternatives[row], dtype=torch.long).to(span.device)
            logprobs.append(span[0].log_softmax(-1)[wanted])
        argmax.append(span.argmax(dim=-1))
    sizes = [end - start + len(alts or ()) for (start, end), alts in zip(spans, alternatives)]
    return torch.cat(logprobs).cpu().split(sizes), torch.cat(argmax).cpu().split([e - s for s, e in spans])
