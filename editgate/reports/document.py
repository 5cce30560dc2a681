"""The report document: one JSON-serialisable dict with every figure of a run.

Schema version 1. Top-level keys: schema_version, verdict (passed | failed | invalid | error), exit_code,
reasons, culprit, policy, baseline, edits (one record per edit, in order), edit_metrics, timings,
environment, error.
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


def _edit_record(record) -> dict[str, Any]:
    edit = record.edit
    return {
        "id": edit.id, "file": edit.source, "line": edit.line, "method": record.method,
        "subject": edit.subject, "prompt": edit.text, "target": edit.target, "ground_truth": edit.ground_truth,
        "status": record.status, "perplexity": _number(record.perplexity), "ratio": _number(record.ratio),
        "ratio_change": _number(record.ratio_change),
        "metrics": record.scores.to_dict() if record.scores else None,
        "method_info": _clean(record.method_info),
        "seconds": {"edit": record.edit_seconds, "check": record.check_seconds},
    }


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


def build_document(result, policy, exit_code: int) -> dict[str, Any]:
    """The report of a run that reached a verdict."""
    culprit = result.culprit
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _now(),
        "verdict": result.verdict,
        "exit_code": exit_code,
        "reasons": result.reasons,
        "culprit": None if culprit is None else {
            "id": culprit.edit.id, "file": culprit.edit.source, "line": culprit.edit.line,
            "status": culprit.status, "ratio": _number(culprit.ratio)},
        "stopped_early": result.stopped_early,
        "policy": {"source": policy.source, **_clean(dataclasses.asdict(policy))},
        "baseline": {"perplexity": _number(result.baseline.token_perplexity),
                     "mean_text_perplexity": _number(result.baseline.mean_text_perplexity),
                     "tokens": result.baseline.tokens, "texts": len(result.baseline.text_tokens)},
        "edits": [_edit_record(r) for r in result.records],
        "edit_metrics": _clean(result.scores_summary),
        "timings": result.timings,
        "environment": result.environment,
        "error": None,
    }


def error_document(verdict: str, exit_code: int, message: str, problems: list[str] | None = None,
                   partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run that stopped before a verdict: invalid input (2) or a failed run (3)."""
    document = {
        "schema_version": SCHEMA_VERSION, "created": _now(), "verdict": verdict, "exit_code": exit_code,
        "reasons": problems or [message], "culprit": None, "stopped_early": True, "policy": None,
        "baseline": None, "edits": [], "edit_metrics": None, "timings": {}, "environment": {},
        "error": message,
    }
    if partial:
        document.update(partial)
    return document
