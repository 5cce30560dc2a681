"""The trend warning: are the perplexity increments accelerating, and how many edits are left before
`fail_ratio`?

Sequential editing degrades a model gradually, then catastrophically: the per-edit perplexity
increments grow before the collapse ("The Butterfly Effect of Model Editing"). A ratio still under
`warn_ratio` or `fail_ratio` says little about what comes next; the shape of the curve does. This module
is pure (no torch), so it is tested on synthetic sequences, and the gate only feeds it the ratios it
checked.

The rule, after each check, on the checked points (edits applied, ratio) with (0, 1) in front, on the
log scale y = log(ratio):
- Increments per edit, g = Δy / Δedits between consecutive checks (so `check_every: N` works).
- Two windows: the last `RECENT` increments and up to `EARLIER` before them; nothing is decided before
  `RECENT + MIN_EARLIER` increments. Each window's rate is its mean increment with the largest and the
  smallest left out, so one jump (a single bad edit, which the thresholds judge on their own) never
  reads as a trend.
- The spread s of one increment: the larger of the earlier increments' scatter (1.4826 · MAD), so
  healthy edits that move perplexity unevenly raise the bar, and the checks' own noise,
  √(σ₁² + σ₂²) / Δedits (median over the windows), with σ a check's standard error of log ratio:
  `NOISE` (0.5%, the top of a check's ±0.2-0.5%) or an early-stopped check's own (its interval / 8)
  where larger.
- Accelerating: the recent rate is positive and exceeds the earlier one by more than `Z` standard errors,
  Z · s · √(1/kept_recent + 1/kept_earlier) (increments taken as independent: conservative for noise
  on the levels, whose increments partly cancel). A flat or linear curve, noisy or not, has equal rates
  and stays silent.
- Projection from the last check: the rate grows by a = (recent − earlier rate) / (distance between the
  windows' centres) per edit (0 when not accelerating); v is the recent rate carried forward to the last
  check, and edits left is the t with v·t + a·t²/2 = log(fail_ratio) − y. None when the curve is not
  rising (it never gets there); 0 when it is there already.
- Fired: accelerating, the last ratio at most `fail_ratio` (past it, the gate has failed anyway), and
  edits left at most the horizon (policy `perplexity.trend_horizon`).
Windows count checks, not edits: with `check_every: N` the first assessment comes after 12·N edits.
On synthetic sequences (tests/test_trend.py) it stays silent on flat and linear curves with 0.5% noise
per check and on single jumps, and warns 2-5 edits ahead of an exponential run-up to fail_ratio.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

RECENT = 6  # increments in the recent window
MIN_EARLIER = 6  # increments needed before it: the first assessment is after 12 checks
EARLIER = 18  # at most this many before it: the rate the sequence had lately, not at its start
NOISE = 0.005  # a check's standard error of log ratio, at least
# standard errors by which the recent rate must exceed the earlier one; with the horizon, no warning in 300
# simulated 120-edit runs of flat or linear curves with 0.5% noise per check
Z = 2.5
MAD_TO_SD = 1.4826  # a normal sample's standard deviation from its median absolute deviation


@dataclass(frozen=True)
class Trend:
    """The assessment after one check."""

    edits_left: float | None  # projected edits until fail_ratio; None: not projected to reach it
    accelerating: bool
    fired: bool
    rate: float  # recent per-edit increment of log(ratio)
    earlier_rate: float

    def to_record(self) -> dict[str, float | bool | None]:
        """What an edit's record keeps (report.json's `trend`)."""
        left = None if self.edits_left is None else round(self.edits_left, 3)
        return {"edits_left": left, "accelerating": self.accelerating, "fired": self.fired}


def standard_error(interval: Sequence[float] | None) -> float | None:
    """A check's standard error of log ratio from its early-stop interval (exp(estimate ± 4 se))."""
    if not interval:
        return None
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high < low:
        return None
    return (math.log(high) - math.log(low)) / 8


def assess(points: Sequence[tuple], fail_ratio: float, horizon: float) -> Trend | None:
    """The trend after the last of `points`: (edits applied, ratio) or (edits applied, ratio, standard
    error of log ratio or None), edits strictly increasing. None while there are too few checks, or when
    a ratio is not a positive finite number (a collapse: the thresholds have said it all)."""
    needed = RECENT + EARLIER
    checked: list[tuple[float, float, float]] = [(0, 0.0, 0.0)]  # the unedited model: ratio 1, exactly
    for point in points:
        edits, ratio = point[0], point[1]
        se = point[2] if len(point) > 2 else None
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            return None
        if edits <= checked[-1][0]:
            raise ValueError(f"checks must be in edit order: {edits} after {checked[-1][0]}")
        sigma = max(NOISE, se) if se is not None and math.isfinite(se) else NOISE
        checked.append((edits, math.log(ratio), sigma))
    checked = checked[-needed - 1:]  # only the two windows' points matter
    increments, noise, centres = [], [], []
    for (n0, y0, s0), (n1, y1, s1) in zip(checked, checked[1:]):
        increments.append((y1 - y0) / (n1 - n0))
        noise.append(math.hypot(s0, s1) / (n1 - n0))
        centres.append((n0 + n1) / 2)
    if len(increments) < RECENT + MIN_EARLIER:
        return None
    recent, earlier = increments[-RECENT:], increments[-needed:-RECENT]
    rate, earlier_rate = _rate(recent), _rate(earlier)
    middle = statistics.median(earlier)
    scatter = MAD_TO_SD * statistics.median(abs(g - middle) for g in earlier)
    spread = max(scatter, statistics.median(noise[-needed:]))
    se = spread * math.sqrt(1 / (len(recent) - 2) + 1 / (len(earlier) - 2))
    accelerating = rate > 0 and rate - earlier_rate > Z * se
    last_edits, last_y = checked[-1][0], checked[-1][1]
    growth, rate_now = 0.0, rate
    if accelerating:
        recent_centre = statistics.fmean(centres[-RECENT:])
        growth = (rate - earlier_rate) / (recent_centre - statistics.fmean(centres[-needed:-RECENT]))
        rate_now = rate + growth * (last_edits - recent_centre)
    distance = math.log(fail_ratio) - last_y
    edits_left = _edits_until(distance, rate_now, growth)
    fired = accelerating and distance >= 0 and edits_left is not None and edits_left <= horizon
    return Trend(edits_left, accelerating, fired, rate, earlier_rate)


def _rate(window: list[float]) -> float:
    """The window's mean increment with its largest and smallest left out: one jump moves it little."""
    return statistics.fmean(sorted(window)[1:-1])


def _edits_until(distance: float, rate: float, growth: float) -> float | None:
    """The t >= 0 at which rate·t + growth·t²/2 covers `distance` (None: never)."""
    if distance <= 0:
        return 0.0
    if growth > 0:
        return 2 * distance / (rate + math.sqrt(rate * rate + 2 * growth * distance))  # no cancellation
    return distance / rate if rate > 0 else None


def assess_each(points: Sequence[tuple], fail_ratio: float, horizon: float) -> list[Trend | None]:
    """The assessment after every check, as the gate makes it: each from the checks up to it."""
    return [assess(points[: i + 1], fail_ratio, horizon) for i in range(len(points))]
