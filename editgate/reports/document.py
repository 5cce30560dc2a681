"""The report document: one JSON-serialisable dict with every figure of a run.

Schema version 1, described by `editgate/schema/report.schema.json`. Top-level keys: schema_version,
created, verdict (passed | failed | invalid | error | interrupted), exit_code, reasons, problems (invalid input,
located), culprit, stopped_early, policy, baseline, edits (one record per edit, in order, each with
`new` relative to --base-ref or null), checks (one per perplexity check and per policy threshold),
edit_metrics, timings, environment, repository (git address, commit, path; null outside git),
base_ref (null without --base-ref), artifacts (what --save-model/--save-delta wrote), error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

SCHEMA_VERSION = 1


def _number(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: write them as strings so any parser reads the report."""
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _edit_record(record, new: bool | None = None) -> dict[str, Any]:
    edit = record.edit
    return {
        "id": edit.id, "file": edit.source, "line": edit.line, "new": new, "method": record.method,
        "subject": edit.subject, "prompt": edit.text, "target": edit.target, "ground_truth": edit.ground_truth,
        "status": record.status, "perplexity": _number(record.perplexity), "ratio": _number(record.ratio),
        "ratio_change": _number(record.ratio_change),
        "metrics": record.scores.to_dict() if record.scores else None,
        "locality_after_edit": _number(record.locality_after_edit),
        "method_info": _clean(record.method_info),
        "risk": list(record.risk),
        "found_by_bisection": record.found_by_bisection,
        "seconds": {"edit": record.edit_seconds, "check": record.check_seconds},
        "check": _check(record.check),
        "trend": _clean(record.trend),
    }


def _check(check) -> dict[str, Any] | None:
    if check is None:
        return None
    interval = [_number(x) for x in check.interval] if check.interval else None
    return {"texts": check.texts, "of": check.total_texts, "stopped_early": check.stopped_early,
            "interval": interval, "from_layer": check.from_layer}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def build_document(result, policy, exit_code: int, *, new: dict[str, bool] | None = None,
                   repository: dict[str, Any] | None = None, base_ref: dict[str, Any] | None = None,
                   artifacts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run that reached a verdict.

    `new` maps edit ids to whether they are new relative to `--base-ref` (None: no base ref).
    """
    culprit = result.culprit
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": _now(),
        "verdict": result.verdict,
        "exit_code": exit_code,
        "reasons": result.reasons,
        "problems": [],
        "culprit": None if culprit is None else {
            "id": culprit.edit.id, "file": culprit.edit.source, "line": culprit.edit.line,
            "status": culprit.status, "ratio": _number(culprit.ratio)},
        "stopped_early": result.stopped_early,
        "policy": _policy(policy),
        "baseline": _baseline(result.baseline),
        "edits": _edits(result.records, new),
        "edit_metrics": _clean(result.scores_summary),
        "warnings": list(result.warnings),
        "benchmarks": {"baseline": _clean(result.baseline_benchmarks),
                       "checkpoints": [_clean(dataclasses.asdict(c)) for c in result.checkpoints]},
        "cached": list(result.cached),
        "confirmation": _clean(result.confirmation),
        "restored": result.restored,
        "timings": result.timings,
        "environment": result.environment,
        "repository": repository,
        "base_ref": base_ref,
        "artifacts": artifacts or {},
        "error": None,
    }
    document["checks"] = checks_of(document)
    return document


def _policy(policy) -> dict[str, Any]:
    return {"source": policy.source, **_clean(dataclasses.asdict(policy))}


def _edits(records, new: dict[str, bool] | None) -> list[dict[str, Any]]:
    return [_edit_record(r, None if new is None else new.get(r.edit.id)) for r in records]


def _baseline(baseline) -> dict[str, Any] | None:
    if baseline is None:
        return None
    return {"perplexity": _number(baseline.token_perplexity),
            "mean_text_perplexity": _number(baseline.mean_text_perplexity),
            "tokens": baseline.tokens, "texts": len(baseline.text_tokens)}


def partial_document(gate, new: dict[str, bool] | None = None) -> dict[str, Any]:
    """What a gate had measured before the run failed or was interrupted, in a complete run's shapes
    (for `error_document`'s `partial`)."""
    return {"edits": _edits(gate.records, new), "policy": _policy(gate.policy),
            "baseline": _baseline(gate.baseline), "timings": gate.timings}


def error_document(verdict: str, exit_code: int, message: str, problems: list | None = None,
                   partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run that stopped before a verdict: invalid input (2) or a failed run (3).

    `problems` are the input problems (editgate.errors.Problem, or plain strings); located ones are
    kept with their file and line too, for CI annotations.
    """
    problems = problems or []
    document = {
        "schema_version": SCHEMA_VERSION, "created": _now(), "verdict": verdict, "exit_code": exit_code,
        "reasons": [str(p) for p in problems] or [message],
        "problems": [_problem(p) for p in problems],
        "culprit": None, "stopped_early": True, "policy": None,
        "baseline": None, "edits": [], "checks": [], "edit_metrics": None, "warnings": [],
        "benchmarks": None, "cached": [], "confirmation": None, "timings": {}, "environment": {},
        "repository": None, "base_ref": None, "artifacts": {}, "error": message,
    }
    if partial:
        document.update(partial)
        document["checks"] = checks_of(document)
    return document


def _problem(problem) -> dict[str, Any]:
    if isinstance(problem, str):
        return {"file": None, "line": None, "message": problem}
    return {"file": problem.file, "line": problem.line, "message": problem.message}


# --- checks ---------------------------------------------------------------------------------------

METRIC_MINIMUMS = (("efficacy", "min_efficacy"), ("generalization", "min_generalization"),
                   ("locality", "min_locality"))


def _fmt_num(x: Any) -> str:
    return x if isinstance(x, str) else f"{x:.3f}"


def checks_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per check the verdict rests on: every perplexity check (after the edit it followed)
    against the policy's ratios, and every edit-metric minimum; and the trend warning where it fired.
    Derived from the document alone, so a saved report can be rendered (e.g. as JUnit) the same way."""
    policy = document.get("policy") or {}
    pp = policy.get("perplexity") or {}
    out: list[dict[str, Any]] = []
    for index, edit in enumerate(document.get("edits") or [], 1):
        if edit.get("ratio") is None or edit.get("status") not in ("pass", "warn", "fail", "collapse"):
            continue
        ratio = edit["ratio"]
        status = edit["status"]
        shown = ratio if isinstance(ratio, str) else f"x{ratio:.4f}"
        limit = {"collapse": ("collapse_ratio", pp.get("collapse_ratio")), "fail": ("fail_ratio", pp.get("fail_ratio")),
                 "warn": ("warn_ratio", pp.get("warn_ratio"))}.get(status)
        message = (f"perplexity {shown} of the base model after edit {index} '{edit['id']}'"
                   + (f", over {limit[0]} {limit[1]}" if limit and not isinstance(ratio, str) else "")
                   + (" (not finite: the model collapsed)" if isinstance(ratio, str) else ""))
        out.append({"name": f"perplexity after {edit['id']}", "kind": "perplexity", "edit": edit["id"],
                    "value": ratio, "threshold": pp.get("fail_ratio"), "status": status, "message": message})
    out += _trend_check(document.get("edits") or [], pp)
    for point in (document.get("benchmarks") or {}).get("checkpoints", []):
        for c in point.get("benchmarks", []):
            status = "fail" if c["failed"] else "pass"
            noise = ", within two standard errors of noise" if c["within_noise"] and c["failed"] else ""
            out.append({"name": f"benchmark {c['task']} after {point['edits']} edits", "kind": "benchmark",
                        "edit": None, "value": c["now"], "threshold": (policy.get("benchmarks") or {}).get("max_drop"),
                        "status": status, "message": f"{c['metric']} {_fmt_num(c['base'])} -> {_fmt_num(c['now'])} "
                                                     f"(drop {_fmt_num(c['drop'])}){noise}"})
    metrics = document.get("edit_metrics") or {}
    minimums = policy.get("edits") or {}
    for key, policy_key in METRIC_MINIMUMS:
        if policy_key not in minimums:
            continue
        value, minimum = metrics.get(key), minimums[policy_key]
        if value is None or isinstance(value, str):
            status, message = "skipped", f"{key}: not measured (no edit has what it needs, or the run stopped early)"
        elif value < minimum:
            status, message = "fail", f"{key} {value:.3f} is below the policy's {policy_key} {minimum}"
        else:
            status, message = "pass", f"{key} {value:.3f} >= {policy_key} {minimum}"
        out.append({"name": f"{key} >= {minimum}", "kind": "edit_metric", "edit": None, "value": value,
                    "threshold": minimum, "status": status, "message": message})
    return out


def _trend_check(edits: list[dict[str, Any]], pp: dict[str, Any]) -> list[dict[str, Any]]:
    """The trend warning as one check (status warn, never fail) where it fired: the first edit it fired at."""
    fired = [e for e in edits if (e.get("trend") or {}).get("fired")]
    if not fired:
        return []
    first = fired[0]
    left = first["trend"]["edits_left"]
    message = (f"perplexity increments accelerate from edit '{first['id']}' ({first['file']}:{first['line']}): "
               f"fail_ratio {pp.get('fail_ratio')} projected in {left:.1f} edit(s), within trend_horizon "
               f"{pp.get('trend_horizon')}; a warning, not a failure")
    return [{"name": "perplexity trend", "kind": "trend", "edit": first["id"], "value": left,
             "threshold": pp.get("trend_horizon"), "status": "warn", "message": message}]
