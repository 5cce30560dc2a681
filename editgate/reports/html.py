"""A self-contained HTML page of a saved report (`editgate report report.json --format html`): the
verdict, the culprit, the checks and the edits table, and the perplexity chart inlined when
perplexity.png lies beside the report. No scripts, no external resources."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from editgate.reports.document import checks_of
from editgate.reports.markdown import ICONS, STATUS, _fmt, _pct
from editgate.vcs import source_link

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#1f2328;
padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail,tr.collapse{background:#ffebe9}tr.warn{background:#fff8c5}tr.not-run{color:#8c959f}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}.culprit{border-left:4px solid #cf222e;padding-left:.8em}
img{max-width:100%;border:1px solid #d0d7de}
"""


def render_html(doc: dict[str, Any], image: Path | None = None) -> str:
    verdict = doc.get("verdict", "")
    parts = [f"<h1>{ICONS.get(verdict, '')} editgate: {escape(verdict)}</h1>"]
    reasons = doc.get("reasons") or []
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in reasons) + "</ul>")
    culprit = doc.get("culprit")
    if culprit:
        where = f"{culprit['file']}:{culprit['line']}"
        link = source_link(doc.get("repository"), culprit["file"], culprit["line"])
        code = f"<code>{escape(where)}</code>"
        shown = f'<a href="{escape(link)}">{code}</a>' if link else code
        parts.append(f'<p class="culprit"><strong>Culprit:</strong> <code>{escape(culprit["id"])}</code> at {shown} '
                     f"({escape(culprit['status'])}, perplexity x{escape(_fmt(culprit['ratio']))})</p>")
    if doc.get("error"):
        parts.append(f"<p><strong>Error:</strong> {escape(doc['error'])}</p>")
    if doc.get("edits"):
        parts += [_summary(doc), _checks(doc)]
        if image is not None and image.is_file():
            data = base64.b64encode(image.read_bytes()).decode("ascii")
            parts.append(f'<p><img alt="perplexity after each edit" src="data:image/png;base64,{data}"></p>')
        parts.append(_edits(doc))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>editgate: {escape(verdict)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _summary(doc: dict[str, Any]) -> str:
    env = doc.get("environment") or {}
    base = doc.get("baseline") or {}
    pp = (doc.get("policy") or {}).get("perplexity") or {}
    metrics = doc.get("edit_metrics") or {}
    text = (f"Model <code>{escape(str(env.get('model')))}</code> ({escape(str(env.get('dtype')))} on "
            f"{escape(str(env.get('device')))}), {len(doc['edits'])} edits, baseline perplexity "
            f"{escape(_fmt(base.get('perplexity')))}; thresholds warn x{pp.get('warn_ratio')}, "
            f"fail x{pp.get('fail_ratio')}, collapse x{pp.get('collapse_ratio')}. Edit metrics, as the model "
            f"generates: efficacy {_pct(metrics.get('efficacy'))}, generalization "
            f"{_pct(metrics.get('generalization'))}, locality {_pct(metrics.get('locality'))} (teacher-forced "
            f"efficacy {_pct(metrics.get('efficacy_tf'))}).")
    base_ref = doc.get("base_ref")
    if base_ref:
        text += (f" {base_ref['new_edits']} edit(s) are new compared with <code>{escape(base_ref['ref'])}</code>"
                 " (marked 🆕).")
    return f"<p>{text}</p>"


def _checks(doc: dict[str, Any]) -> str:
    checks = doc.get("checks")
    if checks is None:
        checks = checks_of(doc)
    rows = "".join(f'<tr class="{escape(c["status"])}"><td>{escape(c["name"])}</td><td>{escape(c["status"])}</td>'
                   f"<td>{escape(c['message'])}</td></tr>" for c in checks)
    return f"<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>detail</th></tr>{rows}</table>"


def _edits(doc: dict[str, Any]) -> str:
    head = ("<tr><th>#</th><th>edit</th><th>where</th><th>method</th><th>status</th><th>perplexity</th>"
            "<th>ratio</th><th>Δ ratio</th><th>efficacy</th><th>general.</th><th>locality</th></tr>")
    rows = []
    for i, e in enumerate(doc.get("edits") or [], 1):
        m = e.get("metrics") or {}
        where = f"{e['file']}:{e['line']}"
        link = source_link(doc.get("repository"), e["file"], e["line"])
        where_html = f'<a href="{escape(link)}">{escape(where)}</a>' if link else escape(where)
        mark = "🆕 " if e.get("new") else ""
        rows.append(
            f'<tr class="{escape(e["status"])}"><td class="num">{i}</td><td>{mark}<code>{escape(e["id"])}</code></td>'
            f"<td>{where_html}</td><td>{escape(e['method'])}</td>"
            f"<td>{escape(STATUS.get(e['status'], e['status']))}</td>"
            f'<td class="num">{escape(_fmt(e.get("perplexity")))}</td>'
            f'<td class="num">{escape(_fmt(e.get("ratio")))}</td>'
            f'<td class="num">{escape(_fmt(e.get("ratio_change"), 4))}</td>'
            f'<td class="num">{_pct(m.get("efficacy"))}</td>'
            f'<td class="num">{_pct(m.get("generalization"))}</td><td class="num">{_pct(m.get("locality"))}</td></tr>')
    return f"<h2>Edits</h2><table>{head}{''.join(rows)}</table>"
