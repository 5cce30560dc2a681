"""Reports of a run: `report.json` (the record, versioned) and renderings of it (Markdown, JUnit,
the perplexity chart, HTML), plus the GitHub Actions integration.

Every renderer reads only the JSON document, so `editgate report` can re-render a saved run, and a
run that fails part-way still gets a report from whatever it had.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from editgate.atomicfile import atomic_path, write_atomic
from editgate.reports.document import SCHEMA_VERSION, build_document, error_document, partial_document
from editgate.reports.junit import render_junit
from editgate.reports.markdown import render_markdown

__all__ = ["SCHEMA_VERSION", "build_document", "error_document", "partial_document", "render_json", "render_markdown",
           "render_junit", "write_reports", "write_atomic", "schema_path"]


def schema_path() -> Path:
    """The JSON Schema (draft 2020-12) of report.json, shipped in the package."""
    return Path(__file__).resolve().parent.parent / "schema" / "report.schema.json"


def render_json(document: dict) -> str:
    """report.json's text (infinite ratios stay `Infinity`, as Python's json writes and reads them)."""
    return json.dumps(document, indent=2, allow_nan=True, default=str)


def write_reports(document: dict, out_dir: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """report.json, report.md, junit.xml and (with matplotlib, when there is a curve) perplexity.png."""
    out_dir = Path(out_dir)
    written = []
    for name, render in (("report.json", render_json),
                         ("report.md", render_markdown), ("junit.xml", render_junit)):
        write_atomic(out_dir / name, render(document))
        written.append(out_dir / name)
    png = _write_plot(document, out_dir / "perplexity.png", log or (lambda _m: None))
    if png is not None:
        written.append(png)
    elif (out_dir / "perplexity.png").exists():  # an earlier run's chart must not pass for this one's
        (out_dir / "perplexity.png").unlink()
    return written


def _write_plot(document: dict, path: Path, log: Callable[[str], None]) -> Path | None:
    from editgate.reports.plot import can_plot, plot_available, render_plot

    if not can_plot(document):
        return None
    if not plot_available():
        log("perplexity.png skipped: matplotlib is not installed (pip install 'editgate[plot]')")
        return None
    try:
        with atomic_path(path) as tmp:
            render_plot(document, tmp)
    except Exception as error:  # a chart must never cost the run its reports
        log(f"perplexity.png skipped: {type(error).__name__}: {error}")
        return None
    return path
