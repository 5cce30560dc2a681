"""Policy files: the packaged builtin policies, and ranges, typos and counts checked with their lines. Fast; no model
is loaded."""

from __future__ import annotations

import pytest

from editgate.errors import InputError
from editgate.gate import CPU_SAMPLE_TOKENS
from editgate.policy import BUILTIN_POLICIES, builtin_policy_path, load_policy

from helpers import REPO_ROOT, messages, write


def test_builtin_policies_load_and_match_repo_copies():
    default = load_policy("builtin:default")
    assert default.perplexity.warn_ratio == 1.05 and default.perplexity.fail_ratio == 1.10
    assert default.perplexity.collapse_ratio == 10.0 and default.benchmarks.run_at == "end"
    assert default.edits.min_efficacy == 0.9 and default.source == "builtin:default"
    strict, lenient = load_policy("builtin:strict"), load_policy("builtin:lenient")
    assert strict.perplexity.fail_ratio < default.perplexity.fail_ratio < lenient.perplexity.fail_ratio
    assert strict.edits.min_efficacy > default.edits.min_efficacy > lenient.edits.min_efficacy
    for name in BUILTIN_POLICIES:
        copy = REPO_ROOT / "policies" / f"{name}.yaml"
        assert copy.read_text() == builtin_policy_path(name).read_text()
    cpu = load_policy("builtin:cpu")
    assert (cpu.perplexity.warn_ratio, cpu.perplexity.fail_ratio, cpu.perplexity.collapse_ratio, cpu.benchmarks,
            cpu.edits) == (default.perplexity.warn_ratio, default.perplexity.fail_ratio,
                           default.perplexity.collapse_ratio, default.benchmarks, default.edits)
    # the CPU policy's check sample is under the size the gate calls GPU-sized on a CPU; the default's is over
    assert cpu.perplexity.samples * cpu.perplexity.max_tokens <= CPU_SAMPLE_TOKENS
    assert default.perplexity.samples * default.perplexity.max_tokens > CPU_SAMPLE_TOKENS
    with pytest.raises(InputError, match="unknown builtin policy 'strct' \\(did you mean 'strict'\\?\\)"):
        load_policy("builtin:strct")


def test_policy_ranges_and_typos(tmp_path):
    path = write(tmp_path / "p.yaml", """\
perplexity:
  warn_ratio: 1.6
  fail_ratio: 1.5
benchmarks:
  run_at: sometimes
  max_drop: 5
edits:
  min_efficacy: 1.5
  min_localty: 0.9
benchmark: {}
""")
    with pytest.raises(InputError) as e:
        load_policy(path, "policies/p.yaml")
    assert messages(e) == [
        "policies/p.yaml:2: perplexity.warn_ratio (1.6) must not exceed perplexity.fail_ratio (1.5)",
        "policies/p.yaml:5: benchmarks.run_at must be \"end\" or a whole number N from 1 to 1,000,000 "
        "(every N edits), not 'sometimes'",
        "policies/p.yaml:6: benchmarks.max_drop must be a number between 0 and 1, not a number (5)",
        "policies/p.yaml:8: edits.min_efficacy must be a number between 0 and 1, not a number (1.5)",
        "policies/p.yaml:9: edits: unknown key 'min_localty' (did you mean 'min_locality'?)",
        "policies/p.yaml:10: unknown section 'benchmark' (did you mean 'benchmarks'?)",
    ]


def test_policy_ratios_and_counts(tmp_path):
    path = write(tmp_path / "p.yaml", "perplexity:\n  samples: 0\n  fail_ratio: 0.5\n  check_every: 2.5\n"
                                      "  corpus: ../../etc/passwd\n")
    with pytest.raises(InputError) as e:
        load_policy(path, "p.yaml", root=tmp_path)
    got = messages(e)
    assert got[0].startswith("p.yaml:2: perplexity.samples must be a whole number from 1 to 100,000")
    assert got[1].startswith("p.yaml:3: perplexity.fail_ratio must be a number of at least 1")
    assert got[2].startswith("p.yaml:4: perplexity.check_every must be a whole number")
    assert got[3].startswith("p.yaml:5: perplexity.corpus '../../etc/passwd' is outside the repository")
    ok = load_policy(write(tmp_path / "ok.yaml", "benchmarks: {run_at: 10}\nperplexity: {warn_ratio: 1.08}\n"), "ok")
    assert ok.benchmarks.run_at == 10 and ok.perplexity.warn_ratio == 1.08 and ok.perplexity.fail_ratio == 1.10


def test_trend_warning_keys_are_validated_with_their_lines(tmp_path):
    """perplexity.trend_warning (true/false) and trend_horizon (edits, bounded like check_every)."""
    for name, horizon in (("default", 10), ("strict", 20), ("lenient", 5)):
        pp = load_policy(f"builtin:{name}").perplexity
        assert pp.trend_warning is True and pp.trend_horizon == horizon
    path = write(tmp_path / "p.yaml", "perplexity:\n  trend_warning: yes please\n  trend_horizon: 0\n"
                                      "  trend_horizn: 5\n")
    with pytest.raises(InputError) as e:
        load_policy(path, "policies/p.yaml")
    assert messages(e) == [
        "policies/p.yaml:2: perplexity.trend_warning must be true or false, not 'yes please'",
        "policies/p.yaml:3: perplexity.trend_horizon must be a whole number from 1 to 1,000,000, not a number (0)",
        "policies/p.yaml:4: perplexity: unknown key 'trend_horizn' (did you mean 'trend_horizon'?)",
    ]
    for bad in ("2.5", "1000001", "-3", "true", "'10'"):
        with pytest.raises(InputError, match=r"p.yaml:1: perplexity.trend_horizon must be a whole number"):
            load_policy(write(tmp_path / "p.yaml", f"perplexity: {{trend_horizon: {bad}}}\n"), "p.yaml")
    off = load_policy(write(tmp_path / "off.yaml", "perplexity: {trend_warning: false, trend_horizon: 3}\n"), "off")
    assert off.perplexity.trend_warning is False and off.perplexity.trend_horizon == 3


def test_an_invalid_trend_key_exits_2_before_any_model_loads(tiny_repo, tmp_path):
    from helpers import gate_policy, read_json, run_cli

    repo = tiny_repo(policy=gate_policy(trend_horizon="ten"))
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    reasons = read_json(tmp_path / "out" / "report.json")["reasons"]
    assert reasons == ["policies/default.yaml:9: perplexity.trend_horizon must be a whole number from 1 to "
                       "1,000,000, not 'ten'"]
    assert not (tmp_path / "cache").exists()  # nothing was loaded or computed
    validated = run_cli("validate", str(repo))
    assert validated.exit_code == 2 and "policies/default.yaml:9: perplexity.trend_horizon" in validated.output
