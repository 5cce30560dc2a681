"""`junit.xml`: the run as JUnit test results, so Jenkins, GitLab, GitHub test reporters (and anything
else that reads JUnit) list every edit and every check.

Two suites: `editgate.edits`, one test case per edit (failed when the perplexity check after it failed
or collapsed, skipped when the run stopped before applying it), and `editgate.checks`, one per check
the verdict rests on (each perplexity check, each edit-metric minimum), plus the perplexity trend
warning where it fired (passed, the warning as its output: a warning never fails the gate). A run that
reached no verdict (invalid input, a crash) is one failing case carrying the problems.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from editgate.reports.document import checks_of

_FAILED_EDIT = ("fail", "collapse")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed in XML 1.0


def _text(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", str(value))


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return x if isinstance(x, str) else f"{x:.4f}"


def _seconds(value: Any) -> str:
    return f"{float(value):.3f}" if isinstance(value, (int, float)) else "0"


def render_junit(doc: dict[str, Any]) -> str:
    root = ET.Element("testsuites", name="editgate")
    if doc.get("verdict") in ("invalid", "error", "interrupted") and not doc.get("edits"):
        suite = _suite(root, "editgate.run")
        case = _case(suite, "editgate run", "editgate", 0.0)
        kind = {"invalid": "invalid input", "interrupted": "interrupted"}.get(doc["verdict"], "the run failed")
        element = ET.SubElement(case, "error", message=_text(f"{kind}: {doc.get('error') or ''}"),
                                 type=doc["verdict"])
        element.text = _text("\n".join(doc.get("reasons") or []))
    else:
        _edits_suite(root, doc)
        _checks_suite(root, doc)
        if doc.get("verdict") in ("error", "interrupted"):  # stopped after some edits: a test case too
            suite = _suite(root, "editgate.run")
            case = _case(suite, "editgate run", "editgate", 0.0)
            ET.SubElement(case, "error", message=_text(doc.get("error") or "the run failed"), type=doc["verdict"])
    for suite in root:
        _count(suite)
    _count(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(root: ET.Element, name: str) -> ET.Element:
    return ET.SubElement(root, "testsuite", name=name)


def _case(suite: ET.Element, name: str, classname: str, seconds: float, **attrs: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", name=_text(name), classname=_text(classname),
                         time=_seconds(seconds), **{k: _text(v) for k, v in attrs.items()})


def _edits_suite(root: ET.Element, doc: dict[str, Any]) -> None:
    suite = _suite(root, "editgate.edits")
    fail_ratio = ((doc.get("policy") or {}).get("perplexity") or {}).get("fail_ratio")
    for index, edit in enumerate(doc.get("edits") or [], 1):
        seconds = sum(v for v in (edit.get("seconds") or {}).values() if isinstance(v, (int, float)))
        classname = "editgate.edits." + re.sub(r"\.(ya?ml|json)$", "", edit.get("file") or "manifest").replace("/", ".")
        case = _case(suite, edit["id"], classname, seconds, file=edit.get("file") or "",
                     line=str(edit.get("line") or 0))
        status = edit.get("status")
        where = f"{edit.get('file')}:{edit.get('line')}"
        if status in _FAILED_EDIT:
            word = "collapsed the model" if status == "collapse" else f"crossed fail_ratio {fail_ratio}"
            ratio = edit.get("ratio")
            shown = f"{ratio} (not finite)" if isinstance(ratio, str) else f"x{_fmt(ratio)}"
            message = f"edit {index} '{edit['id']}' ({where}) {word}: perplexity {shown} of the base model"
            element = ET.SubElement(case, "failure", message=_text(message), type=status)
            element.text = _text(_details(edit))
        elif status == "not-run":
            ET.SubElement(case, "skipped", message="not applied: the run stopped before this edit")
        else:
            out = ET.SubElement(case, "system-out")
            out.text = _text(_details(edit))


def _details(edit: dict[str, Any]) -> str:
    metrics = edit.get("metrics") or {}
    lines = [f"{edit.get('file')}:{edit.get('line')}  {edit.get('method')}  status {edit.get('status')}",
             f"prompt: {edit.get('prompt')!r} -> {edit.get('target')!r}",
             f"perplexity {_fmt(edit.get('perplexity'))}  ratio {_fmt(edit.get('ratio'))}  "
             f"change {_fmt(edit.get('ratio_change'))}"]
    trend = edit.get("trend") or {}
    if trend.get("fired"):
        lines.append(f"trend warning: perplexity increments accelerating, fail_ratio projected in "
                     f"{_fmt(trend.get('edits_left'))} edit(s)")
    if metrics:
        lines.append("  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if not isinstance(v, list)))
        lines.append(f"locality right after the edit {_fmt(edit.get('locality_after_edit'))}")
        lines += [f"left out: {reason}" for reason in metrics.get("left_out") or []]
    if edit.get("new") is not None:
        lines.append("new in this change" if edit["new"] else "already at the base ref")
    return "\n".join(lines)


def _checks_suite(root: ET.Element, doc: dict[str, Any]) -> None:
    suite = _suite(root, "editgate.checks")
    checks = doc.get("checks")
    if checks is None:  # a report written before checks were recorded: derive them
        checks = checks_of(doc)
    seconds = {e.get("id"): (e.get("seconds") or {}).get("check", 0.0) for e in doc.get("edits") or []}
    for check in checks:
        classname = f"editgate.checks.{check['kind']}"
        case = _case(suite, check["name"], classname, seconds.get(check.get("edit"), 0.0) if check.get("edit") else 0.0)
        status = check["status"]
        if status in ("fail", "collapse"):
            ET.SubElement(case, "failure", message=_text(check["message"]), type=status)
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=_text(check["message"]))
        else:
            ET.SubElement(case, "system-out").text = _text(check["message"])


def _count(element: ET.Element) -> None:
    cases = list(element.iter("testcase"))
    element.set("tests", str(len(cases)))
    element.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    element.set("errors", str(sum(c.find("error") is not None for c in cases)))
    element.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    element.set("time", f"{sum(float(c.get('time', 0)) for c in cases):.3f}")
