"""Perplexity of a model on a fixed text sample, the cheap check run after every edit.

Two figures: the token-weighted corpus perplexity, exp(total NLL / total scored tokens), which the
gate's ratios use because long texts cannot be swamped by short ones; and the mean of per-text
perplexities, which the "Butterfly Effect of Model Editing" paper reports.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from editgate.metrics.scoring import Forward, score_sequences

CHUNKS = 4  # the sample is scored in this many random parts, so a check can stop after part of it
MIN_CHUNK_TEXTS = 8  # ... but only when each part has enough texts for a standard error


@dataclass
class PerplexitySample:
    """The check's texts, tokenized once and reused for every check in a run.

    `chunks` is the scoring plan: text indices in random, disjoint parts, each batched by length on
    its own. Every measurement of the sample (baseline, full checks, early-stopped checks) scores
    the same batches, so figures compare like with like and a part is a random subsample.
    """

    token_ids: list[list[int]]
    max_tokens: int
    batch_tokens: int
    pad_id: int
    chunks: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.chunks:
            self.chunks = [list(range(len(self.token_ids)))]

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], max_tokens: int, batch_tokens: int = 2048,
                   seed: int = 0) -> "PerplexitySample":
        encoded = tokenizer(texts, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
        kept = [ids for ids in encoded if len(ids) >= 2]  # one token has nothing to predict
        return cls(kept, max_tokens, batch_tokens, tokenizer.pad_token_id or 0, chunk_plan(len(kept), seed))

    @property
    def scored_tokens(self) -> int:
        return sum(len(ids) - 1 for ids in self.token_ids)


def chunk_plan(n_texts: int, seed: int) -> list[list[int]]:
    """`CHUNKS` random disjoint parts of the texts (one part when there are too few texts)."""
    order = list(range(n_texts))
    random.Random(seed).shuffle(order)
    parts = CHUNKS if n_texts >= CHUNKS * MIN_CHUNK_TEXTS else 1
    return [sorted(order[i::parts]) for i in range(parts)]


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


def perplexity(model: torch.nn.Module, sample: PerplexitySample, forward: Forward | None = None) -> PerplexityResult:
    """The whole sample, part by part (see `PerplexitySample.chunks`)."""
    start = time.perf_counter()
    nll: list[float] = [0.0] * len(sample.token_ids)
    counts: list[int] = [0] * len(sample.token_ids)
    for chunk in sample.chunks:
        score_chunk(model, sample, chunk, nll, counts, forward)
    return result_of(nll, counts, time.perf_counter() - start)


def score_chunk(model: torch.nn.Module, sample: PerplexitySample, chunk: list[int], nll: list[float],
                counts: list[int], forward: Forward | None = None) -> None:
    """Summed NLL and scored tokens of the texts in `chunk`, written into `nll` and `counts`."""
    sequences = [sample.token_ids[i] for i in chunk]
    scored = score_sequences(model, sequences, [1] * len(sequences), sample.batch_tokens, sample.pad_id, forward)
    for i, s in zip(chunk, scored):
        nll[i], counts[i] = float(-s.logprobs.double().sum()), len(s.logprobs)


def result_of(nll: list[float], counts: list[int], seconds: float) -> PerplexityResult:
    return PerplexityResult(safe_exp(sum(nll) / sum(counts)),
                            sum(safe_exp(n / c) for n, c in zip(nll, counts)) / len(counts),
                            nll, counts, seconds)


def safe_exp(x: float) -> float:
    """exp that turns overflow and NaN into inf/nan instead of raising: a collapsed model is a verdict."""
    if math.isnan(x):
        return math.nan
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
