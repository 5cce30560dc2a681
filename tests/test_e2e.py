"""End to end on the real embedded model (SmolLM2-135M): the shipped demo repository, as a user runs it.

Slow (minutes on a CPU). They use the default cache directory (~/.cache/editgate), so the converted
model and the ROME covariance statistics are computed once and reused by later runs, as in CI.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


def editgate_run(repo: Path, out: Path) -> subprocess.CompletedProcess:
    if not (repo / "editgate.yaml").is_file():
        pytest.skip(f"the demo repository {repo} is absent")
    return subprocess.run([sys.executable, "-m", "editgate.cli", "run", "--repo", str(repo), "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=3600)


def id_lines(repo: Path) -> dict[str, str]:
    """{edit id: "edits/<file>.yaml:<line of its '- id:'>"} over the repository's manifests."""
    out = {}
    for path in sorted((repo / "edits").rglob("*.yaml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = re.match(r"\s*-\s*id:\s*(\S+)\s*$", line)
            if match:
                out[match.group(1)] = f"{path.relative_to(repo).as_posix()}:{number}"
    return out


def test_demo_passes_on_the_embedded_model(tmp_path):
    out = tmp_path / "report"
    proc = editgate_run(DEMO, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # --quiet
    assert "Traceback" not in proc.stdout
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["verdict"] == "passed" and doc["exit_code"] == 0
    assert doc["environment"]["model"] == "builtin:smollm2-135m"
    edits = doc["edits"]
    assert len(edits) == 10
    lines = id_lines(DEMO)
    for edit in edits:
        assert isinstance(edit["perplexity"], float) and math.isfinite(edit["perplexity"]), edit
        assert edit["status"] in ("pass", "warn")
        assert f"{edit['file']}:{edit['line']}" == lines[edit["id"]]
        assert edit["method_info"]["layer"] >= 1
    efficacy = [e["metrics"]["efficacy"] for e in edits]
    assert sum(1 for value in efficacy if value == 1.0) >= 8, efficacy
    assert doc["edit_metrics"]["locality"] >= 0.9, doc["edit_metrics"]
    base = doc["baseline"]["perplexity"]
    assert 5 < base < 200  # a real small LM on Wikipedia summaries
    assert max(e["ratio"] for e in edits) <= doc["policy"]["perplexity"]["fail_ratio"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## ✅ editgate: passed") and "eiffel-tower-city" in markdown


STRICT = """\
perplexity:
  corpus: builtin:wiki
  samples: 40
  max_tokens: 128
  warn_ratio: 1.0
  fail_ratio: 1.0005
  collapse_ratio: 10.0
edits:
  min_efficacy: 0.0
  min_generalization: 0.0
  min_locality: 0.0
"""


def test_strict_policy_fails_the_demo_and_names_the_culprit(tmp_path):
    if not DEMO.is_dir():
        pytest.skip(f"the demo repository {DEMO} is absent")
    repo = tmp_path / "demo"
    shutil.copytree(DEMO, repo)
    (repo / "policies" / "default.yaml").write_text(STRICT, encoding="utf-8")
    out = tmp_path / "report"
    proc = editgate_run(repo, out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["verdict"] == "failed"
    culprit = doc["culprit"]
    first_bad = next(e for e in doc["edits"] if e["status"] in ("fail", "collapse"))
    assert culprit["id"] == first_bad["id"] and first_bad["ratio"] > 1.0005
    assert all(e["ratio"] <= 1.0005 for e in doc["edits"][: doc["edits"].index(first_bad)])
    where = id_lines(repo)[culprit["id"]]
    assert where.startswith("edits/") and f"{culprit['file']}:{culprit['line']}" == where
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## ❌ editgate: failed")
    assert f"`{where}`" in markdown
    assert where in proc.stdout  # the reason line printed by the CLI names it too
