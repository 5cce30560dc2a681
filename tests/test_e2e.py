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

from helpers import gate_policy, shared_file

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


PUBLISHED_ROME = DEMO.parent / "published-rome"


def test_published_rome_example_fails_on_the_edit_that_wrecks_the_model(tmp_path):
    """examples/published-rome: ROME as kmeng01/rome and EasyEdit compute it. Two ordinary edits pass; the
    third, whose one-token subject opens the prompt, wrecks the model (perplexity about x2, the benchmarks
    drop with it): the gate fails, names it with its manifest line, and flagged it as risky before any check."""
    out = tmp_path / "report"
    proc = editgate_run(PUBLISHED_ROME, out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["culprit"]["id"] == "japan-continent"
    assert f"{doc['culprit']['file']}:{doc['culprit']['line']}" == id_lines(PUBLISHED_ROME)["japan-continent"]
    edits = {e["id"]: e for e in doc["edits"]}
    assert [edits[i]["status"] for i in ("eiffel-tower-city", "kremlin-city")] == ["pass", "pass"]
    culprit = edits["japan-continent"]
    assert culprit["ratio"] > 1.5 and culprit["method_info"]["denominator"] == "published"
    assert any("key denominator" in reason for reason in culprit["risk"])
    assert not edits["eiffel-tower-city"]["risk"] and not edits["kremlin-city"]["risk"]
    # the benchmark suite, which perplexity never sees, agrees that the model is damaged
    assert any(b["failed"] and not b["within_noise"] for b in doc["benchmarks"]["checkpoints"][-1]["benchmarks"])


# --- sparse checks name the same culprit (issue 5) ------------------------------------------------

CULPRIT_MANIFEST = """\
edits:
  - id: eiffel-tower-city
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
  - id: kremlin-city
    prompt: "{} is located in the city of"
    subject: The Kremlin
    target: London
  - id: overdriven-taj-mahal
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    # no norm clamp, a huge step, no KL or weight decay: the update swamps the layer
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0, kl_factor: 0}
  - id: microsoft-founder
    prompt: "{} was founded by"
    subject: Microsoft
    target: Steve Jobs
  - id: messi-sport
    prompt: "{} plays the sport of"
    subject: Lionel Messi
    target: tennis
"""

def culprit_policy(check_every: int) -> str:
    return gate_policy(samples=40, max_tokens=128, check_every=check_every, warn_ratio=1.10, fail_ratio=1.50,
                       collapse_ratio=10.0)


def repo_from_demo(tmp_path: Path, name: str, manifests: dict[str, str], policy: str, method: str = "rome") -> Path:
    """The demo's configuration with other manifests, policy or method."""
    if not DEMO.is_dir():
        pytest.skip(f"the demo repository {DEMO} is absent")
    repo = tmp_path / name
    (repo / "edits").mkdir(parents=True)
    (repo / "policies").mkdir()
    config = (DEMO / "editgate.yaml").read_text(encoding="utf-8").replace("method: rome", f"method: {method}")
    (repo / "editgate.yaml").write_text(config, encoding="utf-8")
    (repo / "policies" / "default.yaml").write_text(policy, encoding="utf-8")
    for relative, text in manifests.items():
        (repo / relative).write_text(text, encoding="utf-8")
    return repo


def test_checking_every_fifth_edit_names_the_same_culprit_as_every_edit(tmp_path):
    docs = {}
    for every in (1, 5):
        repo = repo_from_demo(tmp_path, f"every-{every}", {"edits/2026-11-20-moves.yaml": CULPRIT_MANIFEST},
                              culprit_policy(every))
        proc = editgate_run(repo, tmp_path / f"report-{every}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        docs[every] = json.loads((tmp_path / f"report-{every}" / "report.json").read_text(encoding="utf-8"))
    dense, sparse = docs[1], docs[5]
    assert dense["culprit"]["id"] == sparse["culprit"]["id"] == "overdriven-taj-mahal"
    assert dense["culprit"]["line"] == sparse["culprit"]["line"] == 10
    ratios = {e["id"]: e["ratio"] for e in dense["edits"]}
    assert ratios["kremlin-city"] < 1.5 < ratios["overdriven-taj-mahal"]  # a real collapse, not noise
    assert {e["id"] for e in sparse["edits"] if e["found_by_bisection"]} == {"overdriven-taj-mahal"}


# --- the memory method on the embedded model (issue 4) --------------------------------------------


def test_memory_method_gates_the_demo_and_leaves_the_weights_alone(tmp_path, monkeypatch, all_threads):
    """In process, so the loaded model itself can be compared with its state before the run."""
    import torch
    from click.testing import CliRunner

    import editgate.models as models
    from editgate.cli import main
    from editgate.methods.memory import EditMemory

    if not DEMO.is_dir():
        pytest.skip(f"the demo repository {DEMO} is absent")
    repo = tmp_path / "demo"
    shutil.copytree(DEMO, repo)
    config = repo / "editgate.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("method: rome", "method: memory"), encoding="utf-8")
    seen = {}
    real_load = models.load_model

    def load_and_remember(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        seen["model"] = loaded.model
        seen["before"] = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
        return loaded

    monkeypatch.setattr(models, "load_model", load_and_remember)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(out), "--quiet"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    after = seen["model"].state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in seen["before"])  # bit-identical weights
    # no check text routes to an edit, so perplexity is the base model's to the bit
    assert all(e["method"] == "memory" and e["ratio"] == 1.0 for e in doc["edits"])
    routing = doc["artifacts"]["memory_routing"]
    assert routing["stored_edits"] == 10 and routing["false_positive_rate"] == 0.0
    assert routing["prompt_accuracy"] == 1.0  # every edit prompt reaches its own edit
    # The demo's facts are ones the 135M model knows well, and with the fact in its context it still
    # answers the true city for most of them (measured: efficacy 0.3): the gate reports exactly that,
    # failing the run on the policy's min_efficacy and on nothing else.
    assert doc["edit_metrics"]["locality"] == 1.0
    assert (result.exit_code == 0) == (doc["edit_metrics"]["efficacy"] >= 0.8), doc.get("reasons")
    assert all("efficacy" in reason or "generalization" in reason for reason in doc["reasons"])
    # the saved memory loads again and routes each edit's own prompt to that edit
    saved = EditMemory.read(out / "memory.json")
    assert [e["edit"]["id"] for e in saved["entries"]] == [e["id"] for e in doc["edits"]]


def test_memory_method_gates_fifty_counterfact_edits(tmp_path):

    records = json.loads(shared_file("counterfact-2k.json").read_text(encoding="utf-8"))[:50]
    policy = culprit_policy(10).replace("min_efficacy: 0.0", "min_efficacy: 0.5")
    repo = repo_from_demo(tmp_path, "counterfact", {"edits/counterfact-50.json": json.dumps(records, indent=1)},
                          policy, method="memory")
    config = repo / "editgate.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("edits/**/*.yaml", "edits/*.json"), encoding="utf-8")
    proc = editgate_run(repo, tmp_path / "report")
    doc = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert proc.returncode == 0, (doc.get("reasons"), proc.stdout[-2000:])
    assert len(doc["edits"]) == 50 and all(e["method"] == "memory" for e in doc["edits"])
    assert max(e["ratio"] for e in doc["edits"] if e["ratio"] is not None) <= 1.10
    assert doc["edit_metrics"]["efficacy"] >= 0.5
    assert doc["artifacts"]["memory_routing"]["stored_edits"] == 50


# --- the check's savings never change a verdict (issue 7) -----------------------------------------

SAVINGS_OFF = "perplexity:\n  early_stop: false\n  prefix_cache: false\n"


def run_with_and_without_savings(tmp_path: Path, repo: Path) -> tuple[dict, dict]:
    """The repository's run as is (prefix cache and early stopping on by default), then with both off."""
    docs = []
    for variant in ("savings-on", "savings-off"):
        if variant == "savings-off":
            policy = repo / "policies" / "default.yaml"
            policy.write_text(policy.read_text(encoding="utf-8").replace("perplexity:\n", SAVINGS_OFF, 1),
                              encoding="utf-8")
        proc = editgate_run(repo, tmp_path / variant)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        docs.append(json.loads((tmp_path / variant / "report.json").read_text(encoding="utf-8")))
    return docs[0], docs[1]


def assert_same_verdict(fast: dict, full: dict) -> None:
    assert (fast["verdict"], fast["exit_code"]) == (full["verdict"], full["exit_code"])
    assert [(e["id"], e["status"]) for e in fast["edits"]] == [(e["id"], e["status"]) for e in full["edits"]]
    assert (fast.get("culprit") or {}).get("id") == (full.get("culprit") or {}).get("id")
    checks = [e["check"] for e in full["edits"] if e.get("check")]
    assert checks and not any(c["stopped_early"] or c["from_layer"] for c in checks)  # really the full check
    used = [e["check"] for e in fast["edits"] if e.get("check")]
    assert any(c["stopped_early"] for c in used) and all(c["from_layer"] > 0 for c in used)
    for a, b in zip(fast["edits"], full["edits"]):  # a whole-sample check is the same figure either way
        if a.get("check") and not a["check"]["stopped_early"]:
            assert a["ratio"] == pytest.approx(b["ratio"], rel=1e-5)


@pytest.mark.parametrize("strict", [False, True], ids=["demo-policy", "strict-policy"])
def test_check_savings_keep_the_demo_verdicts(strict, tmp_path):
    """The demo under its own policy (passes) and under the strict one (fails on a named edit); the
    benchmark suite is left out: the switches do not touch it."""
    policy = STRICT if strict else (DEMO / "policies" / "default.yaml").read_text(encoding="utf-8")
    policy = policy.replace("suite: builtin:small", "suite: none")
    manifests = {f"edits/{p.name}": p.read_text(encoding="utf-8") for p in (DEMO / "edits").glob("*.yaml")}
    fast, full = run_with_and_without_savings(tmp_path, repo_from_demo(tmp_path, "demo", manifests, policy))
    assert fast["verdict"] == ("failed" if strict else "passed")
    assert_same_verdict(fast, full)


def test_check_savings_keep_the_verdict_of_counterfact_edits(tmp_path):
    """Twelve sequential ROME edits from CounterFact, checked after each on 64 texts (a full check of the
    default 200 texts takes minutes on a CPU), with bands tight enough that the statuses change."""
    records = json.loads(shared_file("counterfact-2k.json").read_text(encoding="utf-8"))[:12]
    policy = gate_policy(samples=64, max_tokens=96, check_every=1, warn_ratio=1.003, fail_ratio=1.02,
                         collapse_ratio=10.0)
    repo = repo_from_demo(tmp_path, "counterfact", {"edits/counterfact-12.json": json.dumps(records, indent=1)},
                          policy)
    config = repo / "editgate.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("edits/**/*.yaml", "edits/*.json"), encoding="utf-8")
    fast, full = run_with_and_without_savings(tmp_path, repo)
    assert len({e["status"] for e in full["edits"]}) >= 2, [e["ratio"] for e in full["edits"]]
    assert_same_verdict(fast, full)
