"""Report figures: how the scope classifier routes the perplexity sample, locality prompts, and the
edits' own prompts and paraphrases (false positives and routing accuracy)."""

from __future__ import annotations

import time
from typing import Any

from editgate.manifests import Edit
from editgate.methods.memory.store import EditMemory


def routing_figures(memory: EditMemory, perplexity_texts: list[str], edits: list[Edit]) -> dict[str, Any]:
    """How the scope classifier routes: false positives on the perplexity corpus and locality
    prompts, and how often edit prompts and paraphrases reach their own edit.

    `paraphrase_accuracy` routes over the memory as it is (paraphrases are keys by default, so each
    matches itself); `paraphrase_accuracy_held_out` ignores keys identical to the input, i.e. measures
    routing of paraphrases the memory was not given.
    """
    start = time.perf_counter()
    paraphrases = [(p, e.id) for e in edits for p in e.paraphrases]
    prompts = [(e.text, e.id) for e in edits]
    localities = [c.prompt for e in edits for c in e.locality]
    fp_rate, fp = _routed_share(memory, list(perplexity_texts))
    loc_rate, loc = _routed_share(memory, localities)
    return {
        "encoder": memory.encoder.name, "threshold": memory.threshold, "threshold_source": memory.threshold_source,
        "stored_edits": len(memory), "perplexity_texts": len(perplexity_texts),
        "false_positive_rate": fp_rate, "false_positives": fp,
        "paraphrases": len(paraphrases), "paraphrase_accuracy": _own_share(memory, paraphrases),
        "paraphrase_accuracy_held_out": _own_share(memory, paraphrases, held_out=True),
        "prompt_accuracy": _own_share(memory, prompts),
        "locality_prompts": len(localities), "locality_false_positive_rate": loc_rate, "locality_false_positives": loc,
        "seconds": time.perf_counter() - start,
    }


def _own_share(memory: EditMemory, texts_with_owner: list[tuple[str, str]], held_out: bool = False) -> float | None:
    """The share of texts routed to the edit they belong to (None without texts: no figure, not 0)."""
    if not texts_with_owner:
        return None
    ids = memory.edit_ids()
    routes = memory.route([t for t, _ in texts_with_owner], exclude_identical=held_out)
    hits = [r.entry is not None and ids[r.entry] == owner for r, (_, owner) in zip(routes, texts_with_owner)]
    return sum(hits) / len(hits)


def _routed_share(memory: EditMemory, texts: list[str]) -> tuple[float | None, int]:
    """(share, count) of texts routed to any edit: for texts that belong to none, false positives."""
    if not texts:
        return None, 0
    routed = sum(r.entry is not None for r in memory.route(texts))
    return routed / len(texts), routed
