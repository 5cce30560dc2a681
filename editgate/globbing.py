"""Manifest globs, matched the same bounded way on the work tree and on a git ref's file list.

Patterns come from `editgate.yaml`, i.e. from pull requests, so neither matching nor searching may
blow up: `glob.glob` with many `**` over a deep tree, and a backtracking matcher, are exponential.
Here a pattern is matched name by name with a table of (pattern part, path name) positions, so one
match costs at most parts x names steps whatever the pattern, and the work tree is walked once,
without following links to directories (a link loop cannot make the walk endless), up to a bound on
the entries visited.

Semantics are those of `glob.glob(pattern, recursive=True)`: `**` spans any number of directories,
`*`, `?` and `[...]` stay within one name, and names starting with a dot match only pattern parts that
start with a dot.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

MAX_PATTERN_LENGTH = 256
MAX_PATTERN_PARTS = 32
MAX_WALK_ENTRIES = 200_000  # directory entries visited when searching the work tree
SKIPPED_DIRECTORIES = {".git"}


class PatternError(ValueError):
    """A pattern editgate will not search with; the message says why and what to write instead."""


def check_pattern(pattern: str) -> None:
    """Raise PatternError for patterns beyond the bounds (too long, too many parts)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"is longer than {MAX_PATTERN_LENGTH} characters; use a shorter glob")
    if len(pattern.strip("/").split("/")) > MAX_PATTERN_PARTS:
        raise PatternError(f"has more than {MAX_PATTERN_PARTS} path parts; use a shorter glob")


def glob_match(pattern: str, path: str) -> bool:
    """Whether POSIX `path` (relative) matches `pattern` as `glob.glob(pattern, recursive=True)` finds it."""
    parts = tuple(_collapse(pattern.strip("/").split("/")))
    names = path.split("/")
    # reachable[j]: the first i pattern parts can consume the first j names
    reachable = [True] + [False] * len(names)
    for index, part in enumerate(parts):
        nxt = [False] * (len(names) + 1)
        if part == "**":
            # ** consumes names that do not start with a dot: zero or more, or (trailing) one or more
            trailing = index == len(parts) - 1
            for j in range(len(names) + 1):
                extends = j > 0 and not names[j - 1].startswith(".") and (
                    nxt[j - 1] or (trailing and reachable[j - 1]))
                nxt[j] = extends or (reachable[j] and not trailing)
        else:
            for j in range(1, len(names) + 1):
                nxt[j] = reachable[j - 1] and _name_match(part, names[j - 1])
        reachable = nxt
    return reachable[len(names)]


def _collapse(parts: list[str]) -> list[str]:
    """`**/**` means the same as `**`."""
    out: list[str] = []
    for part in parts:
        if part == "**" and out and out[-1] == "**":
            continue
        out.append(part)
    return out


def _name_match(part: str, name: str) -> bool:
    if name.startswith(".") and not part.startswith("."):
        return False
    return _compiled(part).fullmatch(name) is not None


@lru_cache(maxsize=256)
def _compiled(part: str) -> re.Pattern:
    """One name's pattern as a regular expression without nested repetition (linear to match)."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            while i < len(part) and part[i] == "*":  # `**` inside a name is a single `*`
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < len(part) and part[j] in "!^":
                j += 1
            if j < len(part) and part[j] == "]":
                j += 1
            while j < len(part) and part[j] != "]":
                j += 1
            if j >= len(part):
                out.append(re.escape("["))
            else:
                body = part[i:j].replace("\\", "\\\\")
                if body and body[0] in "!^":
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out))


def literal_prefix(pattern: str) -> str:
    """The directories a pattern names literally before its first wildcard (where a search can start)."""
    parts = pattern.strip("/").split("/")[:-1]
    prefix = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        prefix.append(part)
    return "/".join(prefix)


def find(root: Path, pattern: str, max_entries: int = MAX_WALK_ENTRIES) -> WalkResult:
    """The files below `root` that match `pattern`, searching only below its literal prefix."""
    prefix = literal_prefix(pattern)
    start = root
    for part in prefix.split("/") if prefix else []:
        start = start / part
        if start.is_symlink() or not start.is_dir():  # links to directories are not followed
            return WalkResult([], False)
    walk = walk_files(start, max_entries)
    files = [f"{prefix}/{f}" if prefix else f for f in walk.files]
    return WalkResult([f for f in files if glob_match(pattern, f)], walk.truncated)


@dataclass
class WalkResult:
    files: list[str]  # POSIX paths relative to the root, of regular files and links to files
    truncated: bool  # the walk stopped at MAX_WALK_ENTRIES


def walk_files(root: Path, max_entries: int = MAX_WALK_ENTRIES) -> WalkResult:
    """Every file below `root` (links to files included, links to directories not followed), `.git` skipped."""
    files: list[str] = []
    seen = 0
    stack = [""]
    while stack:
        relative = stack.pop()
        try:
            with os.scandir(root / relative if relative else root) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        for entry in listing:
            seen += 1
            if seen > max_entries:
                return WalkResult(sorted(files), True)
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIPPED_DIRECTORIES:
                        stack.append(path)
                elif entry.is_file(follow_symlinks=True) or entry.is_symlink():
                    files.append(path)
            except OSError:
                continue
    return WalkResult(sorted(files), False)


def relative_pattern(root: Path, pattern: str) -> str | None:
    """The glob relative to the root, or None when it could match outside the repository."""
    path = PurePosixPath(pattern.strip().replace("\\", "/"))
    if path.is_absolute():
        try:
            path = PurePosixPath(path.relative_to(root.resolve().as_posix()))
        except ValueError:
            return None
    if ".." in path.parts:
        return None
    return path.as_posix()
