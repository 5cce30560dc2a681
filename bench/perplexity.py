"""The perplexity check against lm-evaluation-harness, a per-text loop and the compute floor (issue 7).

    pip install -e '.[bench]'                      # lm-evaluation-harness, for the comparison only
    python bench/perplexity.py                      # ME-PPL_1k, 3 runs of each, this process
    python bench/perplexity.py --texts 200 --runs 1 --no-lm-eval

Everything scores the same texts (../shared/data/ME-PPL_1k.json) with the same in-memory embedded
model (SmolLM2-135M, fp32 unless --dtype) in one process:
  - editgate: `editgate.metrics.perplexity.perplexity`, length-sorted right-padded batches of about
    --batch-tokens tokens (the gate's check);
  - per-text loop: one forward pass per text, the reference the values are compared to (1e-4);
  - lm-evaluation-harness: `HFLM.loglikelihood_rolling` on the same model object, at batch 1 and 32;
  - the floor: 2 x parameters x tokens at the CPU's fp32 matmul rate, measured here on the model's own
    matrix shapes (the best of a few GEMMs), i.e. what a forward pass cannot beat.
Throughput counts the texts' own tokens (the same number for every row), medians of --runs runs.
Prints a table and writes bench/results/perplexity.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from _common import SHARED_DATA, load_embedded, machine, print_table, save_json


def timed(fn, runs: int) -> tuple[float, object]:
    """Median seconds over `runs` calls and the last result."""
    seconds, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def matmul_rate(model, dtype: torch.dtype, tokens: int = 2048) -> float:
    """FLOP/s of the best GEMM among the model's own shapes at a batch of `tokens` rows."""
    cfg = model.config
    shapes = [(cfg.hidden_size, cfg.intermediate_size), (cfg.intermediate_size, cfg.hidden_size),
              (cfg.hidden_size, cfg.hidden_size)]
    best = 0.0
    for k, n in shapes:
        a, b = torch.randn(tokens, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up
        seconds, _ = timed(lambda: a @ b, 5)  # noqa: B023 (called at once)
        best = max(best, 2 * tokens * k * n / seconds)
    return best


def per_text_loop(model, token_ids: list[list[int]]) -> list[float]:
    """Summed NLL of each text, one unpadded forward pass per text: the reference values."""
    out = []
    with torch.inference_mode():
        for ids in token_ids:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            out.append(float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")))
    return out


def lm_eval_rolling(model, tokenizer, texts: list[str], batch_size: int) -> list[float]:
    """lm-evaluation-harness's rolling log-likelihood of each text on the in-memory model."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                for i, t in enumerate(texts)]
    return [float(r) for r in lm.loglikelihood_rolling(requests, disable_tqdm=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-lm-eval", action="store_true", help="skip lm-evaluation-harness")
    parser.add_argument("--out", default="perplexity.json")
    args = parser.parse_args()

    from editgate.corpora import load_texts
    from editgate.metrics.perplexity import PerplexitySample, perplexity

    loaded = load_embedded(args.threads)
    model, tok = loaded.model, loaded.tokenizer
    dtype = getattr(torch, args.dtype)
    model.to(dtype)
    env = machine()
    texts = load_texts(str(SHARED_DATA / "ME-PPL_1k.json"), "perplexity")[: args.texts]
    params = sum(p.numel() for p in model.parameters())
    samples = {b: PerplexitySample.from_texts(tok, texts, 1024, b) for b in args.batch_tokens}
    ids = next(iter(samples.values())).token_ids
    tokens = sum(len(i) for i in ids)
    rate = matmul_rate(model, dtype)
    floor_seconds = 2 * params * tokens / rate
    print(f"{len(ids)} texts, {tokens} tokens, {params / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, "
          f"matmul {rate / 1e9:.0f} GFLOP/s ({args.dtype}): floor {floor_seconds:.1f} s", file=sys.stderr)

    rows, figures = [], {}

    def add(name: str, seconds: float, note: str = "") -> None:
        figures[name] = {"seconds": seconds, "tokens_per_second": tokens / seconds, "x_floor": seconds / floor_seconds,
                         "note": note}
        rows.append([name, tokens / seconds, seconds / floor_seconds, note])
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr)

    loop_seconds, reference = timed(lambda: per_text_loop(model, ids), args.runs)
    add("per-text loop", loop_seconds)
    for batch_tokens, sample in samples.items():
        seconds, result = timed(lambda: perplexity(model, sample), args.runs)  # noqa: B023 (called at once)
        worst = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(result.text_nll, reference))
        figures.setdefault("max_relative_difference_vs_loop", {})[batch_tokens] = worst
        add(f"editgate, batches of ~{batch_tokens} tokens", seconds, f"max rel. diff vs loop {worst:.1e}")
    if not args.no_lm_eval:
        for batch_size in (1, 32):
            seconds, values = timed(lambda: lm_eval_rolling(model, tok, texts, batch_size), args.runs)  # noqa: B023
            assert all(math.isfinite(v) for v in values)
            add(f"lm-evaluation-harness loglikelihood_rolling, batch {batch_size}", seconds,
                "scores each text's first token too (after EOT)")
    add("forward floor (2 x params x tokens / matmul rate)", floor_seconds)
    table = print_table(["perplexity evaluation", "tok/s", "x floor", "note"], rows)
    path = save_json(args.out, {"command": "python bench/perplexity.py " + " ".join(sys.argv[1:]), "machine": env,
                                "texts": len(ids), "tokens": tokens, "parameters": params, "dtype": args.dtype,
                                "matmul_flops": rate, "runs": args.runs, "figures": figures, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
