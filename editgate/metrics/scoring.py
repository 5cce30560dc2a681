"""Batched teacher-forced scoring: the log-probability the model gives each token of a sequence.

One mechanism serves perplexity (score every token after the first) and edit metrics (score only the
answer after its prompt). Sequences are sorted by length and packed into batches of about
`batch_tokens` padded tokens, padded on the right: a causal model's real tokens never attend to
right padding, so every sequence scores as if it were alone, and no positions shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Scored:
    """Per-token results for the scored span of one sequence."""

    logprobs: torch.Tensor  # [n] log p(token | prefix), float32 on the CPU
    argmax: torch.Tensor  # [n] the model's most likely token at each position
    targets: torch.Tensor  # [n] the tokens scored

    @property
    def greedy_hits(self) -> torch.Tensor:
        """Whether each token is the model's argmax at its position (teacher-forced accuracy)."""
        return self.argmax == self.targets


def batches_by_length(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches whose padded size (count x longest) stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the right to the longest sequence, and the attention mask (CPU tensors)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def score_sequences(model: torch.nn.Module, sequences: list[list[int]], score_from: list[int],
                    batch_tokens: int = 2048, pad_id: int = 0) -> list[Scored]:
    """Score tokens `score_from[i]`.. of each sequence (score_from >= 1: the first token has no prefix)."""
    device = next(model.parameters()).device
    results: list[Scored | None] = [None] * len(sequences)
    for batch in batches_by_length([len(s) for s in sequences], batch_tokens):
        ids, mask = pad_right([sequences[i] for i in batch], pad_id)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(batch):
                start, end = score_from[i], len(sequences[i])
                results[i] = _score_span(logits[row, start - 1 : end - 1], ids[row, start:end].to(device))
    return results  # type: ignore[return-value]


def _score_span(logits: torch.Tensor, targets: torch.Tensor) -> Scored:
    """Log-probabilities in float32 whatever the model's dtype, so bf16 runs compare fairly."""
    logits = logits.float()
    logprobs = -F.cross_entropy(logits, targets, reduction="none")
    return Scored(logprobs.cpu(), logits.argmax(dim=-1).cpu(), targets.cpu())
