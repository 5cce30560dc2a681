"""Edited states kept across runs, so a run whose sequence starts with one gated before applies and
checks only the rest (a pull request pays for its own edits, not for the history of its base branch).

Edits apply in order, so the model after the first k units of a sequence, and the check after each of
them, depend only on those units and on what every run of this configuration shares: the model (its
fingerprint, dtype, device, threads), editgate's and the libraries' versions, the seed, the policy and
the check sample. That shared part is the run key; each unit adds its edits' content fingerprints,
method and resolved hyperparameters to a chain of digests, one per unit. A state is stored under the
chain digest of its last unit: an edit pack of every weight the units wrote (`export.save_delta`,
with each tensor's base and edited sha256) and each edit's record. A later run looks for the longest
prefix of its own chain that has a state, restores the weights (hash-checked against the base before
and against the saved result after), takes those records as they were and applies only the rest.

Only states a replay would reach are stored and used: the run was not stopped by a collapse, every
unit wrote weights and nothing else (a method keeping state outside the weights, such as a memory or
AlphaEdit's accumulated keys, ends the storable prefix), and the restored prefix ends where the new
run checks too. Entries are cache directories (`cachefile`): written whole or not at all, verified on
reading, removed when damaged; the newest few per run key are kept.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from editgate import cachefile
from editgate.baseline import digest

STATE_FILE = "state.safetensors"
RECORDS_FILE = "records.json"  # the restored edits' records and the checkpoints among them
KEEP = 4  # states kept per run key: the default branch's latest, and a few pull requests'


def chain(run_key: str, units: list[Any]) -> list[str]:
    """The digest after each unit: it names the state the sequence has reached there."""
    out, key = [], run_key
    for unit in units:
        key = digest([key, unit])
        out.append(key)
    return out


@dataclasses.dataclass
class StoredState:
    """A state found in the cache: how many units it covers, and where it lies."""

    units: int
    directory: Path

    @property
    def pack(self) -> Path:
        return self.directory / STATE_FILE

    def records(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        return cachefile.read_json(self.directory / RECORDS_FILE, log)


class StateCache:
    """States under <cache>/states/<model fingerprint>/<run key>/<chain digest>/."""

    def __init__(self, cache_dir: Path, fingerprint: str, run_key: str, *, read: bool = True,
                 log: Callable[[str], None] = print):
        self.root = Path(cache_dir) / "states" / fingerprint / run_key
        self.run_key, self.read, self.log = run_key, read, log

    def longest(self, keys: list[str], usable: Callable[[int], bool]) -> StoredState | None:
        """The longest stored prefix of `keys` (a chain) that `usable(units)` accepts and that is intact."""
        if not self.read:
            return None
        for units in range(len(keys), 0, -1):
            directory = self.root / keys[units - 1]
            if directory.is_dir() and usable(units) and cachefile.verify_directory(directory, self.log):
                return StoredState(units, directory)
        return None

    def store(self, key: str, write_state: Callable[[Path], Any], records: dict[str, Any]) -> Path:
        """Write one state (`write_state(path)` writes its edit pack) and drop the oldest beyond KEEP."""
        target = self.root / key
        staging = cachefile.make_staging_directory(self.root)
        try:
            write_state(staging / STATE_FILE)
            cachefile.write_json(staging / RECORDS_FILE, records)
            cachefile.publish_directory(staging, target, self.log)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        os.utime(target)  # the newest state, whether this run or an earlier one wrote it
        self._prune()
        return target

    def _prune(self) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(cachefile.PARTIAL)]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
