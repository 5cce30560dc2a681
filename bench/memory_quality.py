"""The memory method on the embedded model: edit metrics, perplexity ratio and routing figures per encoder.

    python bench/memory_quality.py                      # 20 CounterFact edits, both encoders
    python bench/memory_quality.py --edits 50 --encoders base

Edits (the first N CounterFact records of ../shared/data/counterfact-2k.json) are added one by one, as
the gate does (the threshold is recalibrated after each). Then: token-weighted perplexity on 50
builtin:wiki perplexity texts (up to 128 tokens) against the unedited model; efficacy, generalisation
and locality (EasyEdit teacher-forced accuracy; CounterFact P(new) > P(true)) through EditScorer on the
wrapped model; routing false positives on those 50 texts and paraphrase routing accuracy (as stored,
and held out: the paraphrase's own key ignored). Each encoder is also run with keys prompt,subject
(paraphrases not stored), which is what generalisation to unseen phrasings looks like.
Writes bench/results/memory_quality.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import CACHE, counterfact_edits, load_embedded, machine, print_table, save_json



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--encoders", nargs="+", default=["base", "minilm"])
    parser.add_argument("--keys", nargs="+", default=["prompt,subject,paraphrases", "prompt,subject"])
    parser.add_argument("--prompt-format", default=None)
    parser.add_argument("--out", default="memory_quality.json")
    args = parser.parse_args()

    from editgate import EditSession
    from editgate.corpora import sample_texts
    from editgate.methods.memory import routing_figures
    from editgate.metrics.edit_metrics import SCORE_KEYS, EditScorer, mean_of
    from editgate.metrics.perplexity import PerplexitySample, perplexity

    env = machine()
    loaded = load_embedded()
    model, tok = loaded.model, loaded.tokenizer
    edits = counterfact_edits(args.edits, "memory")
    texts = sample_texts("builtin:wiki", "perplexity", 50, 0)
    sample = PerplexitySample.from_texts(tok, texts, 128)
    base_ppl = perplexity(model, sample).token_perplexity
    scorer = EditScorer(model, tok, edits)
    unedited = scorer.score(model)
    rows, results = [], []
    summary = {k: mean_of([getattr(s, k) for s in unedited]) for k in SCORE_KEYS}
    rows.append(["(unedited)", "—", None, 1.0, *[summary[k] for k in SCORE_KEYS], None, None, None, None])
    for encoder in args.encoders:
        for keys in args.keys:
            overrides = {"encoder": encoder, "keys": keys,
                         **({"prompt_format": args.prompt_format} if args.prompt_format else {})}
            session = EditSession(loaded, cache_dir=CACHE, method="memory", hparams={"memory": overrides},
                                  log=lambda m: print(f"  {m}", file=sys.stderr))
            start = time.perf_counter()
            for edit in edits:
                applied = session.apply([edit])
            apply_seconds = time.perf_counter() - start
            editor, wrapped = session.method("memory"), session.model
            wrapped.reset_counts()
            ratio = perplexity(wrapped, sample).token_perplexity / base_ppl
            ppl_counts = wrapped.counts()
            start = time.perf_counter()
            scores = scorer.score(wrapped)
            score_seconds = time.perf_counter() - start
            summary = {k: mean_of([getattr(s, k) for s in scores]) for k in SCORE_KEYS}
            figures = routing_figures(editor.memory, texts, edits)
            in_scores, out_scores = editor.memory.scope_scores()
            wiki_best = editor.memory.best_keys(editor.memory.encoder.encode_queries(texts))[0].tolist()
            result = {"encoder": encoder, "keys": keys, "edits": len(edits), "perplexity_ratio": ratio,
                      "perplexity_rows_routed": ppl_counts["routed_rows"], **summary, "routing": figures,
                      "calibration": applied.info.get("calibration"), "apply_seconds": apply_seconds,
                      "score_seconds": score_seconds,
                      "similarities": {"paraphrase_own_held_out": sorted(in_scores),
                                       "locality_best": sorted(out_scores), "wiki_best": sorted(wiki_best)}}
            results.append(result)
            rows.append([encoder, keys, figures["threshold"], ratio, *[summary[k] for k in SCORE_KEYS],
                         figures["false_positive_rate"], figures["paraphrase_accuracy"],
                         figures["paraphrase_accuracy_held_out"], figures["locality_false_positive_rate"]])
            print(f"  {encoder} {keys}: done", file=sys.stderr)
    print_table(["encoder", "keys", "threshold", "ppl ratio", *SCORE_KEYS, "wiki FP rate", "para acc",
                 "para acc (held out)",
                 "locality FP rate"], rows)
    path = save_json(args.out, {"machine": env, "base_perplexity": base_ppl, "results": results,
                                "unedited": {k: mean_of([getattr(s, k) for s in unedited]) for k in SCORE_KEYS}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
