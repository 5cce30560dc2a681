"""Reports of a run: `report.json` (the record, versioned) and renderings of it (Markdown, ...).

Every renderer reads only the JSON document, so `editgate report` can re-render a saved run, and a
run that fails part-way still gets a report from whatever it had.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from editgate.reports.document import SCHEMA_VERSION, build_document, error_document
from editgate.reports.markdown import render_markdown

__all__ = ["SCHEMA_VERSION", "build_document", "error_document", "render_markdown", "write_reports",
           "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_reports(document: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for name, text in (("report.json", json.dumps(document, indent=2, allow_nan=True, default=str)),
                       ("report.md", render_markdown(document))):
        write_atomic(out_dir / name, text)
        written.append(out_dir / name)
    return written
