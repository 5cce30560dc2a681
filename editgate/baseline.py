"""Cached figures of the unedited model: perplexity on the check sample, benchmark results, and the
pre-edit answers to the edits' prompts.

They depend only on the model, the data and the settings, so a second run of an unchanged repository
(or a run after `editgate baseline`) reads them instead of measuring again. Each entry is keyed by a
digest of exactly what decides it (the token ids scored, batching, dtype, device, editgate version),
under the model's fingerprint, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import editgate


def digest(parts: Any) -> str:
    payload = json.dumps({"editgate": editgate.__version__, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class BaselineCache:
    """JSON entries under <cache_dir>/baselines/<model fingerprint>/<kind>-<digest>.json."""

    def __init__(self, cache_dir: Path, fingerprint: str, enabled: bool = True):
        self.root = Path(cache_dir) / "baselines" / fingerprint
        self.enabled = enabled
        self.hits: list[str] = []  # kinds served from the cache in this run, for the report

    def _path(self, kind: str, parts: Any) -> Path:
        return self.root / f"{kind}-{digest(parts)}.json"

    def get(self, kind: str, parts: Any) -> Any | None:
        path = self._path(kind, parts)
        if not self.enabled or not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a damaged entry is measured again, never trusted
        self.hits.append(kind)
        return value

    def put(self, kind: str, parts: Any, value: Any) -> None:
        path = self._path(kind, parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(value, handle)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
