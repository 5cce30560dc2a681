"""`report.md`: what a reviewer reads in ten seconds. Verdict first, then the culprit with its manifest
file:line (and a link to the line when the repository's address and commit are known), which edits the
change adds (with --base-ref), then the edits table and the perplexity curve (a Mermaid chart, which
GitHub renders)."""

from __future__ import annotations

import re
from typing import Any

from editgate.safetext import printable
from editgate.vcs import source_link

ICONS = {"passed": "✅", "failed": "❌", "invalid": "⚠️", "error": "💥", "interrupted": "⏹️"}
STATUS = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail", "collapse": "💥 collapse",
          "unchecked": "… unchecked", "not-run": "— not run"}
MAX_BYTES = 1_000_000
NEW = "🆕"
TREND = " 📈"  # the trend warning fired at this check (editgate/trend.py)


def _code(value: Any, table: bool = False) -> str:
    """Inline code that repository text cannot break out of: its own backticks need a longer fence,
    line breaks are escaped, and inside a table a `|` would end the cell."""
    text = printable(value)
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain(value: Any, table: bool = False) -> str:
    """Repository text in a Markdown line: one line, no HTML (a comment would hide the rest), no cell break."""
    text = printable(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|") if table else text


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "—" if x is None or isinstance(x, str) else f"{100 * x:.0f}%"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"## {ICONS.get(doc['verdict'], '')} editgate: {doc['verdict']}", ""]
    lines += [f"- {_plain(reason)}" for reason in doc.get("reasons") or []]
    culprit = doc.get("culprit")
    if culprit:
        link = source_link(doc.get("repository"), culprit["file"], culprit["line"])
        new = next((e.get("new") for e in doc.get("edits") or [] if e.get("id") == culprit["id"]), None)
        where = _code(f"{culprit['file']}:{culprit['line']}")
        lines += ["", f"**Culprit:** {_code(culprit['id'])} at {where} "
                      + (f"([source]({link})) " if link else "")
                      + f"({culprit['status']}, perplexity x{_fmt(culprit['ratio'])})"
                      + (", new in this change" if new else "")]
    if doc.get("error") and not doc.get("edits"):
        return "\n".join(lines) + "\n"
    lines += ["", *_summary(doc), *_new_edits(doc), *_warnings(doc), "", *_edits_table(doc), *_not_said(doc),
              *_left_out(doc), "", *_curve(doc), *_benchmarks(doc), *_confirmation(doc)]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_BYTES:
        text = text.encode()[: MAX_BYTES - 200].decode(errors="ignore")
        text += "\n\n… report cut at 1 MB; report.json has every figure.\n"
    return text


def _warnings(doc: dict[str, Any]) -> list[str]:
    warnings = doc.get("warnings") or []
    out = ["", "**Warnings:**", *[f"- {_plain(w)}" for w in warnings[:50]]] if warnings else []
    if len(warnings) > 50:
        out.append(f"- … and {len(warnings) - 50} more in report.json")
    if doc.get("cached"):
        out += ["", f"Baseline from the cache: {', '.join(doc['cached'])} (not measured again)."]
    if restored := doc.get("restored"):
        whole = restored["edits"] == len(doc.get("edits") or [])
        rest = ("the whole sequence and its final checkpoint" if whole
                else f"the first {restored['edits']} edits; only the rest were applied and checked in this run")
        out += ["", f"Incremental run: started from the stored state after {rest} (their figures and "
                    "timings are the run that stored it)."]
    return out


def _benchmarks(doc: dict[str, Any]) -> list[str]:
    bench = doc.get("benchmarks") or {}
    points = bench.get("checkpoints") or []
    if not any(p.get("benchmarks") for p in points):
        return []
    out = ["", "Benchmarks before and after (drop ± its standard error, paired: over the same docs, unless marked):",
           "", "| after edits | task | metric | before | after | drop | verdict |", "|---|---|---|---|---|---|---|"]
    for point in points:
        for c in point.get("benchmarks", []):
            noise = " (within noise)" if c["failed"] and c["within_noise"] else ""
            verdict = ("❌ fail" if c["failed"] else "✅ pass") + noise
            out.append(f"| {point['edits']} | {_plain(c['task'], True)} | {c['metric']} | {_fmt(c['base'])} "
                       f"| {_fmt(c['now'])} | {_drop(c)} | {verdict} |")
    return out


def _drop(c: dict[str, Any]) -> str:
    """The drop, with its standard error and, where it is not paired (older reports, lm-eval), a mark."""
    if c.get("stderr") is None:
        return _fmt(c["drop"])
    return f"{_fmt(c['drop'])} ± {_fmt(c['stderr'])}" + ("" if c.get("paired") else " (unpaired)")


def _confirmation(doc: dict[str, Any]) -> list[str]:
    c = doc.get("confirmation")
    if not c:
        return []
    rest = "passes" if c["rest_passes"] else "still fails"
    return ["", f"**Confirmation:** without {_code(c['without'])} the rest of the sequence {rest} "
                f"(worst perplexity x{_fmt(c['worst_ratio'])})."]


def _summary(doc: dict[str, Any]) -> list[str]:
    base = doc.get("baseline") or {}
    policy = (doc.get("policy") or {}).get("perplexity", {})
    metrics = doc.get("edit_metrics") or {}
    env = doc.get("environment") or {}
    out = [
        f"Model {_code(env.get('model'))} ({env.get('dtype')} on {env.get('device')}), "
        f"{len(doc.get('edits', []))} edits, baseline perplexity {_fmt(base.get('perplexity'))} "
        f"on {base.get('texts')} texts / {base.get('tokens')} tokens of {_code(policy.get('corpus'))}; "
        f"thresholds warn x{policy.get('warn_ratio')}, fail x{policy.get('fail_ratio')}, "
        f"collapse x{policy.get('collapse_ratio')}.",
    ]
    if metrics:
        out.append(f"Edit metrics, as the model generates: efficacy {_pct(metrics.get('efficacy'))}, "
                   f"generalization {_pct(metrics.get('generalization'))}, locality {_pct(metrics.get('locality'))} "
                   f"(teacher-forced: {_pct(metrics.get('efficacy_tf'))}, {_pct(metrics.get('generalization_tf'))}, "
                   f"{_pct(metrics.get('locality_tf'))}; CounterFact: efficacy {_pct(metrics.get('efficacy_cf'))}, "
                   f"generalization {_pct(metrics.get('generalization_cf'))}). _{metrics.get('definition', '')}_")
    return out


MAX_LISTED_NEW = 20


def _new_edits(doc: dict[str, Any]) -> list[str]:
    """With --base-ref: which edits this change adds (by content; moved or reformatted ones are not new)."""
    base = doc.get("base_ref")
    if not base:
        return []
    new = [e for e in doc.get("edits", []) if e.get("new")]
    head = (f"**New in this change** (compared with {_code(base['ref'])} at {base['commit'][:12]}): "
            f"{len(new)} of {len(doc.get('edits', []))} edits")
    if not new:
        return ["", head + "."]
    listed = ", ".join(f"{_code(e['id'])} ({STATUS.get(e['status'], e['status'])})" for e in new[:MAX_LISTED_NEW])
    more = f", and {len(new) - MAX_LISTED_NEW} more" if len(new) > MAX_LISTED_NEW else ""
    return ["", f"{head}: {listed}{more}. Marked {NEW} below."]


def _edits_table(doc: dict[str, Any]) -> list[str]:
    out = ["| # | edit | where | method | status | perplexity | ratio | Δ ratio | efficacy | general. "
           "| locality (after its edit, if other) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(doc.get("edits", []), 1):
        m = e.get("metrics") or {}
        mark = f"{NEW} " if e.get("new") else ""
        where = _code(f"{e['file']}:{e['line']}", table=True)
        out.append(f"| {i} | {mark}{_code(e['id'], table=True)} | {where} | {e['method']} "
                   f"| {STATUS.get(e['status'], e['status'])}{TREND if (e.get('trend') or {}).get('fired') else ''} "
                   f"| {_fmt(e['perplexity'])} | {_ratio_cell(e)} | {_fmt(e['ratio_change'], 4)} "
                   f"| {_pct(m.get('efficacy'))} | {_pct(m.get('generalization'))} | {_locality_cell(e)} |")
    fired = [e for e in doc.get("edits", []) if (e.get("trend") or {}).get("fired")]
    if fired:
        horizon = ((doc.get("policy") or {}).get("perplexity") or {}).get("trend_horizon")
        out += ["", f"{TREND.strip()}: the perplexity increments accelerate and fail_ratio is projected within "
                    f"{horizon} edits (policy `perplexity.trend_horizon`) after {len(fired)} check(s); first after "
                    f"{_code(fired[0]['id'])}, {fired[0]['trend']['edits_left']:.1f} edit(s) left. A warning: "
                    "it never fails the gate."]
    early = [e for e in doc.get("edits", []) if (e.get("check") or {}).get("stopped_early")]
    if early:
        out += ["", f"≈: {len(early)} check(s) stopped once part of the sample settled the status "
                    "(estimate, range of ±4 standard errors; policy `perplexity.early_stop`)."]
    return out


MAX_LISTED_NOT_SAID = 20


def _not_said(doc: dict[str, Any]) -> list[str]:
    """Edits whose prompt the edited model does not continue with the target: what it said instead."""
    missed = [e for e in doc.get("edits", []) if _below_one((e.get("metrics") or {}).get("efficacy"))]
    if not missed:
        return []
    out = ["", f"**Not said by the edited model** ({len(missed)} edit(s)): the prompt, the target, and what the "
               "model generated instead (greedy)."]
    for e in missed[:MAX_LISTED_NOT_SAID]:
        said = (e["metrics"].get("generated") or "").strip()
        out.append(f"- {_code(e['id'])}: {_code(e['prompt'])} → expected {_code(e['target'])}, "
                   f"generated {_code(said) if said else '(nothing)'}")
    if len(missed) > MAX_LISTED_NOT_SAID:
        out.append(f"- and {len(missed) - MAX_LISTED_NOT_SAID} more (report.json has every edit)")
    return out


def _below_one(value: Any) -> bool:
    return isinstance(value, (int, float)) and value < 1.0


def _locality_cell(e: dict[str, Any]) -> str:
    """Locality at the end, and right after the edit when that differs (bleed from later edits)."""
    end, after = (e.get("metrics") or {}).get("locality"), e.get("locality_after_edit")
    return _pct(end) if after is None or after == end else f"{_pct(end)} ({_pct(after)})"


def _left_out(doc: dict[str, Any]) -> list[str]:
    """What the end-of-run figures leave out because another edit changes it on purpose."""
    items = [(e, reason) for e in doc.get("edits", []) for reason in (e.get("metrics") or {}).get("left_out") or []]
    if not items:
        return []
    out = ["", f"**Left out of the edit metrics** ({len(items)}): answers another edit of this run changes on "
               "purpose, so a changed answer there is not bleed."]
    out += [f"- {_code(e['id'])}: {_plain(reason)}" for e, reason in items[:MAX_LISTED_NOT_SAID]]
    if len(items) > MAX_LISTED_NOT_SAID:
        out.append(f"- and {len(items) - MAX_LISTED_NOT_SAID} more (report.json has every edit)")
    return out


def _ratio_cell(e: dict[str, Any]) -> str:
    """The ratio; an early-stopped check shows its estimate, range and how many texts decided it."""
    check = e.get("check") or {}
    if not check.get("stopped_early") or not check.get("interval"):
        return _fmt(e["ratio"])
    low, high = check["interval"]
    return f"≈{_fmt(e['ratio'])} ({_fmt(low)}–{_fmt(high)}, {check['texts']}/{check['of']} texts)"


def _curve(doc: dict[str, Any]) -> list[str]:
    points = [(i, e["perplexity"]) for i, e in enumerate(doc.get("edits", []), 1)
              if isinstance(e.get("perplexity"), float)]
    base = (doc.get("baseline") or {}).get("perplexity")
    if not points or not isinstance(base, float):
        return []
    values = [base] + [p for _, p in points]
    labels = ["base"] + [str(i) for i, _ in points]
    return ["Perplexity after each edit:", "", "```mermaid", "xychart-beta",
            '  x-axis "edit" [' + ", ".join(f'"{label}"' for label in labels) + "]",
            '  y-axis "perplexity"', "  line [" + ", ".join(f"{v:.3f}" for v in values) + "]", "```"]
