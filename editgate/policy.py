"""The gate's policy: what counts as a healthy model after editing, and when the gate fails.

A policy is YAML in the user's repository (or one of the packaged `builtin:default|cpu|strict|lenient`).
Every key is optional; validation reports every problem with its line, so a typo in a threshold can
never silently fall back to a default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from editgate.corpora import check_corpus
from editgate.errors import InputError, Problem
from editgate.limits import MAX_BATCH_TOKENS, MAX_SEED, MAX_TEXTS, MAX_TOKENS
from editgate.yamlio import LineDict, describe, line_of, load_yaml, quote_hint, unknown_key

BUILTIN_POLICIES = ("default", "cpu", "strict", "lenient")
_PACKAGED = Path(__file__).resolve().parent / "policies"


@dataclass
class PerplexityPolicy:
    """The cheap check after edits: edited / base token-weighted perplexity on a fixed sample."""

    corpus: str = "builtin:wiki"
    samples: int = 200
    max_tokens: int = 256
    check_every: int = 1
    warn_ratio: float = 1.05  # README "Is the verdict right?": the study that set both
    fail_ratio: float = 1.10
    collapse_ratio: float = 10.0
    seed: int = 0
    batch_tokens: int = 2048
    early_stop: bool = True  # stop a check once part of the sample settles its status (metrics/check.py)
    prefix_cache: bool = True  # checks and checkpoints run only the blocks from the lowest edited one up (prefix.py)
    trend_warning: bool = True  # warn when the increments accelerate towards fail_ratio (trend.py); never fails
    trend_horizon: int = 10  # ... and fail_ratio is projected within this many edits


@dataclass
class BenchmarkPolicy:
    """The benchmark suite run at checkpoints; `run_at` is "end" or every N edits."""

    suite: str = "builtin:small"  # or "none" to skip the benchmark suite
    run_at: str | int = "end"
    max_drop: float = 0.05
    # a drop over max_drop yet within two standard errors: "warn" or "fail". Fail by default: the docs
    # are the same before and after, so the comparison is paired and tighter than its standard error.
    within_noise: str = "fail"


@dataclass
class EditPolicy:
    """Minimum fractions of edits that must succeed (CounterFact-style efficacy etc.)."""

    min_efficacy: float = 0.9
    min_generalization: float = 0.5
    min_locality: float = 0.9
    max_relative_update: float = 0.25  # risk: |dW| / |W| of one edit above this is flagged
    min_key_denominator: float = 0.1  # risk: k*^T C^-1 k* / key width below this is flagged ("Fall of ROME")


@dataclass
class Policy:
    perplexity: PerplexityPolicy = field(default_factory=PerplexityPolicy)
    benchmarks: BenchmarkPolicy = field(default_factory=BenchmarkPolicy)
    edits: EditPolicy = field(default_factory=EditPolicy)
    source: str = "builtin:default"


def builtin_policy_path(name: str) -> Path:
    """The packaged file behind `builtin:<name>` (raises KeyError for an unknown name)."""
    if name not in BUILTIN_POLICIES:
        raise KeyError(name)
    return _PACKAGED / f"{name}.yaml"


def load_policy(path: Path | str, shown_as: str | None = None, root: Path | None = None) -> Policy:
    """Load and validate a policy file or `builtin:<name>`; raise InputError listing every problem.

    With `root`, a corpus given as a file path must stay inside that repository.
    """
    policy, problems = load_policy_collecting(path, shown_as, root)
    if problems:
        raise InputError(problems)
    return policy


def load_policy_collecting(
    path: Path | str, shown_as: str | None = None, root: Path | None = None
) -> tuple[Policy, list[Problem]]:
    """Like load_policy, but returns the problems (with a best-effort Policy) instead of raising."""
    if isinstance(path, str) and path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTIN_POLICIES:
            message = unknown_key("builtin policy", name, BUILTIN_POLICIES)
            return Policy(source=path), [Problem(shown_as or "<policy>", None, message)]
        shown_as, path = shown_as or path, builtin_policy_path(name)
    shown = shown_as or str(path)
    try:
        data = load_yaml(Path(path), shown)
    except InputError as e:
        return Policy(source=shown), e.problems
    return parse_policy(data, shown, root)


def parse_policy(data: Any, shown_as: str, root: Path | None = None) -> tuple[Policy, list[Problem]]:
    """Validate already-loaded policy data; invalid values fall back to defaults, with a problem."""
    problems: list[Problem] = []
    policy = Policy(source=shown_as)
    if data is None:
        return policy, problems
    if not isinstance(data, dict):
        return policy, [Problem(shown_as, line_of(data), f"a policy must be a mapping, not {describe(data)}")]
    sections = {"perplexity": PerplexityPolicy, "benchmarks": BenchmarkPolicy, "edits": EditPolicy}
    for key, value in data.items():
        if key not in sections:
            problems.append(Problem(shown_as, line_of(data, key), unknown_key("section", key, sections)))
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(Problem(shown_as, line_of(data, key), f"{key}: must be a mapping, not {describe(value)}"))
            continue
        before = len(problems)
        section = _parse_section(key, value, sections[key], shown_as, problems)
        setattr(policy, key, section)
        if key == "perplexity" and len(problems) == before:  # compare only values the user wrote correctly
            _check_ordering(section, value, shown_as, problems)
    _check_corpus(policy.perplexity.corpus, data.get("perplexity"), shown_as, root, problems)
    return policy, problems


# --- value rules -------------------------------------------------------------------------------------

Rule = Callable[[Any], str | None]  # returns what is wrong, or None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(low: int, high: int) -> Rule:
    """A whole number in [low, high]: the upper bounds keep a pull request from exhausting the runner."""
    def rule(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            return f"must be a whole number from {low} to {high:,}"
        return None
    return rule


_EVERY = 1_000_000  # check_every / run_at: a period in edits; beyond any repository's length


def _ratio(v: Any) -> str | None:
    if not _is_number(v) or not math.isfinite(v) or v < 1:
        return "must be a number of at least 1 (edited / base perplexity)"
    return None


def _fraction(v: Any) -> str | None:
    if not _is_number(v) or not 0 <= v <= 1:
        return "must be a number between 0 and 1"
    return None


def _text(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "must be non-empty text"
    return None


def _noise(v: Any) -> str | None:
    return None if v in ("warn", "fail") else 'must be "warn" or "fail"'


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _positive_number(v: Any) -> str | None:
    if not _is_number(v) or not math.isfinite(v) or v <= 0:
        return "must be a number above 0"
    return None


def _run_at(v: Any) -> str | None:
    if v == "end":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _EVERY:
        return f"must be \"end\" or a whole number N from 1 to {_EVERY:,} (every N edits)"
    return None


_RULES: dict[str, Rule] = {
    "corpus": _text, "samples": _whole(1, MAX_TEXTS), "max_tokens": _whole(1, MAX_TOKENS),
    "check_every": _whole(1, _EVERY), "warn_ratio": _ratio, "fail_ratio": _ratio,
    "collapse_ratio": _ratio, "seed": _whole(0, MAX_SEED), "batch_tokens": _whole(1, MAX_BATCH_TOKENS),
    "early_stop": _boolean, "prefix_cache": _boolean, "trend_warning": _boolean,
    "trend_horizon": _whole(1, _EVERY),
    "suite": _text, "run_at": _run_at, "max_drop": _fraction,
    "min_efficacy": _fraction, "min_generalization": _fraction, "min_locality": _fraction,
    "within_noise": _noise, "max_relative_update": _positive_number, "min_key_denominator": _positive_number,
}


def _parse_section(name: str, data: dict, cls: type, shown_as: str, problems: list[Problem]) -> Any:
    allowed = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        line = line_of(data, key)
        if key not in allowed:
            problems.append(Problem(shown_as, line, f"{name}: {unknown_key('key', key, allowed)}"))
            continue
        wrong = _RULES[key](value)
        if wrong:
            hint = quote_hint(data, key, value) if _RULES[key] in (_text,) else ""
            problems.append(Problem(shown_as, line, f"{name}.{key} {wrong}, not {_shown(value)}{hint}"))
            continue
        values[key] = float(value) if _RULES[key] in (_ratio, _fraction, _positive_number) else value
    return cls(**values)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return describe(value)


def _check_ordering(pp: PerplexityPolicy, data: Any, shown_as: str, problems: list[Problem]) -> None:
    """warn <= fail <= collapse, or the gate's verdicts would contradict each other."""
    pairs = [("warn_ratio", "fail_ratio"), ("fail_ratio", "collapse_ratio")]
    for low, high in pairs:
        a, b = getattr(pp, low), getattr(pp, high)
        if a > b:
            line = line_of(data, low if isinstance(data, LineDict) and low in data else high)
            problems.append(Problem(
                shown_as, line, f"perplexity.{low} ({a:g}) must not exceed perplexity.{high} ({b:g})"
            ))


def _check_corpus(corpus: str, data: Any, shown_as: str, root: Path | None, problems: list[Problem]) -> None:
    """The corpus is read now, as the run will read it, so a broken one fails validation, not the run."""
    if root is None and not corpus.startswith("hf:"):
        return  # a policy file checked on its own: its corpus is relative to a repository not known here
    problems.extend(check_corpus(corpus, root, shown_as, line_of(data, "corpus")))
