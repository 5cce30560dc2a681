"""What a checkpoint costs, by part, on the paths editgate takes and on the ones it replaced (issue 17).

    python bench/checkpoint.py                 # builtin:small and 51 CounterFact edits' metrics
    python bench/checkpoint.py --rounds 3

A checkpoint is paid by every run that makes a new state, an incremental one included, so it is most
of what an incremental run costs. On the embedded model (SmolLM2-135M, CPU, unedited: the work is the
same for an edited one), in one process, alternating in each round:
  - the `builtin:small` suite and the teacher-forced edit queries with the output head run on every
    position (before) against only from each batch's first scored position (now, `logits_to_keep`);
  - the edits' greedy continuations in batches with the scoring padding bound (before) against
    without it (now).
Every figure must be equal on both paths (the bench exits 1 when not): per-doc benchmark outcomes,
edit scores. Prints a table (median seconds over the rounds) and writes bench/results/checkpoint.json.
Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager

from _common import counterfact_edits, load_embedded, machine, print_table, save_json


@contextmanager
def previous_paths(before: bool):
    """The scoring and generation paths editgate took before this change, while `before` is set."""
    from editgate.metrics import generation, scoring

    model_forward, batches = scoring.model_forward, generation.batches_by_length
    if before:
        scoring.model_forward = lambda model: (
            lambda batch: model(input_ids=batch.ids, attention_mask=batch.mask).logits)
        generation.batches_by_length = lambda lengths, budget, **_: batches(lengths, budget)
    try:
        yield
    finally:
        scoring.model_forward, generation.batches_by_length = model_forward, batches


def timed(call):
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=51)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from editgate.metrics.benchmarks import load_suite
    from editgate.metrics.edit_metrics import EditScorer

    loaded = load_embedded()
    model, tokenizer = loaded.model, loaded.tokenizer
    suite = load_suite("builtin:small", tokenizer)
    scorer = EditScorer(model, tokenizer, counterfact_edits(args.edits, "rome"), 2048)
    seconds: dict[str, dict[str, list[float]]] = {"before": {}, "now": {}}
    figures: dict[str, dict] = {}
    for _ in range(args.rounds):
        for path in ("before", "now"):
            with previous_paths(path == "before"):
                parts = {"builtin:small": lambda: {k: r.per_doc for k, r in suite.run(model).items()},
                         "edit queries (teacher-forced)": lambda: [
                             (s.logprobs.tolist(), s.argmax.tolist()) for s in scorer._score_upto(model, args.edits)],
                         "edit prompts (generated)": lambda: scorer._generate_upto(model, args.edits)}
                for name, call in parts.items():
                    spent, value = timed(call)
                    seconds[path].setdefault(name, []).append(spent)
                    figures.setdefault(path, {})[name] = value
    same = {name: _same(figures["before"][name], figures["now"][name]) for name in figures["now"]}
    medians = {path: {name: statistics.median(v) for name, v in parts.items()} for path, parts in seconds.items()}
    rows = [[name, medians["before"][name], medians["now"][name], medians["now"][name] / medians["before"][name],
             same[name]] for name in medians["now"]]
    total = [sum(medians[path].values()) for path in ("before", "now")]
    rows.append(["checkpoint", total[0], total[1], total[1] / total[0], all(same.values())])
    print_table(["part", "before s", "now s", "now/before", "same figures"], rows)
    path = save_json("checkpoint.json", {"machine": machine(), "edits": args.edits, "rounds": args.rounds,
                                         "seconds": seconds, "median": medians, "same_figures": same})
    print(f"wrote {path}")
    sys.exit(0 if all(same.values()) else 1)


def _same(a, b, tolerance: float = 1e-4) -> bool:
    """Equal, with log-probabilities within `tolerance` (the head's matmul on fewer rows may round differently)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tolerance
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tolerance) for k in a)
    return a == b


if __name__ == "__main__":
    main()
