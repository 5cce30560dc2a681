"""Is perplexity a trustworthy surrogate for benchmark accuracy under sequential editing? (issue 5's evidence)

    python bench/surrogate.py                       # 100 sequential ROME edits, a checkpoint every 10
    python bench/surrogate.py --edits 20 --every 5

The collapse paper ("The Butterfly Effect of Model Editing", Yang et al. 2024) argues that perplexity
tracks the damage that sequential editing does to downstream ability, so it can stand in for a
benchmark after every edit. This reproduces the measurement on the embedded model (SmolLM2-135M, CPU):
the first N CounterFact records of ../shared/data/counterfact-2k.json are applied one by one with
ROME (editgate's defaults), and at edit 0 and every `--every` edits it records
  - perplexity on ME-PPL_1k (../shared/data, the paper's corpus): token-weighted and mean per text,
  - perplexity on builtin:wiki (the gate's default check: 40 perplexity-pool texts, 128 tokens),
  - every builtin:small task's accuracy with its standard error.
It prints the curves and Spearman's rank correlation between each perplexity and each task's accuracy
over the checkpoints (a faithful surrogate gives a strongly negative rho), and writes
bench/results/surrogate.json and surrogate.png (plus .partial.json after every checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd

from _common import CACHE, RESULTS, SHARED_DATA, counterfact_edits, load_embedded, machine, print_table, save_json

WIKI_SAMPLES, WIKI_TOKENS = 40, 128  # the default policy's perplexity check
ME_PPL_TOKENS = 256  # ME-PPL sentences are short (28 tokens on average): nothing is truncated in practice


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def measure(model, samples: dict, suite) -> dict:
    """One checkpoint: every perplexity and every task figure of the current model."""
    from editgate.metrics.perplexity import perplexity

    row, start = {}, time.perf_counter()
    for name, sample in samples.items():
        result = perplexity(model, sample)
        row[f"{name} ppl"] = result.token_perplexity
        row[f"{name} mean ppl"] = result.mean_text_perplexity
    for task, result in suite.run(model, log=lambda _m: None).items():
        row[f"{task} {result.metric}"] = result.value
        row[f"{task} stderr"] = result.stderr
    row["check_seconds"] = time.perf_counter() - start
    return row


def correlations(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Spearman's rho between each perplexity column and each accuracy column, over the checkpoints."""
    ppl = [c for c in frame.columns if c.endswith(" ppl")]
    accuracy = [c for c in frame.columns if c.endswith((" acc", " acc_norm", " exact_match"))]
    return {p: {a: float(frame[p].corr(frame[a], method="spearman")) for a in accuracy} for p in ppl}


def plot(frame: pd.DataFrame, rho: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl = [c for c in frame.columns if c.endswith(" ppl")]
    accuracy = [c for c in next(iter(rho.values()), {})]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for column in ppl:
        top.plot(frame["edits"], frame[column] / frame[column].iloc[0], marker="o", label=column)
    top.set_ylabel("perplexity / unedited")
    top.legend(fontsize=8)
    top.set_title("Sequential ROME edits on SmolLM2-135M (CounterFact)", fontsize=10)
    for column in accuracy:
        task = column.rsplit(" ", 1)[0]
        bottom.errorbar(frame["edits"], frame[column], yerr=frame[f"{task} stderr"], marker="o", capsize=2,
                        label=f"{column} (rho vs {ppl[0]}: {rho[ppl[0]][column]:+.2f})")
    bottom.set_ylabel("accuracy (±1 s.e.)")
    bottom.set_xlabel("edits applied")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--method", default="rome")
    parser.add_argument("--out", default="surrogate")
    parser.add_argument("--from-partial", action="store_true",
                        help="summarise the checkpoints an interrupted run saved in <out>.partial.json")
    args = parser.parse_args()
    if args.from_partial:
        partial = json.loads((RESULTS / f"{args.out}.partial.json").read_text(encoding="utf-8"))
        summarise(args, partial["rows"], partial.get("edit_seconds", []), machine(), args.method, {})
        return

    from editgate import EditSession
    from editgate.corpora import load_texts, sample_texts
    from editgate.metrics.benchmarks import load_suite
    from editgate.metrics.perplexity import PerplexitySample

    env = machine()
    loaded = load_embedded()
    tok = loaded.tokenizer
    edits = counterfact_edits(args.edits, args.method)
    samples = {
        "ME-PPL_1k": PerplexitySample.from_texts(tok, load_texts(str(SHARED_DATA / "ME-PPL_1k.json"), "perplexity"),
                                                 ME_PPL_TOKENS),
        "builtin:wiki": PerplexitySample.from_texts(tok, sample_texts("builtin:wiki", "perplexity", WIKI_SAMPLES, 0),
                                                    WIKI_TOKENS),
    }
    suite = load_suite("builtin:small", tok)
    session = EditSession(loaded, cache_dir=CACHE, method=args.method, log=log)
    hparams = session.hparams(edits[0])

    rows, edit_seconds = [{"edits": 0, **measure(session.model, samples, suite)}], []
    log(f"0 edits: {rows[-1]}")
    for i, edit in enumerate(edits, 1):
        start = time.perf_counter()
        session.apply([edit])
        edit_seconds.append(time.perf_counter() - start)
        if i % args.every == 0 or i == len(edits):
            rows.append({"edits": i, **measure(session.model, samples, suite)})
            log(f"{i} edits ({sum(edit_seconds) / i:.1f} s/edit): "
                + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k != "edits" and v is not None))
            save_json(f"{args.out}.partial.json", {"rows": rows, "edit_seconds": edit_seconds})  # survive a stop
    summarise(args, rows, edit_seconds, env, args.method, hparams.__dict__)


def summarise(args, rows: list[dict], edit_seconds: list[float], env: dict, method: str, hparams: dict) -> None:
    """Correlations, the tables, the plot and the JSON."""
    frame = pd.DataFrame(rows)
    rho = correlations(frame)
    shown = ["edits"] + [c for c in frame.columns if c.endswith((" ppl", " acc", " acc_norm", " exact_match"))]
    curve = print_table(shown, frame[shown].values.tolist())
    print()
    accuracy = list(next(iter(rho.values())))
    rho_table = print_table(["Spearman rho"] + accuracy, [[p] + [rho[p][a] for a in accuracy] for p in rho])
    png = RESULTS / f"{args.out}.png"
    plot(frame, rho, png)
    path = save_json(f"{args.out}.json", {
        "command": "python bench/surrogate.py " + " ".join(sys.argv[1:]), "machine": env, "method": method,
        "edits": int(frame["edits"].iloc[-1]), "every": args.every,
        "seconds_per_edit": sum(edit_seconds) / len(edit_seconds) if edit_seconds else None,
        "edit_seconds": edit_seconds, "rows": rows, "spearman": rho, "curve_table": curve, "rho_table": rho_table,
        "hparams": hparams})
    (RESULTS / f"{args.out}.partial.json").unlink(missing_ok=True)
    print(f"saved {path} and {png}")


if __name__ == "__main__":
    main()
