"""What git knows about the gated repository: where it sits in its git repository, its web address and
commit (for links in reports and paths in CI annotations), and the edits it had at another ref
(`--base-ref`, so a report can say which edits a pull request adds).

git is only ever run with argument lists (no shell), read-only, and on the operator's ref; manifest
blobs read from a ref go through the same bounded, safe YAML loader as files in the work tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from editgate.errors import InputError, Problem
from editgate.globbing import glob_match, relative_pattern
from editgate.manifests import Edit, ManifestCollector, edit_fingerprint
from editgate.yamlio import MAX_BYTES, load_yaml

GIT_TIMEOUT = 60


class GitError(Exception):
    pass


def _git(cwd: Path, *args: str, binary: bool = False) -> Any:
    if shutil.which("git") is None:
        raise GitError("git is not installed")
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, timeout=GIT_TIMEOUT,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GitError(f"git {args[0]}: {error}") from None
    if proc.returncode != 0:
        raise GitError(proc.stderr.decode("utf-8", "replace").strip() or f"git {args[0]} failed")
    return proc.stdout if binary else proc.stdout.decode("utf-8", "replace")


@dataclass
class GitLocation:
    """The gated directory inside its git repository."""

    top: Path  # the git work tree's root
    prefix: str  # the gated directory relative to `top`, POSIX, "" or ending in "/"


def locate(root: Path) -> GitLocation | None:
    """Where `root` sits in its git work tree, or None when it is not in one (or git is missing)."""
    try:
        return _locate(root)
    except GitError:
        return None


def _locate(root: Path) -> GitLocation:
    top = _git(root, "rev-parse", "--show-toplevel").strip()
    prefix = _git(root, "rev-parse", "--show-prefix").strip()
    return GitLocation(Path(top), prefix)


def in_repository(prefix: str, file: str) -> str:
    """A repository-relative manifest path as a path from the git root (what annotations need)."""
    return (PurePosixPath(prefix) / file).as_posix() if prefix else file


# --- repository information for reports -------------------------------------------------------------


def web_url(remote: str) -> str | None:
    """An https address for a git remote (credentials dropped), or None when it has none."""
    remote = remote.strip()
    match = re.match(r"^(?:ssh://)?[\w.-]+@([\w.-]+)[:/](.+?)(?:\.git)?/?$", remote)  # git@host:o/r, ssh://git@host/o/r
    if match and not remote.startswith(("http://", "https://")):
        return f"https://{match.group(1)}/{match.group(2).lstrip('/')}"
    match = re.match(r"^https?://(?:[^@/]+@)?([^/]+)/(.+?)(?:\.git)?/?$", remote)
    if match:
        return f"https://{match.group(1)}/{match.group(2)}"
    return None


def repository_info(root: Path, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """`{url, commit, path, dirty}` for report links and annotations, or None outside a git work tree.

    On GitHub Actions the address comes from GITHUB_SERVER_URL/GITHUB_REPOSITORY; elsewhere from the
    `origin` remote. `commit` is the checked-out commit (on a pull request, GitHub's merge commit, whose
    lines are the ones that ran); `path` is the gated directory relative to the git root.
    """
    env = os.environ if env is None else env
    location = locate(root)
    if location is None:
        return None
    url = None
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_REPOSITORY"):
        url = f"{env.get('GITHUB_SERVER_URL', 'https://github.com').rstrip('/')}/{env['GITHUB_REPOSITORY']}"
    else:
        try:
            url = web_url(_git(root, "remote", "get-url", "origin"))
        except GitError:
            url = None
    try:
        commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD").strip() or None
    except GitError:
        commit = None  # a repository without commits yet
    try:
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", ".").strip())
    except GitError:
        dirty = False
    return {"url": url, "commit": commit, "path": location.prefix.rstrip("/"), "dirty": dirty}


def source_link(repository: dict[str, Any] | None, file: str, line: int | None) -> str | None:
    """A web link to a manifest line at the report's commit, when the address and commit are known."""
    if not repository or not repository.get("url") or not repository.get("commit") or not file:
        return None
    path = in_repository(repository.get("path") or "", file)
    anchor = f"#L{line}" if line else ""
    return f"{repository['url']}/blob/{repository['commit']}/{path}{anchor}"


# --- edits at a base ref ----------------------------------------------------------------------------


@dataclass
class BaseEdits:
    ref: str
    commit: str
    files: list[str]  # manifests found at the ref (relative to the gated directory)
    fingerprints: set[str]

    def is_new(self, edit: Edit) -> bool:
        return edit_fingerprint(edit) not in self.fingerprints

    def summary(self, edits: list[Edit]) -> dict[str, Any]:
        new = sum(self.is_new(e) for e in edits)
        return {"ref": self.ref, "commit": self.commit, "manifests": len(self.files), "new_edits": new}


def edits_at_ref(root: Path, patterns: list[str], default_method: str, ref: str) -> BaseEdits:
    """The edits the gated directory's manifests held at `ref`.

    Manifests are the files at `ref` matching today's `manifests:` globs (so a manifest moved or
    renamed still counts), parsed with the same loader; a file that does not parse there contributes
    no edits (its edits count as new). Raises InputError for a ref git cannot resolve.
    """
    shown = f"--base-ref {ref}"
    if not ref or ref.startswith("-"):
        raise InputError(Problem(shown, None, "is not a git ref"))
    try:
        location = _locate(root)
    except GitError as error:
        reason = str(error)
        if "not a git repository" in reason.lower():
            reason = f"{root} is not inside a git work tree"
        raise InputError(Problem(shown, None, f"cannot compare with a git ref: {reason}")) from None
    try:
        commit = _git(location.top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    except GitError:
        commit = ""
    if not commit:
        hint = " (in a shallow CI checkout, fetch it first: actions/checkout with fetch-depth: 0, " \
               "or git fetch origin <branch>)"
        raise InputError(Problem(shown, None, f"git cannot find the commit {ref!r}{hint}"))
    files = _files_at(location, commit, patterns, root)
    collector = ManifestCollector()
    with tempfile.TemporaryDirectory(prefix="editgate-base-") as tmp:
        for relative, blob in files:
            text = _blob(location.top, blob)
            if text is None:
                continue
            scratch = Path(tmp) / f"manifest{PurePosixPath(relative).suffix}"  # the suffix picks JSON or YAML
            scratch.write_bytes(text)
            try:
                data = load_yaml(scratch, f"{ref}:{relative}")
            except InputError:
                continue
            file_collector = ManifestCollector()  # validated alone: a broken file must not drop the others
            file_collector.add_file(Path(relative), f"{ref}:{relative}", default_method, data=data, loaded=True)
            collector.edits.extend(file_collector.edits)
    return BaseEdits(ref, commit, [relative for relative, _ in files],
                     {edit_fingerprint(e) for e in collector.edits})


def _files_at(location: GitLocation, commit: str, patterns: list[str], root: Path) -> list[tuple[str, str]]:
    """(path relative to the gated directory, blob id) of regular files at `commit` matching the globs."""
    args = ["ls-tree", "-r", "-z", "--full-tree", commit]
    if location.prefix:
        args += ["--", location.prefix]
    listing = _git(location.top, *args)
    compiled = [p for p in (relative_pattern(Path(root), pattern) for pattern in patterns) if p is not None]
    found: dict[str, str] = {}
    for entry in listing.split("\0"):
        if not entry:
            continue
        meta, _, path = entry.partition("\t")
        mode, kind, blob = meta.split()
        if kind != "blob" or mode == "120000":  # symlinks and submodules are not manifests
            continue
        relative = path[len(location.prefix):] if location.prefix else path
        if any(glob_match(pattern, relative) for pattern in compiled):
            found[relative] = blob
    return sorted(found.items())


def _blob(top: Path, blob: str) -> bytes | None:
    try:
        size = int(_git(top, "cat-file", "-s", blob).strip())
        if size > MAX_BYTES:
            return None
        return _git(top, "cat-file", "blob", blob, binary=True)
    except (GitError, ValueError):
        return None
