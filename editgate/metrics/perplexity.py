"""Perplexity of a model on a fixed text sample, the cheap check run after every edit.

Two figures: the token-weighted corpus perplexity, exp(total NLL / total scored tokens), which the
gate's ratios use because long texts cannot be swamped by short ones; and the mean of per-text
perplexities, which the "Butterfly Effect of Model Editing" paper reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from editgate.metrics.scoring import score_sequences


@dataclass
class PerplexitySample:
    """The check's texts, tokenized once and reused for every check in a run."""

    token_ids: list[list[int]]
    max_tokens: int
    batch_tokens: int
    pad_id: int

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], max_tokens: int, batch_tokens: int = 2048) -> "PerplexitySample":
        encoded = tokenizer(texts, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
        kept = [ids for ids in encoded if len(ids) >= 2]  # one token has nothing to predict
        return cls(kept, max_tokens, batch_tokens, tokenizer.pad_token_id or 0)

    @property
    def scored_tokens(self) -> int:
        return sum(len(ids) - 1 for ids in self.token_ids)


@dataclass
class PerplexityResult:
    token_perplexity: float
    mean_text_perplexity: float
    text_nll: list[float] = field(repr=False)  # summed NLL of each text
    text_tokens: list[int] = field(repr=False)  # scored tokens of each text
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(self.text_tokens)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.token_perplexity)


def perplexity(model: torch.nn.Module, sample: PerplexitySample) -> PerplexityResult:
    start = time.perf_counter()
    scored = score_sequences(model, sample.token_ids, [1] * len(sample.token_ids),
                             sample.batch_tokens, sample.pad_id)
    nll = [float(-s.logprobs.double().sum()) for s in scored]
    counts = [len(s.logprobs) for s in scored]
    return PerplexityResult(safe_exp(sum(nll) / sum(counts)),
                            sum(safe_exp(n / c) for n, c in zip(nll, counts)) / len(counts),
                            nll, counts, time.perf_counter() - start)


def safe_exp(x: float) -> float:
    """exp that turns overflow and NaN into inf/nan instead of raising: a collapsed model is a verdict."""
    if math.isnan(x):
        return math.nan
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
