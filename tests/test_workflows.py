"""`editgate init`, and the files that put editgate in CI: the sample workflow (the init template), the project's CI
workflow, the composite action and the pre-commit hook."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from helpers import REPO_ROOT, TINY_ROME, gate_policy, read_json, run_cli, write, yaml_hparams


def test_init_then_validate_then_run(tmp_path, tiny_model_dir):
    target = tmp_path / "new-repo"
    result = run_cli("init", str(target))
    assert result.exit_code == 0, result.output
    manifests = list((target / "edits").glob("*-example.yaml"))
    assert len(manifests) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d-example\.yaml", manifests[0].name)
    for relative in ("editgate.yaml", "policies/default.yaml", "policies/cpu.yaml", "policies/strict.yaml",
                     "policies/lenient.yaml", ".github/workflows/editgate.yml"):
        assert (target / relative).is_file(), relative
    assert (target / ".github/workflows/editgate.yml").read_bytes() == \
        (REPO_ROOT / ".github/workflows/editgate.yml").read_bytes()
    assert (target / "policies/strict.yaml").read_bytes() == (REPO_ROOT / "editgate/policies/strict.yaml").read_bytes()

    result = run_cli("validate", str(target))
    assert result.exit_code == 0 and "ok: 1 edits valid" in result.stdout

    # nothing is overwritten without --force, and every conflict is named
    (target / "editgate.yaml").write_text("model: mine\n")
    result = run_cli("init", str(target))
    assert result.exit_code == 2 and "editgate.yaml: already exists" in result.stderr
    assert "policies/lenient.yaml: already exists" in result.stderr
    assert (target / "editgate.yaml").read_text() == "model: mine\n"
    assert run_cli("init", str(target), "--force").exit_code == 0
    assert (target / "editgate.yaml").read_text().startswith("# editgate configuration")

    # and it runs: on a tiny model, with ROME sized for it and a small perplexity sample
    with (target / "editgate.yaml").open("a") as handle:
        handle.write(f"hparams: {{rome: {yaml_hparams(TINY_ROME)}}}\n")
    small = write(tmp_path / "small-policy.yaml", gate_policy(warn_ratio=5.0, fail_ratio=10.0,
                                                             collapse_ratio=100.0))
    result = run_cli("run", "--repo", str(target), "--model", str(tiny_model_dir("llama", 4)), "--device", "cpu",
                     "--dtype", "float32", "--policy", str(small), "--out", str(tmp_path / "out"), "--quiet",
                     env={"HOME": str(tmp_path / "home"), "EDITGATE_CACHE_DIR": ""})
    assert result.exit_code == 0, result.output
    doc = read_json(tmp_path / "out" / "report.json")
    assert [e["id"] for e in doc["edits"]] == ["example-eiffel-tower-city"] and doc["verdict"] == "passed"
    assert (tmp_path / "home" / ".cache" / "editgate").is_dir()  # the default cache, under HOME


# --- workflow, action and pre-commit files ----------------------------------------------------------


def _load(relative: str) -> dict:
    data = yaml.safe_load((REPO_ROOT / relative).read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as true
        data["on"] = data.pop(True)
    return data


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_the_sample_workflow_is_the_init_template():
    assert (REPO_ROOT / ".github/workflows/editgate.yml").read_bytes() == \
        (REPO_ROOT / "editgate/templates/editgate-workflow.yml").read_bytes()


def test_sample_workflow_structure():
    text = (REPO_ROOT / ".github/workflows/editgate.yml").read_text(encoding="utf-8")
    workflow = _load(".github/workflows/editgate.yml")
    assert set(workflow["on"]) == {"pull_request", "push"}
    assert {"edits/**", "policies/**", "editgate.yaml"} <= set(workflow["on"]["pull_request"]["paths"])
    # the default branch warms the cache with its edited state for the pull requests based on it
    assert workflow["on"]["push"] == {"branches": ["main"], "paths": workflow["on"]["pull_request"]["paths"]}
    job = workflow["jobs"]["gate"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert "head.repo.full_name == github.repository" in job["if"]  # fork PRs are skipped
    assert re.search(r"self-hosted runners? must never run pull requests from forks", text, re.I | re.S)
    steps = _steps(workflow)
    uses = [s.get("uses", "") for s in steps]
    checkout = steps[uses.index(next(u for u in uses if u.startswith("actions/checkout@")))]
    assert checkout["with"]["fetch-depth"] == 0
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/editgate"
    assert "steps.keys.outputs.model" in cache["with"]["key"] and "steps.keys.outputs.version" in cache["with"]["key"]
    assert cache["with"]["key"].endswith("-${{ github.sha }}")  # each commit its entry; pull requests restore:
    assert cache["with"]["restore-keys"].strip() == cache["with"]["key"].removesuffix("${{ github.sha }}")
    run = next(s for s in steps if "editgate run" in s.get("run", ""))
    assert re.search(r'editgate run --base-ref "origin/\$BASE_REF" --out editgate-report', run["run"])
    assert run["env"]["BASE_REF"] == "${{ github.base_ref }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"].startswith("editgate-report")
    comment = next(s for s in steps if s.get("uses", "").startswith("actions/github-script@"))
    assert comment["if"].startswith("always()") and "github.event_name == 'pull_request'" in comment["if"]
    script = comment["with"]["script"]
    assert "<!-- editgate-report -->" in script and "updateComment" in script and "createComment" in script
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_no_expression_is_interpolated_into_a_shell_script():
    """`${{ }}` inside `run:` is a script-injection hazard; values go through env instead."""
    for relative in (".github/workflows/editgate.yml", ".github/workflows/ci.yml", "action.yml"):
        data = _load(relative)
        steps = _steps(data) if "jobs" in data else data["runs"]["steps"]
        for step in steps:
            assert "${{" not in step.get("run", ""), (relative, step.get("name"))


def test_project_ci_workflow():
    workflow = _load(".github/workflows/ci.yml")
    job = workflow["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.11"
    assert any(s.get("run", "").strip() == "make test" for s in steps)


def test_composite_action():
    action = _load("action.yml")
    assert action["runs"]["using"] == "composite"
    assert {"repo", "policy", "out", "base-ref"} <= set(action["inputs"])
    for name in ("verdict", "culprit", "report"):
        assert action["outputs"][name]["value"] == f"${{{{ steps.run.outputs.{name} }}}}"
    run = next(s for s in action["runs"]["steps"] if s.get("id") == "run")
    assert all(s.get("shell") == "bash" for s in action["runs"]["steps"])
    assert '--base-ref "$INPUT_BASE_REF"' in run["run"] and run["env"]["INPUT_BASE_REF"] == "${{ inputs.base-ref }}"


def test_pre_commit_hook():
    hooks = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == "editgate-validate")
    assert hook["entry"] == "editgate validate" and hook["pass_filenames"] is False
    pattern = re.compile(hook["files"])
    for path in ("edits/2026-01-01-a.yaml", "edits/sub/b.yml", "policies/default.yaml", "editgate.yaml",
                 "editgate.yml"):
        assert pattern.search(path), path
    for path in ("src/edits.py", "README.md", "edits/notes.txt", "myeditgate.yaml"):
        assert not pattern.search(path), path


def test_workflows_pass_actionlint():
    binary = shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint is not installed (the structural tests above still ran)")
    proc = subprocess.run([binary, "-no-color", ".github/workflows/editgate.yml", ".github/workflows/ci.yml"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
