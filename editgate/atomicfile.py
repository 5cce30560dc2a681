"""Files written whole or not at all, with the permissions the user's umask gives new files.

A reader (a CI step, a second job, a later run) never sees half a report or half a cache entry: data
goes to a temporary file in the same directory, is flushed to disk, and is renamed over the target,
which also replaces a symbolic link at the target instead of writing through it. `mkstemp` creates
its files 0600; they are set to what `open()` would have given, so a report is as readable as any
other file the user writes.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL = ".partial-"  # prefix of every temporary file: readers never take one for the real thing


def umask() -> int:
    """The process's umask (reading it means setting it; done back to back)."""
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` atomically; the parent directory is created if needed."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` for writers that want a file name (safetensors, matplotlib):
    renamed over `path` when the block ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{PARTIAL}{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename durable across a power cut; best effort (some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
