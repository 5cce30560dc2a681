"""Cached figures of the unedited model: perplexity on the check sample, benchmark results, and the
pre-edit answers to the edits' prompts.

They depend only on the model, the data and the settings, so a second run of an unchanged repository
(or a run after `editgate baseline`) reads them instead of measuring again. Each entry is keyed by a
digest of exactly what decides it (the token ids scored, batching, dtype, device, editgate version),
under the model's fingerprint, and stored through `editgate.cachefile`: written atomically with an
integrity header, so a torn, altered or older-format entry is reported and measured again, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import editgate
from editgate import cachefile


def digest(parts: Any) -> str:
    payload = json.dumps({"editgate": editgate.__version__, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class BaselineCache:
    """JSON entries under <cache_dir>/baselines/<model fingerprint>/<kind>-<digest>.json."""

    def __init__(self, cache_dir: Path, fingerprint: str, enabled: bool = True,
                 log: Callable[[str], None] = print):
        self.root = Path(cache_dir) / "baselines" / fingerprint
        self.enabled = enabled
        self.log = log  # where a damaged entry is reported (once) before it is measured again
        self.hits: list[str] = []  # kinds served from the cache in this run (each once), for the report

    def _path(self, kind: str, parts: Any) -> Path:
        return self.root / f"{kind}-{digest(parts)}.json"

    def get(self, kind: str, parts: Any, usable: Callable[[Any], bool] | None = None) -> Any | None:
        """The cached value, or None: absent, damaged (reported and removed), or one `usable` refuses (an
        entry of an older shape the key does not tell apart); the caller measures again and puts."""
        if not self.enabled:
            return None
        value = cachefile.read_json(self._path(kind, parts), self.log)
        if value is None or (usable is not None and not usable(value)):
            return None
        if kind not in self.hits:
            self.hits.append(kind)
        return value

    def put(self, kind: str, parts: Any, value: Any) -> None:
        cachefile.write_json(self._path(kind, parts), value)
