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


# --- the trend warning (editgate/trend.py) ---------------------------------------------------------------

LANDMARKS = ["The Eiffel Tower", "The Kremlin", "The Taj Mahal", "Big Ben", "The Colosseum", "Mount Fuji",
             "The Louvre", "The Parthenon", "The Alhambra", "Angkor Wat", "Machu Picchu", "The Acropolis",
             "Stonehenge", "The Sphinx", "Petra", "Chichen Itza", "The Alamo", "The Pentagon", "Niagara Falls",
             "The Vatican", "Hagia Sophia", "The Forbidden City"]
CITIES = ["Rome", "London", "Cairo", "Paris", "Tokyo", "Berlin", "Madrid", "Lima", "Oslo", "Vienna"]
# FT-L clamped to ±bound around the weights: the damage of one edit grows with its bound, so a rising bound
# gives the gradual-then-catastrophic curve on the trained tiny model: x0.98 after twelve edits, then x1.00,
# x1.02, x1.08, x1.19 (e15: the warning, 5.4 edits projected), x1.17, x1.43 and x1.97 at e18, the culprit.
ESCALATING = [0.001] * 10 + [0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.011, 0.012, 0.013]


def ft_manifest(bounds: list[float]) -> str:
    """One FT-L edit per bound, each on its own landmark (six lines per edit, the first at line 2)."""
    lines = ["edits:"]
    for i, bound in enumerate(bounds):
        lines += [f"  - id: e{i:02d}", '    prompt: "{} is located in the city of"', f"    subject: {LANDMARKS[i]}",
                  f"    target: {CITIES[i % len(CITIES)]}", "    method: ft",
                  f"    hparams: {{lr: 1.0, steps: 3, early_stop_nll: 0.0, norm_constraint: {bound}}}"]
    return "\n".join(lines) + "\n"


def trend_repo(tiny_repo, name: str, manifest: str, trend_warning: str = "true") -> Path:
    from helpers import gate_policy

    policy = gate_policy(warn_ratio=1.2, fail_ratio=1.5, collapse_ratio=1000.0, trend_warning=trend_warning,
                         trend_horizon=10)
    return tiny_repo(name=name, trained=True, manifests={"edits/2026-04-01-ramp.yaml": manifest}, policy=policy)


def test_the_trend_warning_fires_before_the_fail_and_never_fails_the_gate(tiny_repo, tmp_path):
    import xml.etree.ElementTree as ET

    from editgate.reports import schema_path

    # the whole ramp: the warning comes edits before fail_ratio is crossed
    code, doc = gate(trend_repo(tiny_repo, "ramp", ft_manifest(ESCALATING)), tmp_path / "ramp")
    assert code == 1
    ids = [e["id"] for e in doc["edits"]]
    fired = [e["id"] for e in doc["edits"] if (e["trend"] or {}).get("fired")]
    culprit = ids.index(doc["culprit"]["id"])
    assert fired and ids.index(fired[0]) < culprit - 1, (fired, doc["culprit"])
    first = doc["edits"][ids.index(fired[0])]
    assert first["status"] in ("pass", "warn") and 0 < first["trend"]["edits_left"] <= 10
    assert all(e["trend"] is None for e in doc["edits"][:11])  # twelve checks before the first assessment

    # the ramp stopped after the first warning: the gate passes, with the warning, its line and projection
    stop = ids.index(fired[0]) + 1
    code, passed = gate(trend_repo(tiny_repo, "upto", ft_manifest(ESCALATING[:stop])), tmp_path / "upto")
    assert code == 0 and passed["verdict"] == "passed" and passed["culprit"] is None
    line = 2 + 6 * (stop - 1)
    warning = next(w for w in passed["warnings"] if w.startswith("perplexity trend"))
    assert f"edit '{fired[0]}' (edits/2026-04-01-ramp.yaml:{line})" in warning
    assert f"projected in {first['trend']['edits_left']:.1f} edit(s)" in warning
    jsonschema = __import__("pytest").importorskip("jsonschema")
    jsonschema.validate(passed, json.loads(schema_path().read_text(encoding="utf-8")))
    trend_check = next(c for c in passed["checks"] if c["kind"] == "trend")
    assert trend_check["status"] == "warn" and trend_check["edit"] == fired[0]
    markdown = (tmp_path / "upto" / "report.md").read_text(encoding="utf-8")
    assert "📈" in markdown and "perplexity trend: the increments accelerate" in markdown
    junit = ET.parse(tmp_path / "upto" / "junit.xml").getroot()
    case = next(c for c in junit.iter("testcase") if c.get("name") == "perplexity trend")
    assert case.find("failure") is None and "accelerate" in case.find("system-out").text
    assert junit.get("failures") == "0"

    # a second run restores the stored state: the trend records come back as they were
    _, again = gate(trend_repo(tiny_repo, "upto", ft_manifest(ESCALATING[:stop])), tmp_path / "again")
    assert again["restored"]["edits"] == stop
    assert [e["trend"] for e in again["edits"]] == [e["trend"] for e in passed["edits"]]
    assert again["warnings"] == passed["warnings"]

    # switched off: no assessment, no warning
    code, off = gate(trend_repo(tiny_repo, "off", ft_manifest(ESCALATING[:stop]), "false"), tmp_path / "off")
    assert code == 0 and all(e["trend"] is None for e in off["edits"])
    assert not any(w.startswith("perplexity trend") for w in off["warnings"])


def test_a_healthy_sequence_does_not_warn(tiny_repo, tmp_path):
    """Sixteen mild ROME edits (one optimisation step at a small rate): ratios wandering within a few percent
    of x1. Assessed from the twelfth check on, never accelerating, no warning. The briefly trained tiny model
    differs between CPUs, and so do its keys: at rate 1.0 two of these edits moved perplexity x1.06 and
    x1.72 on one machine and stayed within x0.98 to x1.01 on another; at 0.03 they stay within x0.99 to x1.04."""
    rome = textwrap.dedent("""\
          - id: r{i:02d}
            prompt: "{{}} is located in the city of"
            subject: {subject}
            target: {city}
            hparams: {{v_steps: 1, v_lr: 0.03}}
        """)
    manifest = "edits:\n" + "".join(rome.format(i=i, subject=LANDMARKS[i], city=CITIES[i % len(CITIES)])
                                    for i in range(16))
    code, doc = gate(trend_repo(tiny_repo, "healthy", manifest), tmp_path / "healthy")
    assert code == 0 and doc["verdict"] == "passed", [round(e["ratio"], 3) for e in doc["edits"]]
    assessed = [e["trend"] for e in doc["edits"] if e["trend"] is not None]
    assert len(assessed) == 5 and not any(t["fired"] or t["accelerating"] for t in assessed)
    assert not any(w.startswith("perplexity trend") for w in doc["warnings"])
    assert not any(c["kind"] == "trend" for c in doc["checks"])
