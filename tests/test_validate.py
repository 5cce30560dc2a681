"""Every input together: `load_inputs` (config, policy and manifests of a repository, every problem listed) and
`validate_paths` (what `editgate validate` checks). Fast; no model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from editgate.errors import InputError
from editgate.policy import Policy, builtin_policy_path
from editgate.validate import load_inputs, validate_paths

from helpers import GOOD_EDIT, messages, write


def make_repo(root: Path) -> Path:
    write(root / "editgate.yaml", "method: rome\npolicy: policies/default.yaml\n")
    write(root / "policies/default.yaml", builtin_policy_path("default").read_text())
    write(root / "edits/2026-11-01-capitals.yaml", "edits:\n" + GOOD_EDIT.format(id="eiffel"))
    return root


def test_load_inputs_ok(tmp_path):
    config, policy, edits = load_inputs(make_repo(tmp_path))
    assert isinstance(policy, Policy) and policy.source == "policies/default.yaml"
    assert [e.id for e in edits] == ["eiffel"] and edits[0].source == "edits/2026-11-01-capitals.yaml"
    _, strict, _ = load_inputs(tmp_path, policy_override="builtin:strict")
    assert strict.perplexity.fail_ratio == 1.05


def test_load_inputs_collects_problems_from_all_inputs(tmp_path):
    make_repo(tmp_path)
    write(tmp_path / "editgate.yaml", "method: rome\nseed: -1\n")
    write(tmp_path / "policies/default.yaml", "perplexity: {samples: many}\n")
    write(tmp_path / "edits/z.yaml", "edits:\n  - id: eiffel\n")
    with pytest.raises(InputError) as e:
        load_inputs(tmp_path)
    got = messages(e)
    assert got[0].startswith("editgate.yaml:2: seed: must be a whole number from 0 to 4294967295")
    assert got[1].startswith("policies/default.yaml:1: perplexity.samples must be a whole number")
    assert "edits/z.yaml:2: edit 'eiffel': duplicate id, already used at edits/2026-11-01-capitals.yaml:2; " \
           "ids must be unique" in got
    assert "edits/z.yaml:2: edit 'eiffel': 'target' is required" in got


def test_load_inputs_no_manifests(tmp_path):
    with pytest.raises(InputError, match=r"manifests: no file matches 'edits/\*\*/\*\.yaml' \(the default"):
        load_inputs(tmp_path)


def test_validate_paths_classifies_files(tmp_path):
    repo = make_repo(tmp_path / "repo")
    policy = write(tmp_path / "mine.yaml", "edits: {min_efficacy: 0.5}\n")
    manifest = write(tmp_path / "more.yaml", "edits:\n" + GOOD_EDIT.format(id="other"))
    result = validate_paths([repo, policy, manifest])
    assert len(result.repos) == 1 and len(result.policies) == 1 and result.manifest_files == 1
    assert result.policies[0].edits.min_efficacy == 0.5 and result.edit_count == 2
    broken = write(tmp_path / "broken.yaml", "edits:\n  - id: x\n")
    with pytest.raises(InputError) as e:
        validate_paths([str(broken), str(tmp_path / "missing.yaml")])
    got = messages(e)
    assert got[0] == f"{tmp_path / 'missing.yaml'}: does not exist"
    assert f"{broken}:2: edit 'x': 'prompt' is required" in got


def test_validate_imports_neither_torch_nor_transformers(tmp_path):
    """`editgate validate` is the pre-commit hook and the first CI step: it checks every hyperparameter of
    every method, the policy and its benchmark suite without the seconds torch takes to import."""
    import subprocess
    import sys

    repo = make_repo(tmp_path / "repo")
    write(repo / "edits/2026-11-02-more.yaml", "method: memory\nhparams: {encoder: base}\nedits:\n"
          + GOOD_EDIT.format(id="kremlin"))
    script = ("import sys\nfrom editgate.cli import main\n"
              "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit as done:\n    code = done.code\n"
              "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stdout
