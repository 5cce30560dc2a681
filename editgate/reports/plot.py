"""`perplexity.png`: perplexity after each edit against the policy's thresholds, the culprit in red.

matplotlib is optional (`pip install 'editgate[plot]'`) and imported only here, with the Agg backend,
so a run never needs a display and never fails for want of a plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MAX_TICK_LABELS = 20  # edit ids as tick labels up to this many points, else edit numbers


def can_plot(doc: dict[str, Any]) -> bool:
    base = (doc.get("baseline") or {}).get("perplexity")
    return isinstance(base, (int, float)) and math.isfinite(base) and base > 0


def plot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def render_plot(doc: dict[str, Any], path: Path) -> None:
    """Draw the curve into `path` (PNG). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    base = float(doc["baseline"]["perplexity"])
    pp = (doc.get("policy") or {}).get("perplexity") or {}
    culprit = (doc.get("culprit") or {}).get("id")
    edits = doc.get("edits") or []
    points, broken = [], []  # (index, id, perplexity) checked with a finite value / not finite
    for index, edit in enumerate(edits, 1):
        value = edit.get("perplexity")
        if isinstance(value, (int, float)) and math.isfinite(value):
            points.append((index, edit["id"], float(value), edit.get("status")))
        elif isinstance(value, str) or (isinstance(value, float) and not math.isfinite(value)):
            broken.append((index, edit["id"], str(value)))

    figure = Figure(figsize=(9, 4.8), dpi=110, layout="constrained")
    ax = figure.add_subplot()
    xs = [0] + [p[0] for p in points]
    ys = [base] + [p[2] for p in points]
    ax.plot(xs, ys, "-o" if len(xs) <= 200 else "-", color="#1f6feb", markersize=4, linewidth=1.6,
            label="perplexity after the edit", zorder=3)

    thresholds = [("collapse_ratio", "#6e40c9", ":"), ("fail_ratio", "#cf222e", "--"), ("warn_ratio", "#d4a72c", "--")]
    top_value = max(ys)
    for key, color, style in thresholds:
        ratio = pp.get(key)
        if not isinstance(ratio, (int, float)):
            continue
        level = base * ratio
        if key == "collapse_ratio" and level > 3 * top_value:
            continue  # far above the curve: drawing it would flatten everything else
        ax.axhline(level, color=color, linestyle=style, linewidth=1.2,
                   label=f"{key.removesuffix('_ratio')}: base x{ratio:g} = {_num(level)}", zorder=2)
        top_value = max(top_value, level)
    ax.axhline(base, color="#57606a", linewidth=1.0, label=f"baseline {_num(base)}", zorder=1)

    n = len(edits)
    last = max([p[0] for p in points] + [b[0] for b in broken] + [1])
    for index, edit_id, value, status in points:
        if edit_id == culprit or status in ("fail", "collapse"):
            ax.plot([index], [value], "o", color="#cf222e", markersize=11 if edit_id == culprit else 7,
                    zorder=4, label="culprit" if edit_id == culprit else None)
    if broken:  # NaN or infinite perplexity: a red cross above the curve, joined by a dotted line
        low = min(ys)
        top = top_value + 0.12 * (top_value - low) if top_value > low else top_value * 1.05
        for index, edit_id, value in broken:
            previous = max((p for p in points if p[0] < index), key=lambda p: p[0], default=None)
            start = (previous[0], previous[2]) if previous else (0, base)
            ax.plot([start[0], index], [start[1], top], ":", color="#cf222e", linewidth=1.2, zorder=3)
            ax.plot([index], [top], "x", color="#cf222e", markersize=12, markeredgewidth=3, zorder=4,
                    label="culprit" if edit_id == culprit else None)
            text = f"culprit: {edit_id}, perplexity {value}" if edit_id == culprit else f"{edit_id}: perplexity {value}"
            right_half = index > last / 2
            ax.annotate(text, (index, top), textcoords="offset points", xytext=(-12 if right_half else 12, -16),
                        ha="right" if right_half else "left", color="#cf222e",
                        fontsize=9, fontweight="bold" if edit_id == culprit else "normal")
        ax.set_ylim(top=top + 0.06 * (top - low))
    if culprit:
        match = next(((i, v) for i, e, v, _ in points if e == culprit), None)
        if match is not None:
            right_half = match[0] > last / 2
            ax.annotate(f"culprit: {culprit}", match, textcoords="offset points", xytext=(-10 if right_half else 10, 8),
                        ha="right" if right_half else "left", color="#cf222e", fontsize=9, fontweight="bold")

    ax.set_xlim(-0.3, last + 0.5)
    if n <= MAX_TICK_LABELS:
        ticks = list(range(0, n + 1))
        labels = ["base"] + [_short(e["id"]) for e in edits]
        ax.set_xticks(ticks, labels, rotation=35 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
        ax.set_xlabel("edit (in the order applied)")
    else:
        ax.set_xlabel("edit number (in the order applied; 0 = base model)")
    ax.set_ylabel("token-weighted perplexity")
    ratio_axis = ax.secondary_yaxis("right", functions=(lambda y: y / base, lambda r: r * base))
    ratio_axis.set_ylabel("ratio to the unedited model")
    ax.grid(True, axis="y", alpha=0.3)
    verdict = doc.get("verdict", "")
    model = str((doc.get("environment") or {}).get("model") or "model").rstrip("/")
    if not model.startswith(("builtin:", "hf:")) and "/" in model and Path(model).is_absolute():
        model = model.rsplit("/", 1)[-1]
    ax.set_title(f"editgate {verdict}: perplexity after each edit ({_short(model, 48)})", fontsize=11)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x >= 10 else f"{x:.3f}"


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
