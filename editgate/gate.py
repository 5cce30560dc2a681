"""The gate: apply edits in order, check perplexity after each, score the edits, reach a verdict.

The run is a loop over edits with a cheap check after every `check_every` of them. Perplexity is
compared to the unedited model's on the same tokenized sample (identical batching, so even bf16
compares like with like). A NaN, an infinity or a ratio over `collapse_ratio` stops the run at once;
a ratio over `fail_ratio` fails the gate but the run goes on so the report shows the whole curve.
The culprit is the first edit whose check crossed a threshold.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import editgate
from editgate.config import Config
from editgate.corpora import sample_texts
from editgate.manifests import Edit
from editgate.methods import AppliedEdit, get_method
from editgate.methods.base import EditMethod, MethodContext
from editgate.metrics.edit_metrics import DEFINITION, EditScorer, EditScores, mean_of
from editgate.metrics.perplexity import PerplexityResult, PerplexitySample, perplexity
from editgate.models import LoadedModel
from editgate.policy import Policy

PASS, WARN, FAIL, COLLAPSE = "pass", "warn", "fail", "collapse"
STATS_CORPUS = "builtin:wiki"


@dataclass
class EditRecord:
    """What happened to one edit: the check after it and what the method reported."""

    edit: Edit
    method: str
    status: str = "not-run"  # pass | warn | fail | collapse | not-run | unchecked
    perplexity: float | None = None
    ratio: float | None = None
    ratio_change: float | None = None  # this check's ratio minus the previous check's
    method_info: dict[str, Any] = field(default_factory=dict)
    scores: EditScores | None = None
    edit_seconds: float = 0.0
    check_seconds: float = 0.0


@dataclass
class GateResult:
    verdict: str  # passed | failed
    reasons: list[str]
    culprit: EditRecord | None
    records: list[EditRecord]
    baseline: PerplexityResult
    scores_summary: dict[str, float | None]
    timings: dict[str, float]
    environment: dict[str, Any]
    stopped_early: bool = False


def classify(ratio: float, policy: Policy) -> str:
    """The status of one perplexity check; NaN and infinity are a collapse, never a crash."""
    pp = policy.perplexity
    if not math.isfinite(ratio) or ratio > pp.collapse_ratio:
        return COLLAPSE
    if ratio > pp.fail_ratio:
        return FAIL
    if ratio > pp.warn_ratio:
        return WARN
    return PASS


class Gate:
    """One run of the gate over a loaded model; `run()` returns the result (it never exits)."""

    def __init__(self, config: Config, policy: Policy, edits: list[Edit], loaded: LoadedModel,
                 log: Callable[[str], None] = print):
        self.config, self.policy, self.edits, self.loaded, self.log = config, policy, edits, loaded, log
        self.context = MethodContext(
            cache_dir=Path(config.cache_path()), model_fingerprint=loaded.fingerprint,
            stats_texts=lambda n: sample_texts(STATS_CORPUS, "stats", n, config.seed),
            stats_corpus_name=STATS_CORPUS, seed=config.seed, log=log)
        self.methods: dict[str, EditMethod] = {}
        self.timings: dict[str, float] = {"model_load": loaded.load_seconds}
        # kept on the gate (not only returned) so a crash part-way still leaves a partial report
        self.records = [EditRecord(e, e.method or config.method) for e in edits]
        self.baseline: PerplexityResult | None = None
        self.applied: list[AppliedEdit] = []  # one per applied batch, in order: undo, diff, export

    # -- pieces -------------------------------------------------------------------------------

    def method(self, name: str) -> EditMethod:
        """One instance per method per run, so its memo (templates, inverse covariances) is shared."""
        if name not in self.methods:
            self.methods[name] = get_method(name)(self.loaded.model, self.loaded.tokenizer, self.context)
        return self.methods[name]

    def hparams(self, edit: Edit) -> Any:
        """Method defaults scaled to the model, then editgate.yaml's, then the manifest's and edit's."""
        method = self.method(edit.method or self.config.method)
        overrides = {**self.config.hparams.get(method.name, {}), **edit.hparams}
        return method.default_hparams().updated(overrides)

    def check_sample(self) -> PerplexitySample:
        pp = self.policy.perplexity
        texts = sample_texts(pp.corpus, "perplexity", pp.samples, pp.seed, self.config.root)
        return PerplexitySample.from_texts(self.loaded.tokenizer, texts, pp.max_tokens, pp.batch_tokens)

    def is_check_point(self, index: int) -> bool:
        every = self.policy.perplexity.check_every
        return (index + 1) % every == 0 or index == len(self.edits) - 1

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> GateResult:
        model = self.loaded.model
        start = time.perf_counter()
        sample = self.check_sample()
        self.log(f"perplexity sample: {len(sample.token_ids)} texts, {sample.scored_tokens} tokens")
        baseline = self.baseline = perplexity(model, sample)
        self.timings["baseline_perplexity"] = baseline.seconds
        self.log(f"baseline perplexity {baseline.token_perplexity:.3f} ({baseline.seconds:.1f}s)")
        scorer = EditScorer(model, self.loaded.tokenizer, self.edits, self.policy.perplexity.batch_tokens)

        records = self.records
        previous_ratio, stopped = 1.0, False
        for batch in self.batches():
            self.apply([records[i] for i in batch])
            index, record = batch[-1], records[batch[-1]]
            for i in batch[:-1]:
                records[i].status = "unchecked"  # checked together with the batch's last edit
            if not any(self.is_check_point(i) for i in batch):
                record.status = "unchecked"
                continue
            result = perplexity(model, sample)
            record.check_seconds = result.seconds
            record.perplexity = result.token_perplexity
            record.ratio = result.token_perplexity / baseline.token_perplexity
            record.ratio_change = record.ratio - previous_ratio if math.isfinite(record.ratio) else math.inf
            record.status = classify(record.ratio, self.policy)
            previous_ratio = record.ratio
            self.log(f"[{index + 1}/{len(records)}] {record.edit.id}: perplexity {record.perplexity:.3f} "
                     f"(x{record.ratio:.3f}) {record.status}  edit {record.edit_seconds:.1f}s check {result.seconds:.1f}s")
            if record.status == COLLAPSE:
                stopped = True
                self.log(f"collapse after {record.edit.id}: stopping the run")
                break

        applied = [r for r in records if r.status != "not-run"]
        if not stopped:
            for record, scores in zip(applied, scorer.score(model, upto=len(applied))):
                record.scores = scores
        self.timings["total_gate"] = time.perf_counter() - start
        return self.verdict(records, baseline, stopped)

    def batches(self) -> list[list[int]]:
        """Edit indices grouped into the units a method applies at once: consecutive edits of one
        manifest with the same method and hyperparameters, up to the method's `batch_size` (ROME: 1)."""
        groups: list[list[int]] = []
        for i, edit in enumerate(self.edits):
            size = getattr(self.hparams(edit), "batch_size", 1)
            if groups and len(groups[-1]) < size and self._same_unit(self.edits[groups[-1][0]], edit):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _same_unit(self, a: Edit, b: Edit) -> bool:
        return (a.source, a.method or self.config.method, a.hparams) == (b.source, b.method or self.config.method, b.hparams)

    def apply(self, records: list[EditRecord]) -> AppliedEdit:
        """Apply one batch of edits (same method and hyperparameters) and time it."""
        method = self.method(records[0].method)
        start = time.perf_counter()
        applied = method.apply([r.edit for r in records], self.hparams(records[0].edit))
        self.applied.append(applied)
        seconds = time.perf_counter() - start
        for record in records:
            record.edit_seconds = seconds / len(records)
            record.method_info = applied.info
        return applied

    # -- the verdict --------------------------------------------------------------------------

    def verdict(self, records: list[EditRecord], baseline: PerplexityResult, stopped: bool) -> GateResult:
        reasons = []
        culprit = next((r for r in records if r.status in (FAIL, COLLAPSE)), None)
        if culprit is not None:
            word = "collapsed the model" if culprit.status == COLLAPSE else "crossed fail_ratio"
            reasons.append(f"edit '{culprit.edit.id}' ({culprit.edit.where}) {word}: perplexity "
                           f"x{culprit.ratio:.3f} of the base model (fail_ratio {self.policy.perplexity.fail_ratio})")
        summary = self.summarise_scores(records)
        ep = self.policy.edits
        for key, minimum in (("efficacy", ep.min_efficacy), ("generalization", ep.min_generalization),
                             ("locality", ep.min_locality)):
            value = summary.get(key)
            if value is not None and value < minimum:
                reasons.append(f"{key} {value:.3f} is below the policy's min_{key} {minimum}")
        verdict = "failed" if reasons else "passed"
        return GateResult(verdict, reasons, culprit, records, baseline, summary, dict(self.timings),
                          environment(self.loaded), stopped)

    @staticmethod
    def summarise_scores(records: list[EditRecord]) -> dict[str, float | None]:
        scored = [r.scores for r in records if r.scores is not None]
        keys = ("efficacy", "generalization", "locality", "efficacy_cf", "generalization_cf")
        summary: dict[str, Any] = {k: mean_of([getattr(s, k) for s in scored]) for k in keys}
        summary["definition"] = DEFINITION
        return summary


def environment(loaded: LoadedModel) -> dict[str, Any]:
    import transformers

    return {
        "model": loaded.spec, "model_source": loaded.source, "model_fingerprint": loaded.fingerprint,
        "device": str(loaded.device), "dtype": str(loaded.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "editgate": editgate.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
    }
