"""The gate and the command line on tiny repositories: verdicts, exit codes, culprits, reports."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from editgate.cli import main
from editgate.gate import classify
from editgate.methods.rome import RomeHParams
from editgate.policy import Policy, PerplexityPolicy

from helpers import gate_policy, tree_digest, write

EXTREME = {"clamp_norm_factor": 1000, "v_lr": 50, "v_weight_decay": 0}


def run_cli(*args: str) -> "click.testing.Result":  # noqa: F821
    result = CliRunner().invoke(main, list(args))
    # the CLI ends every run with sys.exit(code); anything else is a crash
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_report(out: Path) -> dict:
    def no_constants(name):  # report.json must be strict JSON: no NaN / Infinity literals
        raise AssertionError(f"report.json contains the non-JSON constant {name}")

    return json.loads((out / "report.json").read_text(encoding="utf-8"), parse_constant=no_constants)


def line_of_id(path: Path, edit_id: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(rf"\s*-\s*id:\s*{re.escape(edit_id)}\s*$", line):
            return number
    raise AssertionError(f"{edit_id} not in {path}")


# --- classify ----------------------------------------------------------------------------------------


def test_classify_thresholds_nan_and_inf():
    policy = Policy(perplexity=PerplexityPolicy(warn_ratio=1.1, fail_ratio=1.5, collapse_ratio=10.0))
    assert classify(0.9, policy) == "pass"
    assert classify(1.1, policy) == "pass"  # thresholds are "over", not "at"
    assert classify(1.2, policy) == "warn"
    assert classify(1.5, policy) == "warn"
    assert classify(1.6, policy) == "fail"
    assert classify(10.0, policy) == "fail"
    assert classify(10.01, policy) == "collapse"
    assert classify(float("nan"), policy) == "collapse"
    assert classify(float("inf"), policy) == "collapse"
    assert classify(float("-inf"), policy) == "collapse"


# --- a passing run --------------------------------------------------------------------------------


def test_run_passes_and_writes_reports(tiny_repo, tiny_model_dir, tmp_path):
    repo = tiny_repo()
    model_dir = tiny_model_dir("llama", 4)
    model_files = tree_digest(model_dir)
    out = tmp_path / "out"

    result = run_cli("run", "--repo", str(repo), "--out", str(out))

    doc = read_report(out)
    assert result.exit_code == {"passed": 0, "failed": 1}[doc["verdict"]] == doc["exit_code"]
    assert doc["verdict"] == "passed", doc["reasons"]
    assert result.exit_code == 0
    assert (out / "report.md").is_file()
    assert f"editgate: {doc['verdict']}" in result.stdout
    # progress went to stderr, not stdout
    assert "baseline perplexity" in result.stderr and "baseline perplexity" not in result.stdout

    assert doc["schema_version"] == 1
    assert [e["id"] for e in doc["edits"]] == ["eiffel-rome", "kremlin-london", "taj-egypt"]  # sorted files, file order
    base = doc["baseline"]["perplexity"]
    assert isinstance(base, float) and base > 1 and doc["baseline"]["texts"] == 8
    for edit in doc["edits"]:
        assert edit["status"] in ("pass", "warn")
        assert isinstance(edit["perplexity"], float) and math.isfinite(edit["perplexity"])
        assert edit["ratio"] == pytest.approx(edit["perplexity"] / base, rel=1e-9)
        info = edit["method_info"]
        assert info["layer"] == 1 and info["key_denominator"] > 0 and info["relative_update_norm"] > 0
        assert set(edit["metrics"]) >= {"efficacy", "generalization", "locality", "efficacy_cf"}
        assert edit["file"].startswith("edits/2026-01-0") and edit["line"] > 0
    assert doc["edits"][0]["ratio_change"] == pytest.approx(doc["edits"][0]["ratio"] - 1.0)
    assert doc["edits"][0]["metrics"]["generalization"] is not None
    assert doc["edits"][1]["metrics"]["locality"] is None  # kremlin has no locality prompts
    assert doc["edits"][2]["metrics"]["locality"] is not None  # answer filled from the unedited model
    first = repo / "edits" / "2026-01-01-a.yaml"
    assert doc["edits"][1]["line"] == line_of_id(first, "kremlin-london")
    env = doc["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and len(env["model_fingerprint"]) == 16
    assert doc["policy"]["perplexity"]["samples"] == 8

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## ✅ editgate: passed")
    assert "`edits/2026-01-01-a.yaml:" in markdown and "kremlin-london" in markdown
    # the base model's files were only ever read
    assert tree_digest(model_dir) == model_files

    # `editgate report` renders the saved run to the same Markdown
    rendered = run_cli("report", str(out / "report.json"))
    assert rendered.exit_code == 0
    assert rendered.stdout.strip() == markdown.strip()
    as_json = run_cli("report", str(out / "report.json"), "--format", "json")
    assert json.loads(as_json.stdout)["verdict"] == "passed"


def test_quiet_silences_progress(tiny_repo, tmp_path):
    repo = tiny_repo(manifests={"edits/one.yaml": "edits:\n  - id: one\n    prompt: '{} is in'\n"
                                                  "    subject: The Kremlin\n    target: London\n"})
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"), "--quiet")
    assert result.stderr == ""
    assert result.exit_code == 0 and "editgate: passed" in result.stdout


# --- failing runs ------------------------------------------------------------------------------------

STRICT_POLICY = gate_policy(samples=8, max_tokens=64, warn_ratio=1.0, fail_ratio=1.0000001, collapse_ratio=1000.0)


def test_fail_ratio_fails_the_gate_and_names_the_culprit(tiny_repo, tmp_path):
    manifest = """\
edits:
  - id: gentle
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    hparams: {v_steps: 1, v_lr: 0.0001}

  - id: extreme
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0}

  - id: after
    prompt: "{} was founded by"
    subject: Microsoft
    target: Steve Jobs
"""
    repo = tiny_repo(policy=STRICT_POLICY, manifests={"edits/2026-02-01-x.yaml": manifest})
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out))

    assert result.exit_code == 1
    doc = read_report(out)
    assert doc["verdict"] == "failed" and doc["exit_code"] == 1
    statuses = {e["id"]: e["status"] for e in doc["edits"]}
    assert statuses["extreme"] in ("fail", "collapse")
    assert doc["edits"][1]["ratio"] > 1.0000001
    # the culprit is the first edit whose check crossed a threshold
    first_bad = next(e for e in doc["edits"] if e["status"] in ("fail", "collapse"))
    culprit = doc["culprit"]
    assert culprit["id"] == first_bad["id"] and culprit["status"] == first_bad["status"]
    if statuses["gentle"] == "pass":  # a near no-op update (seeded: ratio ~0.999998 here)
        assert culprit["id"] == "extreme"
    where = f"edits/2026-02-01-x.yaml:{line_of_id(repo / 'edits' / '2026-02-01-x.yaml', culprit['id'])}"
    assert culprit["file"] + ":" + str(culprit["line"]) == where
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## ❌ editgate: failed")
    assert f"**Culprit:** `{culprit['id']}` at `{where}`" in markdown
    assert any(culprit["id"] in reason and where in reason for reason in doc["reasons"])
    assert culprit["id"] in result.stdout
    if statuses["extreme"] == "fail":  # a fail does not stop the run: the whole curve is reported
        assert statuses["after"] != "not-run" and isinstance(doc["edits"][2]["perplexity"], float)


def test_collapse_stops_the_run(tiny_repo, tmp_path):
    """An overdriven fine-tune (learning rate 100, no effective norm bound) in float16 overflows the
    activations to infinity and NaN: the check reports a collapse and stops the run instead of crashing.
    (Non-finite hyperparameters themselves are input errors: tests/test_hostile.py.)"""
    manifest = """\
edits:
  - id: fine
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
  - id: overflow
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    method: ft
    hparams: {lr: 100.0, norm_constraint: 1000000.0, early_stop_nll: 0.0, steps: 50}
  - id: never
    prompt: "{} was founded by"
    subject: Microsoft
    target: Steve Jobs
"""
    repo = tiny_repo(manifests={"edits/m.yaml": manifest})
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--dtype", "float16")
    assert result.exit_code == 1
    doc = read_report(out)  # also proves NaN/inf are written as strings, not as invalid JSON
    assert doc["verdict"] == "failed" and doc["stopped_early"] is True
    assert [e["status"] for e in doc["edits"]] == ["pass", "collapse", "not-run"]
    collapsed = doc["edits"][1]
    assert collapsed["perplexity"] in ("nan", "inf") and collapsed["ratio"] in ("nan", "inf")
    assert doc["culprit"]["id"] == "overflow" and doc["culprit"]["status"] == "collapse"
    assert doc["edits"][2]["perplexity"] is None
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "**Culprit:** `overflow` at `edits/m.yaml:6`" in markdown
    assert "💥 collapse" in markdown


def test_edit_metric_thresholds_fail_the_gate(tiny_repo, tmp_path):
    """A tiny random model cannot reach 100% efficacy with a few steps: min_efficacy 1.0 fails."""
    policy = STRICT_POLICY.replace("fail_ratio: 1.0000001", "fail_ratio: 500.0").replace(
        "min_efficacy: 0.0", "min_efficacy: 1.0")
    repo = tiny_repo(policy=policy, rome={"v_steps": 1, "v_lr": 0.001})
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet")
    doc = read_report(out)
    assert result.exit_code == 1 and doc["verdict"] == "failed"
    assert doc["culprit"] is None  # no perplexity threshold was crossed
    assert doc["edit_metrics"]["efficacy"] < 1.0
    assert any("efficacy" in reason and "min_efficacy" in reason for reason in doc["reasons"])


# --- invalid input and failed runs ----------------------------------------------------------------

BROKEN_MANIFEST = """\
edits:
  - id: ok-edit
    prompt: "{} is in"
    subject: The Kremlin
    target: London
  - id: no-target
    prompt: "{} is in"
    subject: Big Ben
  - id: ok-edit
    prompt: "{} is in"
    subject: The Louvre
    target: Berlin
    hparams: {v_stpes: 3}
"""


def test_validate_lists_every_error_without_traceback(tiny_repo):
    repo = tiny_repo(manifests={"edits/broken.yaml": BROKEN_MANIFEST})
    proc = subprocess.run([sys.executable, "-m", "editgate.cli", "validate", str(repo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edits/broken.yaml:")]
    assert len(errors) >= 3, proc.stderr
    joined = "\n".join(errors)
    assert re.search(r"edits/broken\.yaml:6: .*target", joined)  # the missing target, at its edit
    assert re.search(r"edits/broken\.yaml:9: .*ok-edit", joined)  # the duplicate id
    assert re.search(r"edits/broken\.yaml:13: .*v_stpes.*v_steps", joined)  # the typo, with a suggestion
    assert "problem(s) found" in proc.stderr


def test_validate_ok(tiny_repo):
    result = run_cli("validate", str(tiny_repo()))
    assert result.exit_code == 0 and "ok: 3 edits valid" in result.stdout


def test_run_on_invalid_input_exits_2_with_a_report(tiny_repo, tmp_path):
    repo = tiny_repo(manifests={"edits/broken.yaml": BROKEN_MANIFEST})
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out))
    assert result.exit_code == 2
    doc = read_report(out)
    assert doc["verdict"] == "invalid" and doc["exit_code"] == 2
    assert any(r.startswith("edits/broken.yaml:6:") for r in doc["reasons"])
    assert "Traceback" not in result.output
    assert (out / "report.md").read_text(encoding="utf-8").startswith("## ⚠️ editgate: invalid")
    assert not (tmp_path / "cache").exists()  # nothing was loaded or computed


def test_invalid_policy_and_bad_device_exit_2(tiny_repo, tmp_path):
    repo = tiny_repo(policy="perplexity:\n  warn_ratio: 2.0\n  fail_ratio: 1.5\n  samples: many\n")
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "a"))
    assert result.exit_code == 2
    reasons = read_report(tmp_path / "a")["reasons"]
    assert any(r.startswith("policies/default.yaml:4:") and "samples" in r for r in reasons)
    result = run_cli("run", "--repo", str(tiny_repo(name="other")), "--device", "tpu", "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and read_report(tmp_path / "b")["verdict"] == "invalid"


def test_missing_model_exits_3_with_an_error_report(tiny_repo, tmp_path):
    repo = tiny_repo()
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--model", str(tmp_path / "no-such-model"), "--out", str(out))
    assert result.exit_code == 3
    doc = read_report(out)
    assert doc["verdict"] == "error" and doc["exit_code"] == 3
    assert "no-such-model" in doc["error"]
    assert "Traceback" not in result.output
    assert (out / "report.md").read_text(encoding="utf-8").startswith("## 💥 editgate: error")


def test_layer_beyond_the_model_is_invalid_input_found_before_the_first_edit(tiny_repo, tmp_path):
    """A layer index is checked against the loaded model's depth before any edit: exit 2 with the file
    and line, not an edit of the wrong layer (Python's -1) nor a crash part-way."""
    repo = tiny_repo(rome={"layer": 9})
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet")
    assert result.exit_code == 2, result.output
    assert "editgate.yaml:5: hparams.rome: hyperparameter 'layer' of method 'rome' is 9, but the model has 4 layers" \
        in result.output
    doc = read_report(out)
    assert doc["verdict"] == "invalid" and doc["problems"][0]["line"] == 5


def test_an_edit_at_the_last_block_is_invalid_input(tiny_repo, tmp_path):
    """ROME at the last block writes a value no later block reads: refused before the first edit."""
    repo = tiny_repo(rome={"layer": 3})
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 2, result.output
    assert "is 3, the model's last block" in result.output and "use a layer from 0 to 2" in result.output


def test_unexpected_crash_exits_3_with_a_report_not_a_traceback(tiny_repo, tmp_path, monkeypatch):
    """Whatever breaks inside the run (here the method itself) must end as exit 3 with report.json, never
    as exit 1 (which means "the gate failed") with a traceback and no report."""
    from editgate.methods.rome import Rome

    def crash(self, edits, hparams):
        raise RuntimeError("simulated failure inside the method")

    monkeypatch.setattr(Rome, "apply", crash)
    repo = tiny_repo()
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet")  # re-raises any crash
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    doc = read_report(out)
    assert doc["verdict"] == "error" and doc["exit_code"] == 3 and doc["error"]
    assert isinstance(doc["baseline"]["perplexity"], float)
    assert "editgate: error" in result.stdout


# --- other commands ----------------------------------------------------------------------------------


def test_methods_lists_rome_and_its_hyperparameters():
    import dataclasses

    result = run_cli("methods")
    assert result.exit_code == 0
    assert re.search(r"^rome: .*rank-one", result.stdout, re.M)
    for field in dataclasses.fields(RomeHParams):
        assert re.search(rf"^\s+{field.name} = ", result.stdout, re.M), field.name
    assert "layer = auto" in result.stdout and "v_lr = 0.5" in result.stdout


def test_report_of_a_file_that_is_not_a_report(tmp_path):
    bad = write(tmp_path / "report.json", "{not json")
    result = run_cli("report", str(bad))
    assert result.exit_code == 2 and "not a report.json" in result.stderr


def test_version():
    import editgate

    result = run_cli("--version")
    assert result.exit_code == 0 and editgate.__version__ in result.stdout
