"""Cache entries under ~/.cache/editgate that survive concurrent CI jobs, crashes and bit rot.

Two jobs on one runner share the cache, a job can be killed mid-write, and a disk or a person can
damage a file that still parses. So every entry is written whole or not at all (a temporary file in
the same directory, fsync, rename) behind a header with the payload's size and sha256, and a reader
trusts only an entry whose payload matches its header. Anything else (truncated, flipped, an older
editgate's format) is reported once, removed, and rebuilt by the caller: a cache may cost time, never
correctness. A directory entry (the converted model) carries a manifest of every file's size and
sha256, written last, before the directory is renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from editgate.atomicfile import PARTIAL, fsync_directory, umask, write_atomic

Log = Callable[[str], None]

MAGIC = b"editgate-cache 1"
MANIFEST = "editgate-manifest"  # inside a directory entry; itself a checked entry (JSON)
STALE_SECONDS = 3600.0  # a temporary this old belongs to a writer that died: no write takes an hour
_CHUNK = 1 << 20


def _header(payload: bytes) -> bytes:
    return MAGIC + b" sha256=" + hashlib.sha256(payload).hexdigest().encode() + \
        b" size=" + str(len(payload)).encode() + b"\n"


def _check(data: bytes) -> tuple[bytes | None, str]:
    """The payload of a whole, unaltered entry, or None and why not."""
    end = data.find(b"\n", 0, 200)
    fields = data[:end].split(b" ") if end >= 0 else []
    if end < 0 or b" ".join(fields[:2]) != MAGIC or len(fields) != 4 \
            or not fields[2].startswith(b"sha256=") or not fields[3].startswith(b"size="):
        return None, "no editgate integrity header: truncated, foreign, or an older format"
    try:
        size = int(fields[3].removeprefix(b"size="))
    except ValueError:
        return None, "unreadable size in its header"
    payload = data[end + 1:]
    if len(payload) != size:
        return None, f"{len(payload)} payload bytes where its header records {size}"
    if hashlib.sha256(payload).hexdigest().encode() != fields[2].removeprefix(b"sha256="):
        return None, "its sha256 does not match its header"
    return payload, ""


def clean_partials(directory: Path, older_than: float = STALE_SECONDS) -> None:
    """Remove temporaries left by writers that were killed; fresh ones may belong to a live writer."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(PARTIAL):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.remove(entry.path)
        except OSError:
            pass  # another process cleaned it first


def write_bytes(path: Path, payload: bytes) -> None:
    """Store `payload` at `path` atomically behind its integrity header (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(path.parent)
    write_atomic(path, _header(payload) + payload)


def discard(path: Path, reason: str, log: Log, identity: os.stat_result | None = None) -> None:
    """Report a damaged entry once and remove it, unless a writer has replaced it meanwhile."""
    log(f"cache entry {path} is damaged ({reason}); rebuilding it")
    try:
        if identity is not None:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) != (identity.st_dev, identity.st_ino):
                return  # a concurrent writer already put a fresh entry there
        if os.path.isdir(path) and not os.path.islink(path):
            # renamed aside first, so no other process starts loading a half-deleted directory
            aside = Path(tempfile.mkdtemp(dir=Path(path).parent, prefix=f"{PARTIAL}damaged-"))
            os.replace(path, aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.remove(path)
    except OSError:
        pass  # already gone (another reader removed it) or not ours to remove: rebuilt either way


def read_bytes(path: Path, log: Log) -> bytes | None:
    """The payload stored at `path`; None when absent or damaged (then reported and removed)."""
    try:
        with open(path, "rb") as handle:
            identity = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        discard(Path(path), f"unreadable: {exc.strerror or exc}", log)
        return None
    payload, reason = _check(data)
    if payload is None:
        discard(Path(path), reason, log, identity)
    return payload


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, json.dumps(value).encode("utf-8"))


def read_json(path: Path, log: Log) -> Any | None:
    """A JSON entry's value, or None (absent or damaged). Note: a stored JSON null also reads as None."""
    payload = read_bytes(path, log)
    if payload is None:
        return None
    try:
        return json.loads(payload.decode("utf-8"))
    except ValueError as exc:  # intact bytes that are not JSON: written by something else
        discard(Path(path), f"not JSON: {exc}", log)
        return None


def write_tensor(path: Path, tensor: Any) -> None:
    """`torch.save` into memory first, so the digest covers exactly the bytes on disk."""
    import torch

    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    write_bytes(path, buffer.getvalue())


def read_tensor(path: Path, log: Log) -> Any | None:
    """A tensor entry (weights_only: a cache file must never run code), or None (absent or damaged)."""
    import torch

    payload = read_bytes(path, log)
    if payload is None:
        return None
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad archive
        discard(Path(path), f"not a torch tensor file: {type(exc).__name__}", log)
        return None


# --- directory entries ---------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every file below `directory` (relative, sorted) except the manifest."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != MANIFEST)


def make_staging_directory(parent: Path) -> Path:
    """An empty directory to build an entry in, beside where it will be renamed to."""
    parent.mkdir(parents=True, exist_ok=True)
    clean_partials(parent)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=PARTIAL))
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700, like mkstemp's 0600, is not what users expect
    return staging


def write_manifest(directory: Path) -> None:
    """Record every file's size and sha256; written last, so its presence means the rest is complete."""
    files = {name: {"size": (directory / name).stat().st_size, "sha256": _file_sha256(directory / name)}
             for name in _files(directory)}
    write_json(directory / MANIFEST, {"files": files})


def verify_directory(directory: Path, log: Log) -> bool:
    """True when `directory` holds exactly the files of its manifest, intact; when not, the damage is
    reported, the directory removed, and False returned so the caller builds it again."""
    directory = Path(directory)
    try:
        identity = os.stat(directory)
    except FileNotFoundError:
        return False
    reason = _directory_damage(directory, _manifest(directory))
    if reason:
        discard(directory, reason, log, identity)
        return False
    return True


def _manifest(directory: Path) -> Any:
    """The manifest's value, or None; read quietly, since the directory's damage is reported as one."""
    try:
        payload, _reason = _check((directory / MANIFEST).read_bytes())
        return json.loads(payload.decode("utf-8")) if payload is not None else None
    except (OSError, ValueError):
        return None


def _directory_damage(directory: Path, manifest: Any) -> str:
    """What is wrong with a directory entry, or "" when nothing is (sizes first: they are free)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "no valid manifest: half-copied, damaged, or an older format"
    expected: dict[str, Any] = manifest["files"]
    present = set(_files(directory))
    if missing := sorted(set(expected) - present):
        return f"missing {', '.join(missing)}"
    if extra := sorted(present - set(expected)):
        return f"unexpected {', '.join(extra)}"
    for name, record in expected.items():
        size = (directory / name).stat().st_size
        if size != record.get("size"):
            return f"{name} has {size} bytes where its manifest records {record.get('size')}"
    for name, record in expected.items():
        if _file_sha256(directory / name) != record.get("sha256"):
            return f"{name}'s sha256 does not match its manifest"
    return ""


def publish_directory(staging: Path, target: Path, log: Log) -> None:
    """Write the manifest into `staging` and rename it to `target`. When another process got there
    first, its directory is used once verified (and `staging` dropped); a damaged one is replaced."""
    write_manifest(staging)
    for _ in range(3):
        try:
            os.rename(staging, target)
            fsync_directory(target.parent)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if verify_directory(target, log):  # the winner's copy, checked like any other entry
            shutil.rmtree(staging, ignore_errors=True)
            return
    raise OSError(errno.EEXIST, f"cannot install {staging} as {target}: it keeps being replaced")
