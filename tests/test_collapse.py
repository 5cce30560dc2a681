"""Collapse detection on tiny models: bisection names the same culprit as checking every edit,
--confirm re-runs without it, risky updates are flagged, baselines come from the cache the second
time, and the benchmark suite runs at checkpoints."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from editgate.cli import main

NOOP = "hparams: {v_steps: 0}"  # no optimisation step: a zero update, perplexity exactly unchanged
MANIFEST = textwrap.dedent(f"""\
    edits:
      - id: noop-1
        prompt: "{{}} is located in the city of"
        subject: The Eiffel Tower
        target: Rome
        {NOOP}
      - id: noop-2
        prompt: "{{}} is located in the city of"
        subject: The Kremlin
        target: London
        {NOOP}
      - id: extreme
        prompt: "{{}} is located in the country of"
        subject: The Taj Mahal
        target: Egypt
        hparams: {{clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0, kl_factor: 0}}
      - id: noop-3
        prompt: "{{}} was founded by"
        subject: Microsoft
        target: Steve Jobs
        {NOOP}
      - id: noop-4
        prompt: "{{}} plays the sport of"
        subject: Lionel Messi
        target: tennis
        {NOOP}
    """)
POLICY = """\
perplexity:
  samples: 8
  max_tokens: 64
  check_every: {check_every}
  warn_ratio: 1.0
  fail_ratio: 1.0001
  collapse_ratio: 1000000.0
benchmarks:
  suite: {suite}
  run_at: {run_at}
edits:
  min_efficacy: 0.0
  min_generalization: 0.0
  min_locality: 0.0
"""


def gate(repo: Path, out: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(out), "--quiet", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads((out / "report.json").read_text())


def repo_with(tiny_repo, name: str, check_every: int = 1, suite: str = "none", run_at: str = "end",
              manifest: str = MANIFEST) -> Path:
    return tiny_repo(name=name, manifests={"edits/2026-03-01-seq.yaml": manifest},
                     policy=POLICY.format(check_every=check_every, suite=suite, run_at=run_at))


def test_bisection_names_the_same_culprit_as_checking_every_edit(tiny_repo, tmp_path):
    code_every, every = gate(repo_with(tiny_repo, "every", check_every=1), tmp_path / "every")
    code_sparse, sparse = gate(repo_with(tiny_repo, "sparse", check_every=5), tmp_path / "sparse")

    assert code_every == code_sparse == 1
    assert every["culprit"]["id"] == sparse["culprit"]["id"] == "extreme"
    assert every["culprit"]["line"] == sparse["culprit"]["line"] > 1
    bisected = {e["id"]: e["found_by_bisection"] for e in sparse["edits"]}
    assert bisected["extreme"] and not any(v for k, v in bisected.items() if k != "extreme")
    assert not any(e["found_by_bisection"] for e in every["edits"])
    # replaying after exact undo reaches the same weights: the last check agrees to the bit
    assert every["edits"][-1]["perplexity"] == sparse["edits"][-1]["perplexity"]
    # the no-op edits before the culprit passed with a ratio of exactly 1
    assert [e["ratio"] for e in every["edits"][:2]] == [1.0, 1.0]


def test_confirm_reruns_without_the_culprit(tiny_repo, tmp_path):
    code, doc = gate(repo_with(tiny_repo, "confirm"), tmp_path / "out", "--confirm")
    assert code == 1
    assert doc["confirmation"]["without"] == "extreme"
    assert doc["confirmation"]["rest_passes"] is True
    assert doc["confirmation"]["worst_ratio"] == 1.0
    assert "without `extreme` the rest of the sequence passes" in (tmp_path / "out" / "report.md").read_text()
    # what the run saved is its own model, culprit included, not the confirmation's replay without it
    from editgate.export import read_pack

    _, metadata = read_pack(tmp_path / "out" / "edits.safetensors")
    assert "extreme" in metadata["edits"]


def test_risky_update_is_flagged_before_any_check(tiny_repo, tmp_path):
    _, doc = gate(repo_with(tiny_repo, "risk"), tmp_path / "out")
    risk = {e["id"]: e["risk"] for e in doc["edits"]}
    assert risk["extreme"] and "weight's norm" in risk["extreme"][0]
    assert risk["noop-1"] == []
    assert any("risky edit 'extreme'" in w for w in doc["warnings"])


def test_second_run_reads_the_baseline_from_the_cache(tiny_repo, tmp_path):
    repo = repo_with(tiny_repo, "cache", suite="builtin:small")
    _, first = gate(repo, tmp_path / "first")
    _, second = gate(repo, tmp_path / "second")
    assert first["cached"] == []
    assert {"perplexity", "benchmarks", "edit-answers"} <= set(second["cached"])
    assert second["baseline"]["perplexity"] == first["baseline"]["perplexity"]
    assert second["timings"]["baseline_perplexity"] == 0.0 < first["timings"]["baseline_perplexity"]
    assert second["benchmarks"]["baseline"] == first["benchmarks"]["baseline"]
    assert "from the cache" in (tmp_path / "second" / "report.md").read_text()
    _, fresh = gate(repo, tmp_path / "fresh", "--no-cache")
    assert fresh["cached"] == []


def test_benchmarks_run_at_checkpoints(tiny_repo, tmp_path):
    noops = "\n".join(line for line in MANIFEST.splitlines())
    noops = noops.replace("hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0, kl_factor: 0}", NOOP)
    code, doc = gate(repo_with(tiny_repo, "bench", suite="builtin:small", run_at="2", manifest=noops),
                     tmp_path / "out")
    points = doc["benchmarks"]["checkpoints"]
    assert [p["edits"] for p in points] == [2, 4, 5]
    for point in points:  # no-op edits: every task exactly as before
        assert {c["task"] for c in point["benchmarks"]} == set(doc["benchmarks"]["baseline"])
        assert all(c["drop"] == 0 and not c["failed"] for c in point["benchmarks"])
    assert code == 0 and doc["verdict"] == "passed"
    assert any(c["kind"] == "benchmark" for c in doc["checks"])
    assert "Benchmarks before and after" in (tmp_path / "out" / "report.md").read_text()
