"""Editing speed on the embedded model: seconds per edit, key statistics tokens/s, edits that took (issue 7).

    python bench/editing.py                      # ROME and MEMIT, 50 CounterFact edits each, statistics
    python bench/editing.py --edits 10 --methods rome --stats-samples 500

Two measurements, in this process, on the first N records of ../shared/data/counterfact-2k.json:
  - statistics: E[k k^T] of the MLP keys computed afresh (the disk cache is bypassed) for ROME's one
    layer and for MEMIT's five layers in one pass, over the statistics corpus at the methods' default
    size; tokens per second against EasyEdit's 1,060 tok/s for one layer (issue 7, same model and CPU);
  - edits: each edit applied to the unedited model, scored and undone, so every edit is timed on the
    same weights (as EasyEdit's per-edit figures are). The first edit's one-off set-up (context
    prefixes, inverse covariance) is timed apart. "Took" is CounterFact's P(new) > P(true) on the
    edit prompt; efficacy is EasyEdit's teacher-forced accuracy. EasyEdit's ROME took 31.6 s per edit
    (mean; median 29.8) on this CPU.
Prints a table and writes bench/results/editing.json. Run it alone: two heavy processes on two cores
oversubscribe OpenMP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import CACHE, counterfact_edits, load_embedded, machine, peak_rss_mib, print_table, save_json

EASYEDIT_ROME_SECONDS = 31.6
EASYEDIT_STATS_TOK_S = 1060


def stats_speed(loaded, layers: list[int], samples: int, max_tokens: int) -> dict:
    """One fresh pass of key statistics for `layers`: tokens, seconds, tokens per second."""
    from editgate.corpora import sample_texts
    from editgate.methods.statistics import key_second_moments

    texts = sample_texts("builtin:wiki", "stats", samples, 0)
    lines: list[str] = []
    start = time.perf_counter()
    key_second_moments(loaded.model, loaded.tokenizer, layers, texts, max_tokens, log=lines.append)
    seconds = time.perf_counter() - start
    tokens = sum(min(len(ids), max_tokens) for ids in loaded.tokenizer(texts)["input_ids"])
    return {"layers": layers, "texts": samples, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds, "log": lines}


def edit_speed(loaded, method: str, n_edits: int) -> dict:
    """Each edit applied to the unedited model, timed, scored, undone."""
    from editgate import EditSession
    from editgate.metrics.edit_metrics import EditScorer

    model, tok = loaded.model, loaded.tokenizer
    edits = counterfact_edits(n_edits, method)
    session = EditSession(loaded, cache_dir=CACHE, method=method,
                          log=lambda m: print(f"  [{method}] {m}", file=sys.stderr))
    start = time.perf_counter()
    session.apply(edits[:1])  # statistics from the disk cache, prefixes, inverses
    session.undo_to(0)
    setup = time.perf_counter() - start
    seconds, steps, took, efficacy = [], [], [], []
    for i, edit in enumerate(edits, 1):
        scorer = EditScorer(model, tok, [edit])
        start = time.perf_counter()
        applied = session.apply([edit])
        seconds.append(time.perf_counter() - start)
        scores = scorer.score(session.model)[0]
        session.undo_to(0)
        steps.append(_steps(applied.info))
        took.append(bool(scores.efficacy_cf))
        efficacy.append(scores.efficacy)
        print(f"  [{method}] {i}/{len(edits)}: {seconds[-1]:.1f}s, {steps[-1]} steps, took {took[-1]}",
              file=sys.stderr)
    return {"method": method, "edits": len(edits), "setup_seconds": setup, "seconds": seconds,
            "mean_seconds": statistics.mean(seconds), "median_seconds": statistics.median(seconds),
            "mean_steps": statistics.mean(steps), "took": sum(took) / len(took),
            "efficacy": statistics.mean(efficacy), "hparams": session.hparams(edits[0]).__dict__}


def _steps(info: dict) -> float:
    """Optimisation steps of a one-edit application (MEMIT lists them per edit, ROME has one count)."""
    steps = info["v_steps"]
    return statistics.mean(steps) if isinstance(steps, list) else steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=["rome", "memit"], choices=["rome", "memit"])
    parser.add_argument("--stats-samples", type=int, default=None,
                        help="statistics corpus texts (default: the methods' own, 2,000)")
    parser.add_argument("--out", default="editing.json")
    args = parser.parse_args()
    from editgate.methods.memit import default_layers
    from editgate.methods.rome import RomeHParams, default_layer

    loaded = load_embedded()
    env = machine()
    depth = loaded.model.config.num_hidden_layers
    defaults = RomeHParams()
    samples = args.stats_samples or defaults.stats_samples
    passes = [stats_speed(loaded, [default_layer(depth)], samples, defaults.stats_max_tokens)]
    if "memit" in args.methods:
        passes.append(stats_speed(loaded, default_layers(depth), samples, defaults.stats_max_tokens))
    stats_rows = [[",".join(map(str, p["layers"])), p["tokens"], p["seconds"], round(p["tokens_per_second"]),
                   p["tokens_per_second"] / EASYEDIT_STATS_TOK_S] for p in passes]
    stats_table = print_table(["layers (one pass)", "tokens", "seconds", "tok/s", "x EasyEdit (1,060 tok/s)"],
                              stats_rows)
    edits = [edit_speed(loaded, method, args.edits) for method in args.methods]
    edit_rows = [[r["method"], r["edits"], r["mean_seconds"], r["median_seconds"],
                  EASYEDIT_ROME_SECONDS / r["mean_seconds"], r["mean_steps"], r["took"], r["efficacy"],
                  r["setup_seconds"]] for r in edits]
    edit_table = print_table(["method", "edits", "s/edit mean", "s/edit median", "EasyEdit ROME (31.6 s) / ours",
                              "optimisation steps", "took (CF)", "efficacy", "first-edit set-up s"], edit_rows)
    path = save_json(args.out, {"command": "python bench/editing.py " + " ".join(sys.argv[1:]), "machine": env,
                                "statistics": passes, "edits": edits, "peak_rss_mib": peak_rss_mib(),
                                "tables": [stats_table, edit_table]})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
