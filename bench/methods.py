"""Sequential CounterFact editing through each method on the embedded model (issue 3's evidence).

    python bench/methods.py                 # 50 edits, every method, one subprocess per method
    python bench/methods.py --edits 5 --methods rome ft

Each method runs in its own process (so its peak memory is its own) on the same first N CounterFact
records of ../shared/data/counterfact-2k.json, applied one by one. Perplexity (token-weighted, 50
builtin:wiki texts of up to 128 tokens) is measured after 10 and after N edits; efficacy,
generalisation and locality (EasyEdit teacher-forced accuracy; CounterFact P(new) > P(true) too) over
all N edits at the end. For `memory` (which wraps the model instead of writing to it) the checks run on
the wrapped model, and two figures only it has are added: the share of those perplexity texts routed
to an edit (false positives) and the share of paraphrases routed to their own edit with the
paraphrase's own key held out. Prints one table and writes bench/results/methods.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import CACHE, counterfact_edits, load_embedded, machine, peak_rss_mib, print_table, save_json

METHODS = ["rome", "memit", "alphaedit", "ft", "memory"]
CHECK_AFTER = (10,)


def run_one(method: str, n_edits: int) -> dict:
    """Apply the edits with one method in this process and measure it."""
    from editgate import EditSession
    from editgate.corpora import sample_texts
    from editgate.metrics.edit_metrics import EditScorer, mean_of
    from editgate.metrics.perplexity import PerplexitySample, perplexity

    loaded = load_embedded()
    model, tok = loaded.model, loaded.tokenizer
    edits = counterfact_edits(n_edits, method)
    sample = PerplexitySample.from_texts(tok, sample_texts("builtin:wiki", "perplexity", 50, 0), 128)
    base = perplexity(model, sample).token_perplexity
    scorer = EditScorer(model, tok, edits)
    session = EditSession(loaded, cache_dir=CACHE, method=method,
                          log=lambda m: print(f"  [{method}] {m}", file=sys.stderr))
    hparams = session.hparams(edits[0])
    # warm-up: statistics, context prefixes and projections are one-off costs (cached on disk after
    # the first run); apply one edit and undo it exactly, so the timed sequence starts from the base
    start = time.perf_counter()
    session.apply(edits[:1])
    session.undo_to(0)
    warmup = time.perf_counter() - start
    result = _sequence(method, session, edits, sample, base, scorer, mean_of, perplexity)
    result["warmup_seconds"] = warmup
    result["hparams"] = hparams.__dict__
    routing = session.method(method).figures(sample_texts("builtin:wiki", "perplexity", 50, 0), edits)
    if routing:  # the memory method's scope classifier
        result["routing"] = routing
    return result


def _sequence(method, session, edits, sample, base, scorer, mean_of, perplexity) -> dict:
    from editgate.metrics.edit_metrics import SCORE_KEYS

    ratios, seconds = {}, []
    for i, edit in enumerate(edits, 1):
        start = time.perf_counter()
        session.apply([edit])
        seconds.append(time.perf_counter() - start)
        if i in CHECK_AFTER or i == len(edits):
            ratios[i] = perplexity(session.model, sample).token_perplexity / base
            print(f"  [{method}] {i} edits: perplexity x{ratios[i]:.3f}, {sum(seconds) / i:.1f} s/edit",
                  file=sys.stderr)
    scores = scorer.score(session.model)
    summary = {k: mean_of([getattr(s, k) for s in scores]) for k in SCORE_KEYS}
    return {"method": method, "edits": len(edits), "base_perplexity": base, "ratio_after": ratios,
            "seconds_per_edit": sum(seconds) / len(seconds), "seconds": seconds, **summary,
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    parser.add_argument("--out", default="methods.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.edits)))
        return
    results = []
    for method in args.methods:
        print(f"{method}: {args.edits} sequential edits ...", file=sys.stderr)
        done = subprocess.run([sys.executable, __file__, "--one", method, "--edits", str(args.edits)],
                              stdout=subprocess.PIPE, text=True)  # progress streams to stderr
        if done.returncode:
            raise SystemExit(f"{method} failed")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        save_json(args.out + ".partial", {"results": results})  # survive an interrupted run
    last = args.edits
    headers = ["method", "efficacy", "efficacy (teacher-forced)", "generalization", "locality", "efficacy (CF)",
               "ppl ratio @10",
               f"ppl ratio @{last}", "s/edit", "peak RSS MiB", "routing FP rate", "paraphrase routing"]
    rows = [[r["method"], r["efficacy"], r.get("efficacy_tf"), r["generalization"], r["locality"], r["efficacy_cf"],
             r["ratio_after"].get("10"), r["ratio_after"].get(str(last)), r["seconds_per_edit"],
             round(r["peak_rss_mib"]), r.get("routing", {}).get("false_positive_rate"),
             r.get("routing", {}).get("paraphrase_accuracy_held_out")] for r in results]
    table = print_table(headers, rows)
    path = save_json(args.out, {"command": " ".join(sys.argv), "machine": machine(), "edits": args.edits,
                                "results": results, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
