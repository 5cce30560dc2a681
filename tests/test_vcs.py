"""git: --base-ref (edits new in a pull request, by content; bad refs refused before a model loads), the edits at a ref,
and repository web links."""

from __future__ import annotations

import json
import shutil

import pytest

from editgate import vcs

from helpers import BASE_MANIFEST, NEW_MANIFEST, git, read_json, run_cli, write


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_base_ref_marks_new_edits_by_content(ci_run):
    doc = ci_run["doc"]
    new = {e["id"]: e["new"] for e in doc["edits"]}
    # eiffel-rome was only moved and reformatted; kremlin-london changed its target; extreme is new
    assert new == {"kremlin-london": True, "eiffel-rome": False, "extreme": True}
    base = git(ci_run["ws"], "rev-parse", "HEAD~1").strip()
    assert doc["base_ref"] == {"ref": "HEAD~1", "commit": base, "manifests": 1, "new_edits": 2}
    markdown = (ci_run["out"] / "report.md").read_text(encoding="utf-8")
    assert "**New in this change** (compared with `HEAD~1`" in markdown and "2 of 3 edits" in markdown
    rows = {line.split("`")[1]: line for line in markdown.splitlines() if line.startswith("| ") and "`" in line}
    assert "🆕" in rows["kremlin-london"] and "🆕" in rows["extreme"] and "🆕" not in rows["eiffel-rome"]


@needs_git
def test_edits_at_ref_follows_moves_and_ignores_broken_files(tmp_path):
    repo = tmp_path / "r"
    write(repo / "edits" / "a.yaml", BASE_MANIFEST)
    write(repo / "edits" / "broken.yaml", "edits: [\n")
    write(repo / "edits" / "cf.json", json.dumps([{"case_id": 7, "prompt": "{} plays", "subject": "Messi",
                                                    "target_new": "tennis", "ground_truth": "football"}]))
    write(repo / "notes" / "x.yaml", NEW_MANIFEST)  # not matched by the manifest globs
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "edits" / "sub").mkdir()
    shutil.move(repo / "edits" / "a.yaml", repo / "edits" / "sub" / "moved.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "move")
    base = vcs.edits_at_ref(repo, ["edits/**/*.yaml", "edits/*.json"], "rome", "HEAD~1")
    assert base.files == ["edits/a.yaml", "edits/broken.yaml", "edits/cf.json"]
    from editgate.validate import load_inputs

    write(repo / "editgate.yaml", "manifests: [edits/**/*.yaml, edits/*.json]\n")
    write(repo / "edits" / "broken.yaml", NEW_MANIFEST)
    write(repo / "edits" / "cf.json", json.dumps([{"case_id": 7, "prompt": "{} plays", "subject": "Messi",
                                                    "target_new": "golf", "ground_truth": "football"}]))
    _, _, edits = load_inputs(repo)
    assert {e.id: base.is_new(e) for e in edits} == {"extreme": True, "case-7": True, "eiffel-rome": False,
                                                      "kremlin-london": False}


def test_bad_base_ref_exits_2_before_loading_a_model(pr_workspace, tmp_path):
    _, _, gated = pr_workspace
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out"), "--base-ref", "no-such-branch")
    assert result.exit_code == 2
    assert "--base-ref no-such-branch: git cannot find the commit 'no-such-branch'" in result.stderr
    assert "fetch-depth: 0" in result.stderr and "Traceback" not in result.output
    doc = read_json(tmp_path / "out" / "report.json")
    assert doc["verdict"] == "invalid" and doc["environment"] == {} and doc["repository"]["path"] == "gated"
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out2"), "--base-ref", "--upload-pack=x")
    assert result.exit_code == 2 and "is not a git ref" in result.stderr


def test_base_ref_outside_git_exits_2(tiny_repo, tmp_path):
    result = run_cli("run", "--repo", str(tiny_repo()), "--out", str(tmp_path / "out"), "--base-ref", "main")
    assert result.exit_code == 2 and "not inside a git work tree" in result.stderr


def test_web_url_drops_credentials():
    assert vcs.web_url("git@github.com:octo/models.git") == "https://github.com/octo/models"
    assert vcs.web_url("ssh://git@gitlab.example.com/group/sub/repo.git") == "https://gitlab.example.com/group/sub/repo"
    assert vcs.web_url("https://user:secret@github.com/octo/models.git") == "https://github.com/octo/models"
    assert vcs.web_url("/srv/git/models") is None
