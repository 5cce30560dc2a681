"""The trend warning's rule (editgate/trend.py) on synthetic perplexity-ratio sequences with fixed seeds:
silent on flat and linearly drifting curves with check noise and on single jumps, warning ahead of an
accelerating run-up to fail_ratio. Pure Python, no model."""

from __future__ import annotations

import math
import random

import pytest

from editgate.trend import NOISE, RECENT, MIN_EARLIER, assess, assess_each, standard_error

FAIL, HORIZON = 1.5, 10
SEEDS = range(40)


def curve(y, edits: int, noise: float, seed: int, every: int = 1) -> list[tuple[int, float]]:
    """Checks (edit, ratio) of log ratio y(edit) with Gaussian check noise of `noise` (log scale)."""
    rng = random.Random(seed)
    return [(n, math.exp(y(n) + rng.gauss(0, noise))) for n in range(every, edits + 1, every)]


def fired(points, fail: float = FAIL, horizon: int = HORIZON) -> list[int]:
    """The edits after which the warning fired."""
    return [points[i][0] for i, t in enumerate(assess_each(points, fail, horizon)) if t and t.fired]


def crossing(points, fail: float = FAIL) -> int | None:
    return next((n for n, r in points if r > fail), None)


@pytest.mark.parametrize("noise", [0.002, NOISE])
def test_flat_noisy_curves_stay_silent(noise):
    for seed in SEEDS:
        points = curve(lambda n: 0.0, 120, noise, seed)
        trends = assess_each(points, FAIL, HORIZON)
        assert not any(t and t.accelerating for t in trends), seed
        assert not fired(points), seed


def test_flat_curve_just_under_fail_ratio_stays_silent():
    """Close to fail_ratio any projected rise would be within the horizon: only acceleration may fire."""
    for seed in SEEDS:
        assert not fired(curve(lambda n: math.log(1.45) * min(n, 10) / 10, 100, NOISE, seed)), seed


def test_slow_linear_drift_stays_silent():
    """x1.105 after 100 edits (ROME's pace on the embedded model), noisy: never near fail in the horizon."""
    for seed in SEEDS:
        points = curve(lambda n: 0.001 * n, 100, NOISE, seed)
        trends = assess_each(points, FAIL, HORIZON)
        assert not fired(points), seed
        last = trends[-1]
        assert not last.accelerating and (last.edits_left is None or last.edits_left > 30), seed


def test_linear_drift_that_reaches_fail_is_not_called_accelerating():
    """A steady rise to fail_ratio: the warn and fail thresholds speak for it, the trend does not."""
    for seed in SEEDS:
        points = curve(lambda n: 0.006 * n, 80, NOISE, seed)
        assert not fired(points), seed
        assert crossing(points) is not None


def test_edit_to_edit_variation_without_a_trend_stays_silent():
    """Edits that move perplexity unevenly (independent increments, a random walk with a drift) raise the
    bar through the increments' own scatter."""
    for seed in SEEDS:
        rng = random.Random(seed)
        level, points = 0.0, []
        for n in range(1, 101):
            level += 0.001 + rng.gauss(0, NOISE)
            points.append((n, math.exp(level)))
        assert not fired(points), seed


@pytest.mark.parametrize("jump_at", [15, 30, 50])
def test_a_single_jump_stays_silent(jump_at):
    """One bad edit is a step, not a trend (the thresholds judge the step itself), even near fail_ratio."""
    for size in (0.1, 0.3):
        for seed in SEEDS:
            points = curve(lambda n, size=size: 0.001 * n + (size if n >= jump_at else 0.0), 80, NOISE, seed)
            assert not fired(points), (size, seed)


def test_an_accelerating_curve_warns_before_it_fails():
    """Gradual, then catastrophic: increments growing by 10% per edit. The warning comes several edits
    before fail_ratio is crossed, and its projection is of the right size."""
    for seed in SEEDS:
        points = curve(lambda n: 0.001 * n + 0.01 * (math.exp(n / 10) - 1), 80, 0.003, seed)
        cross = crossing(points)
        first = fired(points)
        assert first and first[0] < cross, seed
        lead = cross - first[0]
        assert lead >= 3, (seed, lead)
        trend = assess([p for p in points if p[0] <= first[0]], FAIL, HORIZON)
        assert trend.accelerating and 0 < trend.edits_left <= HORIZON
        assert abs(trend.edits_left - lead) <= 3, (seed, trend.edits_left, lead)


def test_a_fast_run_up_warns_too():
    for seed in SEEDS:
        points = curve(lambda n: 0.01 * (math.exp(n / 5) - 1), 40, NOISE, seed)
        first = fired(points)
        assert first and crossing(points) - first[0] >= 2, seed


def test_sparse_checks_are_increments_per_edit():
    """check_every: 3: the same run-up, seen every third edit, still warns before the crossing."""
    for seed in SEEDS:
        points = curve(lambda n: 0.001 * n + 0.01 * (math.exp(n / 15) - 1), 150, 0.003, seed, every=3)
        first = fired(points)
        assert first and crossing(points) - first[0] >= 3, seed


def test_falling_and_negative_increments_stay_silent():
    """Edits can lower perplexity; a falling curve is projected never to reach fail_ratio."""
    points = curve(lambda n: -0.002 * n, 60, NOISE, 0)
    last = assess(points, FAIL, HORIZON)
    assert not last.accelerating and last.edits_left is None and not last.fired


def test_too_few_checks_decide_nothing():
    points = curve(lambda n: 0.05 * n * n, 30, 0.0, 0)
    trends = assess_each(points, 100.0, HORIZON)
    needed = RECENT + MIN_EARLIER
    assert all(t is None for t in trends[: needed - 1]) and trends[needed - 1] is not None


def test_past_fail_ratio_it_does_not_fire():
    """Over fail_ratio the gate has failed; the trend has nothing left to warn about."""
    points = curve(lambda n: 0.001 * n + 0.01 * (math.exp(n / 5) - 1), 40, 0.0, 0)
    last = assess(points, FAIL, HORIZON)
    assert last.accelerating and last.edits_left == 0.0 and not last.fired


def test_a_collapse_or_an_unordered_sequence():
    assert assess([(n, 1.0) for n in range(1, 20)] + [(20, math.inf)], FAIL, HORIZON) is None
    assert assess([(n, 1.0) for n in range(1, 20)] + [(21, math.nan)], FAIL, HORIZON) is None
    with pytest.raises(ValueError, match="edit order"):
        assess([(2, 1.0), (1, 1.0)], FAIL, HORIZON)


def test_an_early_stopped_checks_own_uncertainty_raises_the_bar():
    """A check that stopped early carries its interval (estimate ± 4 standard errors): wide intervals make
    the same curve too uncertain to call."""
    points = curve(lambda n: 0.001 * n + 0.01 * (math.exp(n / 10) - 1), 80, 0.0, 0)
    assert fired(points)
    wide = [(n, r, standard_error((r * 0.8, r * 1.25))) for n, r in points]
    assert not fired(wide)
    assert standard_error(None) is None and standard_error((1.0, math.inf)) is None
    assert standard_error((math.exp(-0.04), math.exp(0.04))) == pytest.approx(0.01)


def test_the_record_it_keeps():
    points = curve(lambda n: 0.001 * n + 0.01 * (math.exp(n / 10) - 1), 30, 0.0, 0)
    record = assess(points, FAIL, HORIZON).to_record()
    assert set(record) == {"edits_left", "accelerating", "fired"}
    assert record["accelerating"] is True and isinstance(record["edits_left"], float)
