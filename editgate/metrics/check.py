"""The gate's perplexity check after an edit, made cheaper than a forward pass over the whole sample.

Two savings, each a policy switch (`perplexity.prefix_cache`, `perplexity.early_stop`, both on):

- **Prefix cache** (`editgate.metrics.prefix`): only the blocks from the lowest edited one up are run.
- **Early stop.** The check compares the same texts before and after the edit, so it is a paired
  estimate of log(ratio) = sum(d_i) / sum(n_i), with d_i the change in text i's summed NLL and n_i its
  scored tokens. The sample is scored in random parts (`PerplexitySample.chunks`); after each part but
  the last, the ratio estimator over the texts scored so far, r = sum(d)/sum(n), gets its standard
  error under sampling without replacement, se = sqrt((1 - m/M) * sum((d_i - r n_i)^2) / (m (m - 1))) / mean(n),
  for m of M texts. When exp(r - Z se) and exp(r + Z se) (Z = 4) fall in the same band of the
  policy (pass < warn_ratio < warn < fail_ratio < fail < collapse_ratio < collapse), that band is the
  status and the check stops; the report gives the estimate, the interval and how many texts it
  scored. A non-finite change is a collapse at once. Otherwise the whole sample is scored and the
  ratio is exact, identical to a check without early stopping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from editgate.metrics.perplexity import PerplexityResult, PerplexitySample, safe_exp, score_chunk
from editgate.metrics.prefix import PrefixCache, PrefixForwards, PrefixStore
from editgate.policy import PerplexityPolicy

Z = 4.0  # standard errors on each side of the estimate that must lie inside one band to stop early


@dataclass
class CheckResult:
    ratio: float  # edited / base token-weighted perplexity (an estimate when stopped early)
    perplexity: float
    texts: int  # texts scored
    total_texts: int
    interval: tuple[float, float] | None  # bounds of the ratio when the check stopped early
    from_layer: int  # the first block run (0: the whole model)
    seconds: float

    @property
    def stopped_early(self) -> bool:
        return self.texts < self.total_texts


class PerplexityCheck:
    """Perplexity of the current model on the check sample against the unedited model's."""

    def __init__(self, sample: PerplexitySample, baseline: PerplexityResult, policy: PerplexityPolicy,
                 classify: Callable[[float], str], log: Callable[[str], None] = lambda _m: None,
                 store: PrefixStore | None = None):
        """`store`: where the prefix cache keeps its states across runs (none: this run only)."""
        self.sample, self.baseline, self.policy = sample, baseline, policy
        self.classify, self.log = classify, log
        self.prefixes = PrefixForwards(policy.prefix_cache, store, log)

    def run(self, model: torch.nn.Module, written: list[str]) -> CheckResult:
        """`written`: the names of `model`'s parameters the applied edits changed; they locate the
        prefix cache, and none (nothing written, or a model that wraps the edited one) means no cache."""
        start = time.perf_counter()
        forward, from_layer = self.prefixes.forward(model, written)
        total = len(self.sample.token_ids)
        nll, counts = [0.0] * total, [0] * total
        scored: list[int] = []
        for position, chunk in enumerate(self.sample.chunks):
            score_chunk(model, self.sample, chunk, nll, counts, forward)
            scored += chunk
            if self.policy.early_stop and position < len(self.sample.chunks) - 1:
                decided = self.decide(scored, nll, counts, total)
                if decided is not None:
                    ratio, interval = decided
                    return CheckResult(ratio, self.baseline.token_perplexity * ratio, len(scored), total, interval,
                                       from_layer, time.perf_counter() - start)
        if forward is not None and self.prefixes.turned_off:
            from_layer = 0  # the cache turned itself off on this check's first batch
        ratio = safe_exp((sum(nll) - sum(self.baseline.text_nll)) / sum(counts))
        return CheckResult(ratio, safe_exp(sum(nll) / sum(counts)), total, total, None, from_layer,
                           time.perf_counter() - start)

    def decide(self, scored: list[int], nll: list[float], counts: list[int],
               total: int) -> tuple[float, tuple[float, float]] | None:
        """(estimated ratio, its interval) when the texts scored so far settle the status, else None."""
        d = [nll[i] - self.baseline.text_nll[i] for i in scored]
        n = [counts[i] for i in scored]
        if not all(math.isfinite(x) for x in d):
            return math.inf, (math.inf, math.inf)
        m = len(d)
        r = sum(d) / sum(n)
        spread = sum((di - r * ni) ** 2 for di, ni in zip(d, n)) / (m * (m - 1))
        se = math.sqrt(max(0.0, 1 - m / total) * spread) / (sum(n) / m)
        low, high = safe_exp(r - Z * se), safe_exp(r + Z * se)
        if self.classify(low) != self.classify(high):
            return None
        return safe_exp(r), (low, high)

    @property
    def prefix(self) -> PrefixCache | None:
        """The prefix cache the last check used (None before any ran from a cached block)."""
        return self.prefixes.prefix
