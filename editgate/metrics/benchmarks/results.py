"""A benchmark task's figures and their comparison with a baseline; standard errors are
lm-evaluation-harness's sqrt(p(1-p)/(n-1))."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# figures where lower is better: compared as a relative increase (now / base - 1), not a difference
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})


@dataclass
class TaskResult:
    """One task's headline figure (`metric`, the first the task lists) and every other it computed."""

    name: str
    metric: str
    value: float
    stderr: float | None  # None where no standard error is defined (perplexity)
    n: int  # docs scored
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    stderrs: dict[str, float | None] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.metric.split(" (")[0] not in LOWER_IS_BETTER  # lm-eval labels: "metric (filter)"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskResult":
        return cls(**{k: data[k] for k in ("name", "metric", "value", "stderr", "n", "seconds")},
                   metrics=dict(data.get("metrics", {})), stderrs=dict(data.get("stderrs", {})))


@dataclass
class TaskComparison:
    """A task before and after editing. `drop` is base - now for accuracies, and the relative increase
    now/base - 1 for perplexity; both are compared with the policy's `max_drop`."""

    task: str
    metric: str
    base: float
    now: float
    drop: float
    stderr: float | None  # of the difference, sqrt(se_base^2 + se_now^2)
    within_noise: bool  # drop <= 2 standard errors of the difference
    failed: bool  # drop > max_drop (or the figure is no longer a number)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_stderr(p: float, n: int) -> float:
    """lm-evaluation-harness's standard error of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1))."""
    if n < 2:
        return math.nan
    return math.sqrt(p * (1 - p) / (n - 1))


def compare(base: dict[str, TaskResult], now: dict[str, TaskResult], max_drop: float) -> list[TaskComparison]:
    """Each task's drop from the baseline; `failed` when it exceeds `max_drop`, `within_noise` when it is
    no larger than two standard errors of the difference. Both dicts must hold the same tasks."""
    if set(base) != set(now):
        raise ValueError(f"baseline tasks {sorted(base)} differ from current tasks {sorted(now)}")
    out = []
    for name, b in base.items():
        n = now[name]
        if b.metric != n.metric:
            raise ValueError(f"task {name}: baseline metric {b.metric} differs from {n.metric}")
        if b.higher_is_better:
            drop = b.value - n.value
        else:
            drop = n.value / b.value - 1 if b.value > 0 else math.inf
        se = None
        if b.stderr is not None and n.stderr is not None and math.isfinite(b.stderr) and math.isfinite(n.stderr):
            se = math.sqrt(b.stderr ** 2 + n.stderr ** 2)
        broken = not math.isfinite(n.value) or math.isnan(drop)
        within_noise = se is not None and not broken and drop <= 2 * se + 1e-12
        failed = broken or drop > max_drop + 1e-9  # 0.90 - 0.85 is 0.05000000000000004, not a failure
        out.append(TaskComparison(name, b.metric, b.value, n.value, drop, se, within_noise, failed))
    return out
