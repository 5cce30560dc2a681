"""A benchmark task's figures and their comparison with a baseline.

A result keeps each doc's outcome (`per_doc`), so the edited model is compared with its baseline on the
same docs: the standard error of a paired difference counts only the docs whose outcome changed, where
the independent-samples figure sqrt(se_base^2 + se_now^2) also counts the spread of the docs themselves,
which an edit does not change. On a 0/1 metric with n docs, d_i = base_i - now_i, the drop is mean(d)
(the same as base - now) and its standard error stdev(d) / sqrt(n), lm-evaluation-harness's sample
standard error applied to the differences. Perplexity's drop, now/base - 1 with token-weighted
perplexities, is exp(D) - 1 with D = sum(nll_now_i - nll_base_i) / sum(tokens_i) the mean change in
log-perplexity per token; D is a ratio of two per-doc sums, so its standard error is the ratio
estimator's, sqrt(n / (n - 1) * sum((x_i - D t_i)^2)) / sum(t_i) with x_i the doc's change in summed
NLL and t_i its tokens, and the drop's is exp(D) times that (the delta method).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# figures where lower is better: compared as a relative increase (now / base - 1), not a difference
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})
PER_DOC_NLL, PER_DOC_TOKENS = "nll", "tokens"  # per_doc keys of perplexity: summed NLL and tokens per doc


@dataclass
class TaskResult:
    """One task's headline figure (`metric`, the first the task lists) and every other it computed.

    `per_doc` holds each doc's outcome, in doc order: 0/1 per accuracy metric, and summed NLL and token
    count (`nll`, `tokens`) for perplexity; empty where the scorer gives none (lm-eval tasks). It is
    cached with the baseline but left out of `to_dict()`, which is what the report holds."""

    name: str
    metric: str
    value: float
    stderr: float | None  # None where no standard error is defined (perplexity)
    n: int  # docs scored
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    stderrs: dict[str, float | None] = field(default_factory=dict)
    per_doc: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def higher_is_better(self) -> bool:
        return self.metric.split(" (")[0] not in LOWER_IS_BETTER  # lm-eval labels: "metric (filter)"

    def to_dict(self, per_doc: bool = False) -> dict:
        data = asdict(self)
        if not per_doc:
            del data["per_doc"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TaskResult":
        return cls(**{k: data[k] for k in ("name", "metric", "value", "stderr", "n", "seconds")},
                   metrics=dict(data.get("metrics", {})), stderrs=dict(data.get("stderrs", {})),
                   per_doc={k: list(v) for k, v in data.get("per_doc", {}).items()})

    def paired_with(self, other: "TaskResult") -> bool:
        """Whether both hold per-doc outcomes of the headline metric over the same number of docs."""
        keys = (PER_DOC_NLL, PER_DOC_TOKENS) if self.metric == "perplexity" else (self.metric,)
        return all(k in self.per_doc and k in other.per_doc and len(self.per_doc[k]) == len(other.per_doc[k])
                   == self.n == other.n for k in keys) and self.n > 1


@dataclass
class TaskComparison:
    """A task before and after editing. `drop` is base - now for accuracies, and the relative increase
    now/base - 1 for perplexity; both are compared with the policy's `max_drop`.

    `stderr` is the paired standard error of the drop when both results hold per-doc outcomes
    (`paired`), else the independent-samples one; `stderr_unpaired` is always the latter (None for
    perplexity). `lost` and `gained` count the docs an accuracy task got right before and wrong now,
    and the reverse (None when unpaired or for perplexity)."""

    task: str
    metric: str
    base: float
    now: float
    drop: float
    stderr: float | None  # of the difference: paired when `paired`, else sqrt(se_base^2 + se_now^2)
    within_noise: bool  # drop <= 2 standard errors of the difference
    failed: bool  # drop > max_drop (or the figure is no longer a number)
    paired: bool = False
    stderr_unpaired: float | None = None
    n: int | None = None  # docs compared
    lost: int | None = None
    gained: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_stderr(p: float, n: int) -> float:
    """lm-evaluation-harness's standard error of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1))."""
    if n < 2:
        return math.nan
    return math.sqrt(p * (1 - p) / (n - 1))


def paired_stderr(base: list[float], now: list[float]) -> float:
    """Standard error of mean(base_i - now_i): the sample standard deviation of the differences over
    sqrt(n). NaN below two docs or when an outcome is not a number."""
    n = len(base)
    if n != len(now):
        raise ValueError(f"paired outcomes differ in length: {n} and {len(now)}")
    diffs = [b - a for b, a in zip(base, now)]
    if n < 2 or not all(math.isfinite(d) for d in diffs):
        return math.nan
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def perplexity_change(base_nll: list[float], now_nll: list[float], tokens: list[float]) -> tuple[float, float]:
    """The relative perplexity increase now/base - 1 over the same docs and its paired standard error
    (ratio estimator of the per-token log-perplexity change, then the delta method; module docstring)."""
    n, total = len(tokens), sum(tokens)
    x = [a - b for b, a in zip(base_nll, now_nll)]
    if n < 2 or total <= 0 or not all(math.isfinite(v) for v in x):
        return math.nan, math.nan
    change = sum(x) / total
    if change > 700:  # exp overflows: a collapsed model
        return math.inf, math.nan
    spread = math.sqrt(n / (n - 1) * sum((xi - change * ti) ** 2 for xi, ti in zip(x, tokens))) / total
    return math.exp(change) - 1, math.exp(change) * spread


def compare(base: dict[str, TaskResult], now: dict[str, TaskResult], max_drop: float) -> list[TaskComparison]:
    """Each task's drop from the baseline; `failed` when it exceeds `max_drop`, `within_noise` when it is
    no larger than two standard errors of the difference (paired where both sides hold per-doc
    outcomes). Both dicts must hold the same tasks."""
    if set(base) != set(now):
        raise ValueError(f"baseline tasks {sorted(base)} differ from current tasks {sorted(now)}")
    return [_compare_task(b, now[name], max_drop) for name, b in base.items()]


def _compare_task(b: TaskResult, n: TaskResult, max_drop: float) -> TaskComparison:
    if b.metric != n.metric:
        raise ValueError(f"task {b.name}: baseline metric {b.metric} differs from {n.metric}")
    paired = b.paired_with(n)
    unpaired = None
    if b.stderr is not None and n.stderr is not None and math.isfinite(b.stderr) and math.isfinite(n.stderr):
        unpaired = math.sqrt(b.stderr ** 2 + n.stderr ** 2)
    lost = gained = None
    if b.higher_is_better:
        drop, se = b.value - n.value, unpaired
        if paired:
            before, after = b.per_doc[b.metric], n.per_doc[b.metric]
            se = paired_stderr(before, after)
            lost = sum(1 for x, y in zip(before, after) if x > y)
            gained = sum(1 for x, y in zip(before, after) if x < y)
    else:
        drop = n.value / b.value - 1 if b.value > 0 else math.inf
        se = None
        if paired:
            # the paired figure replaces the ratio of the two token-weighted perplexities only in its
            # standard error: both are exp(D) - 1 over the same tokens, equal up to rounding
            _, se = perplexity_change(b.per_doc[PER_DOC_NLL], n.per_doc[PER_DOC_NLL], b.per_doc[PER_DOC_TOKENS])
    if se is not None and not math.isfinite(se):
        se = None
    broken = not math.isfinite(n.value) or math.isnan(drop)
    within_noise = se is not None and not broken and drop <= 2 * se + 1e-12
    failed = broken or drop > max_drop + 1e-9  # 0.90 - 0.85 is 0.05000000000000004, not a failure
    return TaskComparison(b.name, b.metric, b.value, n.value, drop, se, within_noise, failed,
                          paired=paired and se is not None, stderr_unpaired=unpaired, n=n.n if paired else None,
                          lost=lost, gained=gained)
