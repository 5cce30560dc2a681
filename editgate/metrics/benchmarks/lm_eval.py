"""The lm-evaluation-harness adapter: `lm-eval:<task,...>[:limit]` suites, run by lm-eval itself."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any

from editgate.errors import InputError, Problem
from editgate.metrics.benchmarks.results import TaskResult


@dataclass
class LmEvalTasks:
    """`lm-eval:<task,...>[:limit]`: lm-evaluation-harness tasks on the in-memory (edited) model.

    lm-eval is optional and not installed in editgate's own CI, so this path is not covered by tests."""

    names: list[str]
    limit: int | None
    tokenizer: Any

    @classmethod
    def parse(cls, spec: str, tokenizer) -> "LmEvalTasks":
        body = spec.removeprefix("lm-eval:")
        tasks, _, limit = body.partition(":")
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names or (limit and not limit.isdigit()):
            raise InputError(Problem("<benchmarks.suite>", None, f"{spec!r}: write lm-eval:<task>[,<task>...]"
                                                                 "[:<limit>], e.g. lm-eval:arc_easy,piqa:200"))
        if importlib.util.find_spec("lm_eval") is None:
            raise InputError(Problem("<benchmarks.suite>", None,
                                     f"{spec!r} needs lm-evaluation-harness: install lm-eval (pip install lm-eval), "
                                     "or use builtin:small"))
        return cls(names, int(limit) if limit else None, tokenizer)

    def version(self) -> str:
        from importlib.metadata import version

        return version("lm_eval")

    def run(self, model, log) -> dict[str, TaskResult]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        start = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=8)
        out = simple_evaluate(model=lm, tasks=list(self.names), limit=self.limit, log_samples=False)
        seconds = time.perf_counter() - start
        results = {}
        for name, figures in out["results"].items():
            metric = next((m for m in ("acc", "acc_norm", "exact_match", "word_perplexity")
                           if f"{m},none" in figures), None)
            if metric is None:
                continue
            stderr = figures.get(f"{metric}_stderr,none")
            n = out.get("n-samples", {}).get(name, {}).get("effective", 0)
            value = float(figures[f"{metric},none"])
            results[name] = TaskResult(name, "perplexity" if metric == "word_perplexity" else metric, value,
                                       float(stderr) if isinstance(stderr, (int, float)) else None, int(n),
                                       seconds / max(len(self.names), 1))
            if log:
                log(f"benchmark {name} (lm-eval): {metric} {value:.3f}")
        return results
