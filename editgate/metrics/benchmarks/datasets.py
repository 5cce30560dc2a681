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

BUILTIN_DATASETS = ("builtin:wiki-cloze", "builtin:wiki-describe", "builtin:wiki-entity", "builtin:wiki-reading")


def load_docs(dataset: str, limit: int | None, seed: int, defn: TaskDef) -> list[dict]:
    """The first `limit` docs of a task's `dataset`; a file path is relative to the file that defines the task."""
    where = defn.where
    if dataset.startswith("builtin:"):
        build = {"builtin:wiki-cloze": wiki_cloze_docs, "builtin:wiki-describe": wiki_describe_docs,
                 "builtin:wiki-entity": wiki_entity_docs, "builtin:wiki-reading": wiki_reading_docs}.get(dataset)
        if build is None:
            raise where.error("dataset", unknown_key("builtin dataset", dataset, BUILTIN_DATASETS))
        docs = build(seed, limit)
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


# Words that end a context badly for recall: after them the next name is a list item, a range's end or
# an alias, which the sentence itself does not determine.
_ENTITY_AFTER_NOT = {"and", "or", "from", "to", "by", "with", "as", "between", "called", "spelled", "named",
                     "known", "is", "was", "nor", "than", "versus"}
_ENTITY = re.compile(r"([A-Z][a-z]{2,})[,;:.)]?")


def wiki_entity_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """Factual recall: a summary's first sentence cut before a capitalised name the model must produce.

    The name is the first word of the sentence (after its third) that is capitalised, has no capital
    after its first letter, is no word of the title, has not appeared earlier in the sentence (so it
    is recalled, not copied) and follows a lower-case word that leaves it determined ("was an" Indian,
    "located in" Asia; not after "and", "from", "known as"). Years are left out: a 135M model almost
    never produces the right one, so they would add docs that cannot drop. One doc per summary, in an
    order shuffled by `seed`. Fields: title, context, target (the name, without its space)."""
    docs = []
    for article in _benchmark_articles():
        sentence = first_sentence(article.get("extract", "").strip())
        if not sentence or not 6 <= len(sentence.split()) <= 60:
            continue
        title_words = {w.lower().strip(",.()") for w in article["title"].split()}
        words = sentence.split()
        for i in range(3, len(words)):
            match = _ENTITY.fullmatch(words[i])
            if not match:
                continue
            name, before = match.group(1), words[i - 1]
            if (name.lower() in title_words or name.lower() in " ".join(words[:i]).lower()
                    or not before.isalpha() or not before.islower() or before in _ENTITY_AFTER_NOT):
                continue
            docs.append({"title": article["title"], "context": " ".join(words[:i]), "target": name})
            break
    random.Random(seed).shuffle(docs)
    return docs[:limit] if limit is not None else docs


_READING_WORD = re.compile(r"[a-z]{4,7}")
_READING_STOP = set("""about above after again against also although among another because been before being
below between both could does doing down during each either every from further have having here however
into itself just many might more most much must only other over same should since some such than that
their them then there these they this those through under until upon very were what when where which
while whom whose will with within without would your first second later known called often usually
including became become used include includes made make along""".split())
READING_WORDS = (20, 40)  # a passage's length in words: long enough to hold distractors, short to score


def sentences(text: str) -> list[str]:
    """The text's sentences, split where `first_sentence` would end one."""
    out, rest = [], text.strip()
    while rest:
        sentence = first_sentence(rest)
        if sentence is None:
            break
        out.append(sentence.strip())
        rest = rest[len(sentence):].strip()
    return out


def wiki_reading_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """Reading: a passage (a summary's leading sentences, 20-40 words, at least two sentences), then the
    start of one of its later sentences; which of four words from the passage comes next.

    The answer is a lower-case word of 4-7 letters (short words are mostly one token, which the scorer
    answers in one pass), no function word, that occurs once in the passage and is at least the
    sentence's third word; the three distractors are other such words of the passage, so every choice
    is as familiar from the passage as the answer (SmolLM2-135M on the first 200 docs: 0.985 with the
    passage, 0.765 with the sentence's start alone). Sentence, word, distractors and the answer's
    position are drawn by `seed`. Fields: title, passage, prefix (the sentence up to the word), choices,
    gold (index), answer."""
    rng = random.Random(seed)
    articles = list(_benchmark_articles())
    rng.shuffle(articles)
    docs = []
    for article in articles:
        if limit is not None and len(docs) >= limit:
            break
        passage: list[str] = []
        for sentence in sentences(article.get("extract", "")):
            if sum(len(s.split()) for s in passage) + len(sentence.split()) > READING_WORDS[1]:
                break
            passage.append(sentence)
        text = " ".join(" ".join(passage).split())  # one space between words, as the prefix has
        if len(passage) < 2 or len(text.split()) < READING_WORDS[0]:
            continue
        counts: dict[str, int] = {}
        for word in re.findall(r"[A-Za-z]+", text):  # "Francophone-majority" counts "majority" too
            counts[word.lower()] = counts.get(word.lower(), 0) + 1
        usable = sorted({w for w in map(_bare, text.split())
                         if _READING_WORD.fullmatch(w) and counts[w] == 1 and w not in _READING_STOP})
        words = passage[rng.randrange(1, len(passage))].split()
        spots = [i for i, w in enumerate(words) if i >= 2 and w[0].isalpha() and _bare(w) in usable]
        if not spots or len(usable) < 4:
            continue
        i = spots[rng.randrange(len(spots))]
        answer = _bare(words[i])
        distractors = rng.sample([w for w in usable if w != answer], 3)
        gold = rng.randrange(4)
        docs.append({"title": article["title"], "passage": text, "prefix": " ".join(words[:i]),
                     "choices": distractors[:gold] + [answer] + distractors[gold:], "gold": gold, "answer": answer})
    return docs


def _bare(word: str) -> str:
    """A word without the punctuation around it ("value," -> "value")."""
    return word.strip(".,;:!?\"'()[]")

