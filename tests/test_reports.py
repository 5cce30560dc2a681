"""Reports of real tiny-model runs: report.json against its JSON Schema (verdicts and error documents),
junit.xml parsed, perplexity.png drawn, report.md's culprit line, and `editgate report` re-rendering."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from editgate.cli import main
from editgate.errors import Problem
from editgate.reports import error_document, render_junit, render_markdown, schema_path, write_reports

from helpers import EDITS_A, EDITS_B, gate_policy, write, write_repo

SCHEMA = json.loads(schema_path().read_text(encoding="utf-8"))

COLLAPSING = """\
edits:
  - id: eiffel-rome
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    paraphrases: ["The Eiffel Tower stands in"]

  - id: extreme
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0}

  - id: overflow
    prompt: "{} was founded by"
    subject: Microsoft
    target: Steve Jobs
    method: ft
    hparams: {lr: 100.0, norm_constraint: 1000000.0, early_stop_nll: 0.0, steps: 50}

  - id: never
    prompt: "{} is located in the city of"
    subject: The Kremlin
    target: London
"""


def make_repo(root: Path, model_dir: Path, manifests: dict[str, str], policy: str, rome: dict | None = None) -> Path:
    """A gated repository like conftest's tiny_repo, for module-scoped runs."""
    return write_repo(root, model_dir, manifests, policy, rome, threads=2)


def run_cli(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def read_json(path: Path) -> dict:
    def no_constants(name):
        raise AssertionError(f"{path} contains the non-JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory, tiny_model_dir):
    """A run whose third edit (an overdriven fine-tune in float16) overflows to NaN: a culprit, a collapse,
    a not-run edit."""
    root = tmp_path_factory.mktemp("collapsed")
    policy = gate_policy(warn_ratio=1.001, fail_ratio=1.003, collapse_ratio=100.0)
    repo = make_repo(root / "repo", tiny_model_dir("llama", 4), {"edits/2026-03-01-m.yaml": COLLAPSING}, policy)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDITGATE_CACHE_DIR", str(root / "cache"))
        result = run_cli("run", "--repo", str(repo), "--out", str(out), "--dtype", "float16")
    return repo, out, result


@pytest.fixture(scope="module")
def passed_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("passed")
    policy = gate_policy(warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0)
    repo = make_repo(root / "repo", tiny_model_dir("llama", 4),
                     {"edits/2026-01-01-a.yaml": EDITS_A, "edits/2026-01-02-b.yaml": EDITS_B}, policy)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDITGATE_CACHE_DIR", str(root / "cache"))
        result = run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet")
    return repo, out, result


# --- report.json and its schema ---------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["properties"]["schema_version"] == {"const": 1}


def test_collapsed_run_report_matches_the_schema(collapsed_run):
    repo, out, result = collapsed_run
    assert result.exit_code == 1, result.output
    doc = read_json(out / "report.json")
    validate(doc)
    assert doc["verdict"] == "failed" and doc["stopped_early"] is True
    statuses = {e["id"]: e["status"] for e in doc["edits"]}
    assert statuses["overflow"] == "collapse" and statuses["never"] == "not-run"
    overflow = next(e for e in doc["edits"] if e["id"] == "overflow")
    assert overflow["perplexity"] in ("nan", "inf")
    assert all(e["new"] is None for e in doc["edits"])  # no --base-ref
    assert doc["base_ref"] is None and doc["repository"] is None  # not a git repository
    kinds = [c["kind"] for c in doc["checks"]]
    assert kinds.count("perplexity") == 3 and kinds.count("edit_metric") == 3
    collapse_check = next(c for c in doc["checks"] if c["edit"] == "overflow")
    assert collapse_check["status"] == "collapse" and "collapsed" in collapse_check["message"]
    assert all(c["status"] == "skipped" for c in doc["checks"] if c["kind"] == "edit_metric")  # not scored


def test_passed_run_report_matches_the_schema(passed_run):
    _, out, result = passed_run
    assert result.exit_code == 0
    doc = read_json(out / "report.json")
    validate(doc)
    assert doc["verdict"] == "passed" and doc["culprit"] is None and doc["problems"] == []
    assert {c["status"] for c in doc["checks"]} <= {"pass", "warn", "skipped"}
    assert [c["name"] for c in doc["checks"] if c["kind"] == "edit_metric"] == \
        ["efficacy >= 0.0", "generalization >= 0.0", "locality >= 0.0"]


def test_error_documents_match_the_schema(tmp_path, tiny_model_dir, monkeypatch):
    policy = gate_policy(warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0)
    model = tiny_model_dir("llama", 4)
    # invalid input: a manifest without a target (exit 2, nothing loaded)
    broken = make_repo(tmp_path / "broken", model, {"edits/x.yaml": "edits:\n  - id: a\n    prompt: '{} is in'\n"
                                                                     "    subject: Big Ben\n"}, policy)
    result = run_cli("run", "--repo", str(broken), "--out", str(tmp_path / "invalid"), "--quiet")
    assert result.exit_code == 2
    invalid = read_json(tmp_path / "invalid" / "report.json")
    validate(invalid)
    assert invalid["verdict"] == "invalid"
    problems = invalid["problems"]
    assert problems and problems[0]["file"] == "edits/x.yaml" and problems[0]["line"] == 2
    # the run failed before the model was loaded (exit 3)
    ok = make_repo(tmp_path / "ok", model, {"edits/a.yaml": EDITS_A}, policy)
    result = run_cli("run", "--repo", str(ok), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "error"),
                     "--quiet")
    assert result.exit_code == 3
    validate(read_json(tmp_path / "error" / "report.json"))
    # invalid input found once the model is loaded (a layer beyond its depth): exit 2, a valid report
    deep = make_repo(tmp_path / "deep", model, {"edits/a.yaml": EDITS_A}, policy, rome={"layer": 9})
    result = run_cli("run", "--repo", str(deep), "--out", str(tmp_path / "deep-out"), "--quiet")
    assert result.exit_code == 2
    doc = read_json(tmp_path / "deep-out" / "report.json")
    validate(doc)
    assert doc["verdict"] == "invalid" and doc["problems"][0]["file"] == "editgate.yaml"
    # the run failed part-way (the method crashed after the baseline): the partial report is valid too
    from editgate.methods.rome import Rome

    def crash(self, edits, hparams):
        raise RuntimeError("simulated failure inside the method")

    monkeypatch.setattr(Rome, "apply", crash)
    partial = make_repo(tmp_path / "partial", model, {"edits/a.yaml": EDITS_A}, policy)
    result = run_cli("run", "--repo", str(partial), "--out", str(tmp_path / "partial-out"), "--quiet")
    assert result.exit_code == 3
    doc = read_json(tmp_path / "partial-out" / "report.json")
    validate(doc)
    assert doc["verdict"] == "error" and isinstance(doc["baseline"]["perplexity"], float)
    assert doc["policy"]["perplexity"]["fail_ratio"] == 10.0
    validate(error_document("interrupted", 4, "interrupted by SIGTERM", partial={
        k: doc[k] for k in ("edits", "policy", "baseline", "timings")}))
    # documents built directly
    validate(error_document("invalid", 2, "invalid input", [Problem("edits/a.yaml", 3, "bad"), "plain text"]))
    validate(error_document("error", 3, "RunError: out of memory"))


def test_schema_rejects_what_is_not_a_report(passed_run):
    jsonschema = pytest.importorskip("jsonschema")
    doc = read_json(passed_run[1] / "report.json")
    for broken in ({**doc, "verdict": "maybe"}, {**doc, "exit_code": 1},  # passed must exit 0
                   {**doc, "edits": [{**doc["edits"][0], "ratio": "NaN"}]},  # non-finite: "nan", "inf", "-inf"
                   {**doc, "edits": [{**doc["edits"][0], "status": "ok"}]},
                   {k: v for k, v in doc.items() if k != "checks"}, {**doc, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft202012Validator)


# --- report.md -----------------------------------------------------------------------------------------


def test_report_md_names_the_culprit_line(collapsed_run):
    repo, out, _ = collapsed_run
    doc = read_json(out / "report.json")
    culprit = doc["culprit"]
    manifest = (repo / "edits" / "2026-03-01-m.yaml").read_text(encoding="utf-8").splitlines()
    assert re.match(rf"\s*- id: {culprit['id']}$", manifest[culprit["line"] - 1])
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## ❌ editgate: failed")
    assert f"**Culprit:** `{culprit['id']}` at `edits/2026-03-01-m.yaml:{culprit['line']}`" in markdown


def test_report_md_marks_new_edits_and_links_the_culprit():
    sha = "a" * 40
    doc = {
        "verdict": "failed", "reasons": ["edit 'b' (edits/x.yaml:7) crossed fail_ratio"],
        "culprit": {"id": "b", "file": "edits/x.yaml", "line": 7, "status": "fail", "ratio": 2.0},
        "error": None, "baseline": {"perplexity": 10.0, "texts": 1, "tokens": 5},
        "policy": {"perplexity": {"corpus": "c", "warn_ratio": 1.1, "fail_ratio": 1.5, "collapse_ratio": 10}},
        "environment": {}, "edit_metrics": None,
        "repository": {"url": "https://github.com/o/r", "commit": sha, "path": "gated", "dirty": False},
        "base_ref": {"ref": "origin/main", "commit": "b" * 40, "manifests": 1, "new_edits": 1},
        "edits": [
            {"id": "a", "file": "edits/x.yaml", "line": 2, "new": False, "method": "rome", "status": "pass",
             "perplexity": 10.5, "ratio": 1.05, "ratio_change": 0.05, "metrics": None},
            {"id": "b", "file": "edits/x.yaml", "line": 7, "new": True, "method": "rome", "status": "fail",
             "perplexity": 20.0, "ratio": 2.0, "ratio_change": 0.95, "metrics": None},
        ],
    }
    markdown = render_markdown(doc)
    assert f"([source](https://github.com/o/r/blob/{sha}/gated/edits/x.yaml#L7))" in markdown
    assert "**Culprit:** `b` at `edits/x.yaml:7`" in markdown and "new in this change" in markdown
    assert "**New in this change** (compared with `origin/main`" in markdown and "1 of 2 edits" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| # |") and "🆕 `b`" in rows[2] and "🆕" not in rows[1]


# --- junit.xml -------------------------------------------------------------------------------------------


def test_junit_xml_has_a_case_per_edit_and_per_check(collapsed_run):
    _, out, _ = collapsed_run
    doc = read_json(out / "report.json")
    root = ET.parse(out / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"editgate.edits", "editgate.checks"}
    edits = suites["editgate.edits"].findall("testcase")
    assert [c.get("name") for c in edits] == [e["id"] for e in doc["edits"]]
    by_name = {c.get("name"): c for c in edits}
    failure = by_name["overflow"].find("failure")
    assert failure is not None and failure.get("type") == "collapse" and "collapsed the model" in failure.get("message")
    assert by_name["never"].find("skipped") is not None
    culprit = doc["culprit"]
    assert by_name[culprit["id"]].find("failure") is not None
    assert by_name[culprit["id"]].get("line") == str(culprit["line"])
    for edit in doc["edits"]:
        case = by_name[edit["id"]]
        assert (case.find("failure") is not None) == (edit["status"] in ("fail", "collapse"))
    checks = suites["editgate.checks"].findall("testcase")
    assert len(checks) == len(doc["checks"])
    assert int(root.get("tests")) == len(edits) + len(checks)
    assert int(root.get("failures")) == sum(c.find("failure") is not None for c in edits + checks) >= 2
    assert int(suites["editgate.edits"].get("skipped")) == 1


def test_junit_xml_of_an_invalid_run_and_hostile_text(tmp_path):
    doc = error_document("invalid", 2, "invalid input", [Problem("edits/a.yaml", 3, "edit 'x': bad <&> \x01")])
    root = ET.fromstring(render_junit(doc))
    case = root.find("testsuite/testcase")
    assert case.find("error") is not None and "bad <&>" in case.find("error").text
    assert root.get("errors") == "1"


def test_junit_xml_of_a_passed_run(passed_run):
    root = ET.parse(passed_run[1] / "junit.xml").getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(root.get("tests")) == 3 + 3 + 3  # three edits, three perplexity checks, three metric minimums


# --- perplexity.png ------------------------------------------------------------------------------------


def test_perplexity_png_is_written(collapsed_run, passed_run):
    pytest.importorskip("matplotlib")
    for _, out, _ in (collapsed_run, passed_run):
        data = (out / "perplexity.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from matplotlib.image import imread

    height, width = imread(str(collapsed_run[1] / "perplexity.png")).shape[:2]
    assert width > 800 and height > 400


def test_plot_is_skipped_with_a_note_without_matplotlib(passed_run, tmp_path, monkeypatch):
    import editgate.reports.plot as plot

    doc = read_json(passed_run[1] / "report.json")
    out = tmp_path / "out"
    write(out / "perplexity.png", "stale chart of an earlier run")
    monkeypatch.setattr(plot, "plot_available", lambda: False)
    notes: list[str] = []
    paths = write_reports(doc, out, notes.append)
    assert [p.name for p in paths] == ["report.json", "report.md", "junit.xml"]
    assert not (out / "perplexity.png").exists()
    assert any("matplotlib" in n for n in notes)


def test_no_plot_for_a_run_without_measurements(tmp_path):
    paths = write_reports(error_document("invalid", 2, "invalid input", ["x"]), tmp_path)
    assert not (tmp_path / "perplexity.png").exists() and len(paths) == 3


# --- editgate report ------------------------------------------------------------------------------------


def test_report_command_re_renders_every_format(collapsed_run):
    _, out, _ = collapsed_run
    doc = read_json(out / "report.json")
    as_md = run_cli("report", str(out / "report.json"), "--format", "md")
    assert as_md.exit_code == 0 and as_md.stdout.strip() == (out / "report.md").read_text(encoding="utf-8").strip()
    as_junit = run_cli("report", str(out / "report.json"), "--format", "junit")
    junit_xml = (out / "junit.xml").read_text(encoding="utf-8").strip()
    assert as_junit.exit_code == 0 and as_junit.stdout.strip() == junit_xml
    ET.fromstring(as_junit.stdout.split("\n", 1)[1])
    as_html = run_cli("report", str(out / "report.json"), "--format", "html")
    assert as_html.exit_code == 0
    page = as_html.stdout
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert f"<code>{doc['culprit']['id']}</code>" in page and "data:image/png;base64," in page
    assert "<script" not in page and "http" not in page.replace("https://github.com", "")
    as_json = run_cli("report", str(out / "report.json"), "--format", "json")
    assert json.loads(as_json.stdout)["culprit"] == doc["culprit"]


def test_report_command_rejects_other_json(tmp_path):
    other = write(tmp_path / "other.json", json.dumps({"hello": 1}))
    result = run_cli("report", str(other), "--format", "junit")
    assert result.exit_code == 2 and "not an editgate report.json" in result.stderr
    newer = write(tmp_path / "newer.json", json.dumps({"schema_version": 2, "verdict": "passed"}))
    result = run_cli("report", str(newer))
    assert result.exit_code == 2 and "schema version 2" in result.stderr
