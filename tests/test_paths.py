"""Repository paths and manifest globs: paths and links out of the repository refused, manifests found in a fixed
order, and the bounded glob matcher agreeing with `glob.glob`. Fast; no model is loaded."""

from __future__ import annotations

import glob as globlib
from pathlib import Path

import pytest

from editgate import vcs
from editgate.config import load_config
from editgate.errors import InputError

from helpers import messages, write


def test_paths_escaping_repo_rejected(tmp_path):
    repo = tmp_path / "repo"
    write(tmp_path / "outside.yaml", "perplexity: {}\n")
    write(repo / "editgate.yaml", "policy: ../outside.yaml\nmanifests: ['../*.yaml', /etc/*.yaml]\n")
    with pytest.raises(InputError) as e:
        load_config(repo)
    got = messages(e)
    assert got[0] == ("editgate.yaml:1: policy: '../outside.yaml' is outside the repository; "
                      "use a path inside it or builtin:<name>")
    assert got[1].startswith("editgate.yaml:2: manifests: '../*.yaml' is outside the repository")


def test_symlinked_manifest_outside_repo_rejected(tmp_path):
    repo = tmp_path / "repo"
    secret = write(tmp_path / "secret.yaml", "edits: []\n")
    (repo / "edits").mkdir(parents=True)
    (repo / "edits" / "link.yaml").symlink_to(secret)
    with pytest.raises(InputError, match="edits/link.yaml: is a link to a file outside the repository"):
        load_config(repo).manifest_paths()


def test_manifest_paths_sorted_across_nested_dirs(tmp_path):
    for name in ["edits/b.yaml", "edits/a/z.yaml", "edits/a.yaml", "edits/2026/01-x.yaml", "edits/c.txt",
                 "other/o.yaml"]:
        write(tmp_path / name, "edits: []\n")
    write(tmp_path / "editgate.yaml", "manifests: [edits/**/*.yaml, edits/a.yaml, other/*.yaml]\n")
    paths = load_config(tmp_path).manifest_paths()
    assert [p.relative_to(tmp_path.resolve()).as_posix() for p in paths] == [
        "edits/2026/01-x.yaml", "edits/a.yaml", "edits/a/z.yaml", "edits/b.yaml", "other/o.yaml"]


# --- manifest globs, on the work tree and on a git ref's file list ----------------------------------


@pytest.mark.parametrize("pattern", ["edits/**/*.yaml", "edits/*.yaml", "**/*.y*ml", "edits/**", "e?its/[ab]*.yaml",
                                     "edits/[!a]*.yaml", "edits/sub/**/*.yaml", "*.yaml"])
def test_glob_match_agrees_with_glob(tmp_path, pattern):
    for relative in ("edits/a.yaml", "edits/b.yml", "edits/c.yaml", "edits/.hidden.yaml", "edits/sub/d.yaml",
                     "edits/sub/deep/e.yaml", "edits/.dir/f.yaml", "top.yaml", "other/g.yaml"):
        write(tmp_path / relative, "x")
    found = {Path(m).as_posix() for m in globlib.glob(pattern, root_dir=tmp_path, recursive=True)
             if (tmp_path / m).is_file()}
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {f for f in files if vcs.glob_match(pattern, f)} == found
