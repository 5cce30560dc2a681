"""A task's docs: a JSON/JSONL file in the repository, `hf:<dataset>[:<config>]:<split>` from the local
datasets cache, or a builtin:wiki task built from the benchmark pool of wiki articles."""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from editgate.errors import RunError
from editgate.metrics.benchmarks.sources import TaskDef, Where, inside, shown_path
from editgate.paths import PathError, load_hf_dataset, parse_hf
from editgate.yamlio import load_records, unknown_key
from editgate.corpora import wiki_entries

BUILTIN_DATASETS = ("builtin:wiki-cloze", "builtin:wiki-describe")


def load_docs(dataset: str, limit: int | None, seed: int, defn: TaskDef) -> list[dict]:
    """The first `limit` docs of a task's `dataset`; a file path is relative to the file that defines the task."""
    where = defn.where
    if dataset.startswith("builtin:"):
        if dataset == "builtin:wiki-cloze":
            docs = wiki_cloze_docs(seed, limit)
        elif dataset == "builtin:wiki-describe":
            docs = wiki_describe_docs(seed, limit)
        else:
            raise where.error("dataset", unknown_key("builtin dataset", dataset, BUILTIN_DATASETS))
    elif dataset.startswith("hf:"):
        docs = _hf_docs(dataset, limit, where)
    else:
        docs = _file_docs(inside(dataset, defn.root, defn.base, where.file, where, "dataset"), defn.root)
    return docs[:limit] if limit is not None else docs


def _file_docs(path: Path, root: Path | None) -> list[dict]:
    """JSON (a list of records, or {"docs": [...]}) or JSONL (one record a line), read like YAML: bounded."""
    return [record for record, _ in load_records(path, shown_path(path, root))]


def _hf_docs(spec: str, limit: int | None, where: Where) -> list[dict]:
    """`hf:<dataset>[:<config>]:<split>` from the local datasets cache."""
    try:
        parsed = parse_hf(spec)
    except PathError as error:
        raise where.error("dataset", f"dataset {error}") from None
    try:
        data = load_hf_dataset(parsed)
    except Exception as exc:  # datasets raises many types for "not available offline"
        raise RunError(f"dataset {spec!r} could not be loaded (offline, only cached datasets work): {exc}") from exc
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]


# --- builtin:wiki tasks --------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"\.(?=\s+[\"'(\[]?[A-Z0-9]|\s*$)")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "ft", "no", "vs", "ca", "c", "inc", "ltd",
                  "co", "gen", "col", "lt", "sgt", "rev", "prof", "hon", "approx", "est", "b", "d", "fl"}
_LAST_WORD = re.compile(r"(.*\S)\s+([A-Za-z]{4,})\.", re.S)


@lru_cache(maxsize=1)
def _benchmark_articles() -> tuple[dict, ...]:
    """The builtin:wiki benchmark pool: disjoint from the perplexity and statistics pools by title hash."""
    return tuple(wiki_entries("benchmark"))


def first_sentence(text: str) -> str | None:
    """The text up to the first full stop that ends a sentence (not an initial or abbreviation)."""
    for match in _SENTENCE_END.finditer(text):
        before = text[: match.start()].split()
        word = before[-1].lstrip("(\"'[") if before else ""
        if len(word) <= 1 or "." in word or word.lower() in _ABBREVIATIONS:
            continue
        return text[: match.end()]
    return None


def wiki_cloze_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """LAMBADA-style: the last word of a summary's first sentence, given the rest of the sentence.

    Summaries whose first sentence ends with a word of at least four letters and has 6-60 words, in an
    order shuffled by `seed`. Fields: title, context, target (the word, without its space)."""
    docs = []
    for article in _benchmark_articles():
        sentence = first_sentence(article.get("extract", "").strip())
        match = _LAST_WORD.fullmatch(sentence) if sentence else None
        if match and 6 <= len(sentence.split()) <= 60:
            docs.append({"title": article["title"], "context": match.group(1), "target": match.group(2)})
    random.Random(seed).shuffle(docs)
    return docs[:limit] if limit is not None else docs


def wiki_describe_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """Which of four descriptions fits the title: the article's own `description` and three drawn by
    `seed` from other articles whose descriptions differ (from it and each other, ignoring case) and do
    not mention the title. Fields: title, description, choices, gold (index)."""
    pool = [a for a in _benchmark_articles() if str(a.get("description", "")).strip()]
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    docs = []
    for index in order[:limit] if limit is not None else order:
        article = pool[index]
        title, true = article["title"], article["description"].strip()
        seen = {true.lower()}
        distractors: list[str] = []
        for _ in range(100_000):
            if len(distractors) == 3:
                break
            other = pool[rng.randrange(len(pool))]["description"].strip()
            if other.lower() in seen or title.lower() in other.lower():
                continue
            seen.add(other.lower())
            distractors.append(other)
        if len(distractors) < 3:
            raise RunError(f"builtin:wiki-describe: too few distinct descriptions for {title!r}")
        gold = rng.randrange(4)
        choices = distractors[:gold] + [true] + distractors[gold:]
        docs.append({"title": title, "description": true, "choices": choices, "gold": gold})
    return docs
