"""The builtin benchmark suites on the embedded model (SmolLM2-135M): their time, and what they can tell.

    python bench/benchmarks_small.py                                        # time builtin:small
    python bench/benchmarks_small.py --suite builtin:medium --damage noise:0.5 noise:1
    python bench/benchmarks_small.py --suite builtin:medium --tasks wiki_cloze,wiki_entity --damage rome:20

Scores the unedited model (each task's result is cached under editgate's cache, ~/.cache/editgate or
$EDITGATE_CACHE, so a later invocation with other damage or other tasks reuses it; --fresh measures it
again), then for each --damage damages the weights in a controlled way, scores again and restores them:
  noise:S   Gaussian noise of S times the weight's own standard deviation added to one MLP output
            matrix (layer 5, the layer ROME edits; seed 0);
  rome:N    the first N CounterFact edits of ../shared/data applied one by one with ROME.
Per task and damage it prints base, now, drop, the paired standard error (of the per-doc differences,
what the gate now uses), the old unpaired one sqrt(se_base^2 + se_now^2), and the docs lost and gained;
continuation tasks also their perplexity (relative increase, paired standard error by the delta method).
With --suite builtin:medium, builtin:small's figures come from the same per-doc outcomes cut to small's
limits (a task's docs at a smaller limit are the first of its docs at a larger one; checked here).

Seconds are wall and CPU time of the unedited model's run per task: on a shared CPU the wall time
depends on what else runs, the CPU time much less. Results merge into --out (one entry per suite,
damage, task and metric), so several invocations fill one table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import CACHE, RESULTS, counterfact_edits, load_embedded, machine

from editgate.baseline import BaselineCache
from editgate.metrics.benchmarks import Suite, TaskResult, accuracy_stderr, compare, load_suite
from editgate.metrics.benchmarks.results import PER_DOC_NLL, PER_DOC_TOKENS

LAYER = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="builtin:small", choices=["builtin:small", "builtin:medium"])
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--damage", nargs="*", default=[], help="noise:S or rome:N, each applied alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--fresh", action="store_true", help="score the unedited model again (not cached)")
    parser.add_argument("--out", type=Path, default=RESULTS / "benchmarks_small.json")
    args = parser.parse_args()

    loaded = load_embedded(args.threads)
    suite = load_suite(args.suite, loaded.tokenizer, batch_tokens=args.batch_tokens)
    wanted = args.tasks.split(",") if args.tasks else suite.names
    tasks = [t for t in suite.tasks if t.name in wanted]
    sizes = {args.suite: {t.name: t.n for t in tasks}}
    if args.suite != "builtin:small":
        small = {t.name: t for t in load_suite("builtin:small", loaded.tokenizer).tasks}
        for task in tasks:  # small's docs must be the first of these docs for the cut to be small's figures
            assert task.requests[: small[task.name].n] == small[task.name].requests, task.name
        sizes["builtin:small"] = {t.name: small[t.name].n for t in tasks}

    cache = BaselineCache(CACHE, loaded.fingerprint, enabled=not args.fresh)
    base, timings = {}, {}
    for task in tasks:
        base[task.name], timings[task.name] = scored_base(cache, task, loaded, args.batch_tokens, suite.pad_id)
        t = timings[task.name]
        print(f"base {task.name}: {base[task.name].metric} {base[task.name].value:.3f} (n={task.n}, "
              f"{t['tokens']} tokens, {t['wall_seconds']:.1f} s wall, {t['cpu_seconds']:.1f} s CPU"
              f"{', cached' if t['cached'] else ''})", file=sys.stderr)

    rows = []
    for spec in args.damage:
        now = {}
        with damaged(loaded, spec) as model:
            for task in tasks:
                now[task.name] = task.evaluate(model, args.batch_tokens, suite.pad_id)
                print(f"{spec} {task.name}: {now[task.name].metric} {now[task.name].value:.3f}", file=sys.stderr)
        for size, limits in sizes.items():
            rows += comparison_rows(size, spec, base, now, limits)

    saved = merge(args.out, loaded, args.suite, sizes, timings, rows)
    print_timings(args.suite, tasks, timings)
    print_rows(rows)
    print(f"wrote {saved}")
    return 0


def scored_base(cache: BaselineCache, task, loaded, batch_tokens: int, pad_id: int) -> tuple[TaskResult, dict]:
    """The unedited model's result on `task` and its timing, from the cache when it holds them."""
    parts = {"bench": "benchmarks_small", "task": Suite("task", [task]).fingerprint(), "dtype": "float32",
             "batch_tokens": batch_tokens, "threads": torch.get_num_threads()}
    tokens = sum(len(s) for s in task.sequences)
    entry = cache.get("bench-task", parts)
    if entry is not None:
        return TaskResult.from_dict(entry["result"]), {**entry["timing"], "cached": True}
    wall, cpu = time.perf_counter(), time.process_time()
    result = task.evaluate(loaded.model, batch_tokens, pad_id)
    timing = {"docs": task.n, "sequences": len(task.sequences), "tokens": tokens,
              "wall_seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}
    cache.put("bench-task", parts, {"result": result.to_dict(per_doc=True), "timing": timing})
    return result, {**timing, "cached": False}


class damaged:
    """The model with `spec`'s damage applied for the duration of a `with` block, restored after."""

    def __init__(self, loaded, spec: str):
        self.loaded, self.kind, self.size = loaded, *spec.split(":", 1)

    def __enter__(self):
        if self.kind == "noise":
            from editgate.architecture import mlp_out

            self.weight = mlp_out(self.loaded.model, LAYER).module.weight
            self.saved = self.weight.detach().clone()
            noise = torch.randn(self.weight.shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                self.weight.add_(noise * float(self.size) * self.saved.float().std())
            return self.loaded.model
        if self.kind == "rome":
            from editgate import EditSession

            self.session = EditSession(self.loaded, cache_dir=CACHE, method="rome", log=lambda _m: None)
            for edit in counterfact_edits(int(self.size), "rome"):
                self.session.apply([edit])
            return self.session.model
        raise SystemExit(f"unknown damage {self.kind!r}: noise:S or rome:N")

    def __exit__(self, *_exc):
        if self.kind == "noise":
            with torch.no_grad():
                self.weight.copy_(self.saved)
        else:
            self.session.undo_to(0)


def first(result: TaskResult, n: int, metric: str) -> TaskResult:
    """`result` on its first `n` docs only, for `metric` (a smaller limit's docs are the first ones)."""
    if metric == "perplexity":
        nll, tokens = result.per_doc[PER_DOC_NLL][:n], result.per_doc[PER_DOC_TOKENS][:n]
        value = math.exp(sum(nll) / sum(tokens)) if math.isfinite(sum(nll)) else math.inf
        return TaskResult(result.name, metric, value, None, n, 0.0, per_doc={PER_DOC_NLL: nll, PER_DOC_TOKENS: tokens})
    hits = result.per_doc[metric][:n]
    value = sum(hits) / n
    return TaskResult(result.name, metric, value, accuracy_stderr(value, n), n, 0.0, per_doc={metric: hits})


def comparison_rows(size: str, spec: str, base: dict, now: dict, limits: dict) -> list[dict]:
    rows = []
    for name, b in base.items():
        metrics = [b.metric] + (["perplexity"] if PER_DOC_NLL in b.per_doc and b.metric != "perplexity" else [])
        for metric in metrics:
            c = compare({name: first(b, limits[name], metric)}, {name: first(now[name], limits[name], metric)}, 0.05)[0]
            rows.append({"suite": size, "damage": spec, "task": name, "metric": metric, "n": limits[name],
                         "base": c.base, "now": c.now, "drop": c.drop, "stderr_paired": c.stderr if c.paired else None,
                         "stderr_unpaired": c.stderr_unpaired, "lost": c.lost, "gained": c.gained,
                         "within_noise": c.within_noise, "failed": c.failed})
    return rows


def merge(path: Path, loaded, suite: str, sizes: dict, timings: dict, rows: list[dict]) -> Path:
    """Add this invocation's rows and timings to the results file (kept when it is the same model's)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    if data.get("model_fingerprint") != loaded.fingerprint or "comparisons" not in data:
        data = {"model": "builtin:smollm2-135m", "model_fingerprint": loaded.fingerprint, "comparisons": {},
                "timings": {}, "doc_counts": {}}
    for row in rows:
        data["comparisons"][f"{row['suite']} | {row['damage']} | {row['task']} | {row['metric']}"] = row
    for name, timing in timings.items():
        if not timing["cached"]:
            data["timings"][f"{suite} | {name}"] = {k: v for k, v in timing.items() if k != "cached"}
    for size, limits in sizes.items():
        data["doc_counts"].setdefault(size, {}).update(limits)
    data["machine"] = machine()
    data["command"] = "python bench/benchmarks_small.py " + " ".join(sys.argv[1:])
    data["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def print_timings(suite: str, tasks: list, timings: dict) -> None:
    print(f"{suite}, {torch.get_num_threads()} thread(s): the unedited model's run")
    print(f"{'task':<16}{'docs':>6}{'seqs':>6}{'tokens':>8}{'wall s':>9}{'CPU s':>8}")
    for task in tasks:
        t = timings[task.name]
        print(f"{task.name:<16}{t['docs']:>6}{t['sequences']:>6}{t['tokens']:>8}{t['wall_seconds']:>9.1f}"
              f"{t['cpu_seconds']:>8.1f}{'  (cached)' if t['cached'] else ''}")
    print(f"{'suite':<16}{sum(timings[t.name]['docs'] for t in tasks):>6}"
          f"{sum(timings[t.name]['sequences'] for t in tasks):>6}{sum(timings[t.name]['tokens'] for t in tasks):>8}"
          f"{sum(timings[t.name]['wall_seconds'] for t in tasks):>9.1f}"
          f"{sum(timings[t.name]['cpu_seconds'] for t in tasks):>8.1f}")


def print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    print("| suite | damage | task | metric | n | base | now | drop | se paired | se unpaired | lost / gained |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["suite"], r["damage"], r["task"], r["metric"], r["n"], f"{r['base']:.3f}", f"{r['now']:.3f}",
                 f"{r['drop']:.3f}", _num(r["stderr_paired"]), _num(r["stderr_unpaired"]),
                 "—" if r["lost"] is None else f"{r['lost']} / {r['gained']}"]
        print("| " + " | ".join(map(str, cells)) + " |")


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
