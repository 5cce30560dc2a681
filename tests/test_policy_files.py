"""Policy files: the packaged builtin policies, and ranges, typos and counts checked with their lines. Fast; no model
is loaded."""

from __future__ import annotations

import pytest

from editgate.errors import InputError
from editgate.policy import BUILTIN_POLICIES, builtin_policy_path, load_policy

from helpers import REPO_ROOT, messages, write


def test_builtin_policies_load_and_match_repo_copies():
    default = load_policy("builtin:default")
    assert default.perplexity.warn_ratio == 1.10 and default.perplexity.fail_ratio == 1.50
    assert default.perplexity.collapse_ratio == 10.0 and default.benchmarks.run_at == "end"
    assert default.edits.min_efficacy == 0.9 and default.source == "builtin:default"
    strict, lenient = load_policy("builtin:strict"), load_policy("builtin:lenient")
    assert strict.perplexity.fail_ratio < default.perplexity.fail_ratio < lenient.perplexity.fail_ratio
    assert strict.edits.min_efficacy > default.edits.min_efficacy > lenient.edits.min_efficacy
    for name in BUILTIN_POLICIES:
        copy = REPO_ROOT / "policies" / f"{name}.yaml"
        assert copy.read_text() == builtin_policy_path(name).read_text()
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
    ok = load_policy(write(tmp_path / "ok.yaml", "benchmarks: {run_at: 10}\nperplexity: {warn_ratio: 1.2}\n"), "ok")
    assert ok.benchmarks.run_at == 10 and ok.perplexity.warn_ratio == 1.2 and ok.perplexity.fail_ratio == 1.5
