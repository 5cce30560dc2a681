"""The gate: apply edits in order, check perplexity after each, confirm with benchmarks at checkpoints,
score the edits, reach a verdict and name the culprit.

Edits are applied in units (one edit, or a batch for batch methods). After every `check_every` edits
the perplexity of the check sample is compared to the unedited model's on the same tokenized sample
(identical batching, so even bf16 compares like with like). A NaN, an infinity or a ratio over
`collapse_ratio` stops the run at once; a ratio over `fail_ratio` fails the gate but the run goes on
so the report shows the whole curve. The culprit is the first edit after which a threshold was
crossed: when a failing check covers several units, the gate bisects inside that window by undoing
the window's edits exactly (only the weights they wrote) and replaying them with a check after each.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import editgate
from editgate.baseline import BaselineCache, digest
from editgate.config import Config
from editgate.conflicts import describe, find_conflicts
from editgate.corpora import sample_texts
from editgate.errors import InputError, RunError
from editgate.manifests import Edit, edit_fingerprint
from editgate.methods import AppliedEdit
from editgate.metrics.check import CheckResult, PerplexityCheck
from editgate.metrics.edit_metrics import DEFINITION, SCORE_KEYS, EditScorer, EditScores, mean_of
from editgate.metrics.perplexity import PerplexityResult, PerplexitySample, perplexity
from editgate.metrics.prefix import PrefixForwards, PrefixStore
from editgate.metrics import SCORING_VERSION
from editgate.metrics.scoring import MAX_PADDING
from editgate.models import LoadedModel
from editgate.policy import Policy, load_policy
from editgate.session import STATS_CORPUS, EditSession
from editgate.statecache import StateCache, StoredState, chain
from editgate.trend import assess, standard_error
from editgate.metrics.benchmarks import TaskResult, compare, load_suite

CPU_SAMPLE_TOKENS = 20_000  # a check sample above this is GPU-sized: the log suggests builtin:cpu on a CPU


def cpu_sample_hint(scored_tokens: int) -> str:
    """What a CPU run of a GPU-sized check sample costs, and the builtin policy sized for a CPU."""
    cpu = load_policy("builtin:cpu").perplexity
    return (f"this check sample ({scored_tokens:,} tokens) is sized for a GPU: on a CPU each check scores at least "
            "a quarter of it, and all of it near a band edge; policy builtin:cpu keeps the default's thresholds on "
            f"{cpu.samples} texts of up to {cpu.max_tokens} tokens (README: \"A policy for the CPU\")")

PASS, WARN, FAIL, COLLAPSE = "pass", "warn", "fail", "collapse"


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
    risk: list[str] = field(default_factory=list)  # why the update looked risky before any check
    scores: EditScores | None = None
    locality_after_edit: float | None = None  # its locality prompts right after it was applied
    edit_seconds: float = 0.0
    check_seconds: float = 0.0
    found_by_bisection: bool = False
    check: CheckResult | None = None  # how the check after this edit was made (texts, interval, layers)
    trend: dict[str, Any] | None = None  # the trend after this check (trend.py): edits_left, accelerating, fired

    _KEPT = ("status", "perplexity", "ratio", "ratio_change", "method_info", "risk", "locality_after_edit",
             "edit_seconds", "check_seconds", "found_by_bisection", "trend")

    def to_state(self) -> dict[str, Any]:
        """What a stored state keeps of this record (everything measured; the edit is the new run's)."""
        kept = {name: getattr(self, name) for name in self._KEPT}
        return {**kept, "check": dataclasses.asdict(self.check) if self.check else None,
                "scores": self.scores.to_dict() if self.scores else None}

    def restore(self, kept: dict[str, Any]) -> None:
        for name in self._KEPT:
            setattr(self, name, kept[name])
        self.scores = EditScores(**kept["scores"]) if kept["scores"] else None
        check = kept["check"]
        if check is not None:
            interval = tuple(check["interval"]) if check["interval"] else None
            self.check = CheckResult(**{**check, "interval": interval})


@dataclass
class Checkpoint:
    """Benchmarks and edit metrics after `edits` edits."""

    edits: int
    benchmarks: list[dict] = field(default_factory=list)  # TaskComparison dicts
    edit_metrics: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0

    def failing(self, within_noise: str) -> list[dict]:
        """The task comparisons that fail the verdict: beyond max_drop, and outside the noise unless the
        policy's `within_noise` says a drop inside it fails too."""
        return [c for c in self.benchmarks if c["failed"] and (not c["within_noise"] or within_noise == "fail")]


@dataclass
class GateResult:
    verdict: str  # passed | failed
    reasons: list[str]
    warnings: list[str]
    culprit: EditRecord | None
    records: list[EditRecord]
    baseline: PerplexityResult
    baseline_benchmarks: dict[str, dict]
    checkpoints: list[Checkpoint]
    scores_summary: dict[str, Any]
    timings: dict[str, float]
    environment: dict[str, Any]
    cached: list[str]
    stopped_early: bool = False
    confirmation: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None  # the stored state the run started from (statecache.py)


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
                 log: Callable[[str], None] = print, use_cache: bool = True):
        """`use_cache`: read cached baselines and stored states (false: measure and replay everything)."""
        self.config, self.policy, self.edits, self.loaded, self.log = config, policy, edits, loaded, log
        # every edit, undo and "the model to evaluate now" goes through the session
        self.session = EditSession(loaded, cache_dir=config.cache_path(), method=config.method,
                                   hparams=config.hparams, seed=config.seed, log=log)
        self.cache = BaselineCache(Path(config.cache_path()), loaded.fingerprint, enabled=use_cache, log=log)
        self.timings: dict[str, float] = {"model_load": loaded.load_seconds}
        # kept on the gate (not only returned) so a crash part-way still leaves a partial report
        self.records = [EditRecord(e, self.session.method_of(e)) for e in edits]
        self.baseline: PerplexityResult | None = None
        self.checker: PerplexityCheck | None = None
        self.checkpoints: list[Checkpoint] = []
        self.suite = None
        self.baseline_benchmarks: dict = {}
        self.check_texts: list[str] = []
        self.conflicts = find_conflicts(edits)  # prompts some edit changes on purpose (conflicts.py)
        self.use_cache = use_cache
        self.states: StateCache | None = None  # set by prepare(): the run key needs the check sample
        # unedited states below the edited block, for checks and checkpoints alike (metrics/prefix.py)
        self.prefix_store = PrefixStore(config.cache_path(), loaded.fingerprint, self.arithmetic(),
                                        read=use_cache, log=log)
        self.checkpoint_prefixes = PrefixForwards(policy.perplexity.prefix_cache, self.prefix_store, log)
        self.restored: dict[str, Any] | None = None

    # -- pieces -------------------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """What checks and benchmarks evaluate: the edited model, or the base wrapped by a memory."""
        return self.session.model

    def units(self) -> list[list[int]]:
        """Edit indices grouped into what a method applies at once: consecutive edits of one manifest
        with the same method and hyperparameters, up to the method's `batch_size` (ROME: 1)."""
        groups: list[list[int]] = []
        for i, edit in enumerate(self.edits):
            size = getattr(self.session.hparams(edit), "batch_size", 1)
            if groups and len(groups[-1]) < size and self._same_unit(self.edits[groups[-1][0]], edit):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _same_unit(self, a: Edit, b: Edit) -> bool:
        method = self.session.method_of
        return (a.source, method(a), a.hparams) == (b.source, method(b), b.hparams)

    def check_sample(self) -> PerplexitySample:
        pp = self.policy.perplexity
        texts = self.check_texts = sample_texts(pp.corpus, "perplexity", pp.samples, pp.seed, self.config.root)
        return PerplexitySample.from_texts(self.loaded.tokenizer, texts, pp.max_tokens, pp.batch_tokens, pp.seed)

    def measure_baseline(self, sample: PerplexitySample) -> PerplexityResult:
        """The unedited model's perplexity, from the cache when the same tokens were scored before."""
        parameter = next(self.loaded.model.parameters())
        parts = {"ids": sample.token_ids, "chunks": sample.chunks, "batch_tokens": sample.batch_tokens,
                 "max_padding": MAX_PADDING, "dtype": str(parameter.dtype),
                 "threads": torch.get_num_threads(),  # CPU sums split by thread: last-bit differences
                 "device": parameter.device.type}
        cached = self.cache.get("perplexity", parts)
        if cached is not None:
            return PerplexityResult(cached["token_perplexity"], cached["mean_text_perplexity"],
                                    cached["text_nll"], cached["text_tokens"], 0.0)
        result = perplexity(self.loaded.model, sample)
        self.cache.put("perplexity", parts, {k: getattr(result, k) for k in (
            "token_perplexity", "mean_text_perplexity", "text_nll", "text_tokens")})
        return result

    def prepare_benchmarks(self) -> None:
        """Load the suite and its baseline (cached like perplexity); `suite: none` skips benchmarks."""
        spec = self.policy.benchmarks.suite
        if spec in ("none", "off"):
            return
        start = time.perf_counter()
        self.suite = load_suite(spec, self.loaded.tokenizer, self.config.root,
                                lm_eval_include=self.config.lm_eval_include)
        parameter = next(self.loaded.model.parameters())
        parts = {"suite": self.suite.fingerprint(), "dtype": str(parameter.dtype), "device": parameter.device.type}
        # an entry without per-doc outcomes (editgate before benchmark FORMAT_VERSION 2) cannot be compared
        # doc by doc: measured again (lm-eval results have none to keep)
        cached = self.cache.get("benchmarks", parts, usable=lambda entry: isinstance(entry, dict) and (
            bool(self.suite.lm_eval) or all(isinstance(r, dict) and r.get("per_doc") for r in entry.values())))
        if cached is None:
            results = self.suite.run(self.loaded.model, self.log)
            cached = {name: r.to_dict(per_doc=True) for name, r in results.items()}
            self.cache.put("benchmarks", parts, cached)
        self.baseline_benchmarks = {name: TaskResult.from_dict(r) for name, r in cached.items()}
        self.timings["baseline_benchmarks"] = time.perf_counter() - start

    def is_check_point(self, unit: list[int]) -> bool:
        every = self.policy.perplexity.check_every
        return any((i + 1) % every == 0 or i == len(self.edits) - 1 for i in unit)

    def is_benchmark_point(self, unit: list[int]) -> bool:
        run_at = self.policy.benchmarks.run_at
        return isinstance(run_at, int) and any((i + 1) % run_at == 0 for i in unit) and unit[-1] != len(self.edits) - 1

    # -- the run ------------------------------------------------------------------------------

    def prepare(self) -> tuple[PerplexitySample, EditScorer]:
        """The unedited model's figures, measured or read from the cache: what every run compares to."""
        sample = self.check_sample()
        self.log(f"perplexity sample: {len(sample.token_ids)} texts, {sample.scored_tokens} tokens")
        if self.loaded.device.type == "cpu" and sample.scored_tokens > CPU_SAMPLE_TOKENS:
            self.log(cpu_sample_hint(sample.scored_tokens))
        baseline = self.baseline = self.measure_baseline(sample)
        self.timings["baseline_perplexity"] = baseline.seconds
        self.log(f"baseline perplexity {baseline.token_perplexity:.3f} "
                 + ("(cached)" if "perplexity" in self.cache.hits else f"({baseline.seconds:.1f}s)"))
        self.checker = PerplexityCheck(sample, baseline, self.policy.perplexity, lambda r: classify(r, self.policy),
                                       self.log, self.prefix_store)
        self.prepare_benchmarks()
        scorer = EditScorer(self.loaded.model, self.loaded.tokenizer, self.edits,
                            self.policy.perplexity.batch_tokens, cache=self.cache, conflicts=self.conflicts)
        start = time.perf_counter()
        self.session.prepare(self.edits)  # on the unedited model, before any edit or stored state
        self.timings["method_setup"] = time.perf_counter() - start
        self.states = StateCache(self.config.cache_path(), self.loaded.fingerprint, self.run_key(sample),
                                 read=self.use_cache, log=self.log)
        return sample, scorer

    def run(self) -> GateResult:
        """The whole sequence and its verdict; the session is left with the run's edits applied."""
        start = time.perf_counter()
        _, scorer = self.prepare()
        units = self.units()
        keys = chain(self.states.run_key, [self.unit_key(unit) for unit in units])
        done = self.restore(units, keys, scorer)
        stopped = self.sequence(units[done:], scorer)
        if not stopped:
            if not self.checkpoints or self.checkpoints[-1].edits < len(self.edits):  # not restored with the state
                self.checkpoint(scorer, final=True)
            self.store_state(units, keys)
        self.timings["total_gate"] = time.perf_counter() - start
        return self.verdict(stopped)

    # -- stored states (statecache.py) ----------------------------------------------------------

    def arithmetic(self) -> dict[str, Any]:
        """What besides the weights and the tokens decides a forward pass's last bits (digests add
        editgate's version)."""
        import transformers

        parameter = next(self.loaded.model.parameters())
        return {"torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(parameter.dtype),
                "devices": sorted({str(p.device) for p in self.loaded.model.parameters()}),
                "threads": torch.get_num_threads()}

    def run_key(self, sample: PerplexitySample) -> str:
        """Everything besides the edits that decides the edited weights and the checks after each edit."""
        return digest({
            **self.arithmetic(), "seed": self.config.seed, "stats": STATS_CORPUS,
            "policy": dataclasses.asdict(self.policy), "check_sample": digest(sample.token_ids),
            "suite": self.suite.fingerprint() if self.suite is not None else None, "scoring": SCORING_VERSION,
        })

    def unit_key(self, unit: list[int]) -> list[Any]:
        edits = [self.edits[i] for i in unit]
        hparams = self.session.hparams(edits[0])
        return [[edit_fingerprint(e) for e in edits], self.session.method_of(edits[0]), dataclasses.asdict(hparams)]

    def restore(self, units: list[list[int]], keys: list[str], scorer: EditScorer) -> int:
        """Start from the longest stored state this sequence begins with; returns the units it covers."""
        stored = self.states.longest(keys, lambda n: self.is_check_point(units[n - 1]))
        if stored is None:
            return 0
        start = time.perf_counter()
        kept = stored.records(self.log)
        covered = [i for unit in units[: stored.units] for i in unit]
        if kept is None or len(kept["records"]) != len(covered) or not self._apply_stored(stored, covered):
            return 0
        for i, record in zip(covered, kept["records"]):
            self.records[i].restore(record)
        # the stored run's checkpoints; its final one is this run's too when nothing is left to apply
        whole = len(covered) == len(self.edits)
        self.checkpoints = [Checkpoint(**point) for point in kept["checkpoints"]
                            if whole or point["edits"] < len(covered)]
        seconds = self.timings["restore_state"] = time.perf_counter() - start
        self.restored = {"edits": len(covered), "units": stored.units, "state": stored.directory.name,
                         "seconds": seconds}
        self.log(f"restored the state after {len(covered)} edit(s) from the cache ({seconds:.1f}s); "
                 f"{len(self.edits) - len(covered)} left to apply and check")
        if self.is_benchmark_point(units[stored.units - 1]):  # the stored run ended there: no checkpoint yet
            self.checkpoint(scorer, final=False)
        return stored.units

    def _apply_stored(self, stored: StoredState, covered: list[int]) -> bool:
        """The stored weights, checked against the base model's bytes first and the saved result's after;
        False (nothing written) when they cannot be used: the run then replays."""
        from editgate.export import pack_weights, read_pack

        try:
            tensors, metadata = read_pack(stored.pack, shown="stored state")
            weights = pack_weights(self.loaded.model, tensors, metadata)
        except (InputError, RunError, OSError) as error:  # removed by another job's pruning, say
            self.log(f"the stored state {stored.directory.name} cannot be used ({error}); replaying")
            return False
        self.session.apply_weights(weights, "stored-state", [self.edits[i].id for i in covered])
        return True

    def store_state(self, units: list[list[int]], keys: list[str]) -> None:
        """Keep the state after the whole sequence, its records and checkpoints (the final one too) for
        later runs, when an edit pack reproduces it."""
        session = self.session
        if not units or not all(applied.weights_only for applied in session.applied):
            return
        records = {"records": [r.to_state() for r in self.records],
                   "checkpoints": [dataclasses.asdict(point) for point in self.checkpoints]}
        try:
            self.states.store(keys[-1], lambda path: session.save_delta(path, self.config.model), records)
        except OSError as error:  # a full or read-only cache costs the next run time, never this verdict
            self.log(f"could not store the edited state for later runs: {error}")

    def sequence(self, units: list[list[int]], scorer: EditScorer) -> bool:
        """Apply `units` in order with checks; returns True when a collapse stopped the run."""
        window: list[list[int]] = []  # units applied since the last check
        for unit in units:
            self.apply(unit)
            self.measure_locality_after(unit, scorer)
            window.append(unit)
            if not self.is_check_point(unit):
                for i in unit:
                    self.records[i].status = "unchecked"
                continue
            status = self.check(unit)
            if status in (FAIL, COLLAPSE) and len(window) > 1:
                status = self.bisect(window)
            window = []
            if status == COLLAPSE:
                self.log("collapse: stopping the run")
                return True
            if self.is_benchmark_point(unit):
                self.checkpoint(scorer, final=False)
        return False

    def apply(self, unit: list[int]) -> AppliedEdit:
        """Apply one unit of edits (same method and hyperparameters) and record what it did."""
        records = [self.records[i] for i in unit]
        start = time.perf_counter()
        applied = self.session.apply([r.edit for r in records])
        seconds = time.perf_counter() - start
        for record in records:
            record.edit_seconds = seconds / len(records)
            record.method_info = applied.info
            record.risk = self.risk(applied.info)
            record.status = "unchecked"
        return applied

    def measure_locality_after(self, unit: list[int], scorer: EditScorer) -> None:
        """Each edit's locality right after it (EasyEdit's sequential evaluation): bleed as it happened,
        before later edits add theirs."""
        for i, value in scorer.locality_after(self.model, unit).items():
            self.records[i].locality_after_edit = value

    def risk(self, info: dict[str, Any]) -> list[str]:
        """Cheap warning signs of a parametric update, known before any check ("Fall of ROME")."""
        ep, reasons = self.policy.edits, []
        signals = risk_signals(info)
        largest, denominator = signals["relative_update_norm"], signals["key_denominator"]
        if largest is not None and largest > ep.max_relative_update:
            reasons.append(f"update is {largest:.3f} of the weight's norm (> {ep.max_relative_update})")
        if denominator is not None and denominator < ep.min_key_denominator:
            reasons.append(f"key denominator / key width is {denominator:.4f} (< {ep.min_key_denominator})")
        return reasons

    def check(self, unit: list[int]) -> str:
        """Perplexity after `unit`, recorded on its last edit; returns the status."""
        record = self.records[unit[-1]]
        result = record.check = self.measure_check()
        previous = next((r.ratio for r in reversed(self.records[: unit[-1]]) if r.ratio is not None), 1.0)
        record.check_seconds = result.seconds
        record.perplexity = result.perplexity
        record.ratio = result.ratio
        record.ratio_change = record.ratio - previous if math.isfinite(record.ratio) else math.inf
        record.status = classify(record.ratio, self.policy)
        record.trend = self.trend_after(unit[-1])
        how = (f", {result.texts}/{result.total_texts} texts decided it" if result.stopped_early else "") + (
            f", blocks {result.from_layer}+" if result.from_layer else "")
        if record.trend and record.trend["fired"]:
            how += f"; trend: fail_ratio projected in {record.trend['edits_left']:.1f} edit(s)"
        self.log(f"[{unit[-1] + 1}/{len(self.records)}] {record.edit.id}: perplexity {record.perplexity:.3f} "
                 f"(x{record.ratio:.3f}) {record.status}  edit {record.edit_seconds:.1f}s "
                 f"check {result.seconds:.1f}s{how}")
        return record.status

    def trend_after(self, index: int) -> dict[str, Any] | None:
        """The trend of the checks up to edit `index` (trend.py); None when off or too few checks yet.
        Only earlier records count, so a bisection's replay sees what a check after every edit would."""
        pp = self.policy.perplexity
        if not pp.trend_warning:
            return None
        points = [(i + 1, r.ratio, standard_error(r.check.interval if r.check else None))
                  for i, r in enumerate(self.records[: index + 1]) if r.ratio is not None]
        trend = assess(points, pp.fail_ratio, pp.trend_horizon)
        return None if trend is None else trend.to_record()

    def measure_check(self) -> CheckResult:
        """The check on the model as it is now (see metrics/check.py for what makes it cheap)."""
        return self.checker.run(self.session.model, self.written())

    def written(self) -> list[str]:
        """The parameters the applied edits wrote, which locate the prefix cache; none for a model that
        wraps the edited one (its output is not the blocks' alone)."""
        session = self.session
        return [] if session.wraps_model() else session.written_parameters()

    def bisect(self, window: list[list[int]]) -> str:
        """Find the first unit of a failing window: undo the window's units exactly (only the weights
        they wrote), then replay them one by one with a check after each. Returns the final status."""
        self.log(f"bisecting {len(window)} units between checks to find the culprit")
        self.session.undo_to(self.session.depth - len(window))
        culprit_found = False
        status = PASS
        for position, unit in enumerate(window):
            self.apply(unit)
            if culprit_found and position < len(window) - 1:
                continue  # the culprit is known: replay the rest and check once, at the window's end
            status = self.check(unit)
            if status in (FAIL, COLLAPSE) and not culprit_found:
                culprit_found = True
                for i in unit:
                    self.records[i].found_by_bisection = True
                if status == COLLAPSE:
                    break
        return status

    def checkpoint(self, scorer: EditScorer, final: bool) -> Checkpoint:
        """Benchmarks against their baseline and edit metrics for every edit applied so far."""
        start = time.perf_counter()
        done = sum(1 for r in self.records if r.status != "not-run")
        point = Checkpoint(done)
        forward, from_layer = self.checkpoint_prefixes.forward(self.model, self.written())
        if self.suite is not None:
            now = self.suite.run(self.model, self.log, forward)
            point.benchmarks = [c.to_dict() for c in compare(self.baseline_benchmarks, now,
                                                              self.policy.benchmarks.max_drop)]
        scores = scorer.score(self.model, upto=done, forward=forward)
        for record, score in zip(self.records[:done], scores):
            record.scores = score
        point.edit_metrics = {k: mean_of([getattr(s, k) for s in scores]) for k in SCORE_KEYS}
        point.seconds = time.perf_counter() - start
        self.checkpoints.append(point)
        blocks = f", blocks {from_layer}+" if forward is not None and not self.checkpoint_prefixes.turned_off else ""
        self.log(f"checkpoint after {done} edits ({point.seconds:.1f}s{blocks}): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in point.edit_metrics.items() if v is not None))
        return point

    def confirm(self, culprit: EditRecord) -> dict[str, Any]:
        """Re-run the sequence without the culprit (after undoing everything exactly): does the rest pass?
        The session is left without the culprit, so save what the run made before confirming."""
        self.log(f"confirming: re-running without {culprit.edit.id}")
        self.session.undo_to(0)
        skip = self.records.index(culprit)
        worst, status = 1.0, PASS
        for unit in self.units():
            unit = [i for i in unit if i != skip]
            if not unit:
                continue
            self.session.apply([self.records[i].edit for i in unit])
            ratio = self.measure_check().ratio
            worst = max(worst, ratio) if math.isfinite(ratio) else math.inf
            status = classify(worst, self.policy)
            if status == COLLAPSE:
                break
        passes = status in (PASS, WARN)
        rest = "passes" if passes else "fails"
        self.log(f"without {culprit.edit.id}: worst perplexity x{worst:.3f}, the rest {rest}")
        return {"without": culprit.edit.id, "worst_ratio": worst, "status": status, "rest_passes": passes}

    # -- the verdict --------------------------------------------------------------------------

    def verdict(self, stopped: bool) -> GateResult:
        reasons, warnings = [], []
        records = self.records
        pp = self.policy.perplexity
        culprit = next((r for r in records if r.status in (FAIL, COLLAPSE)), None)
        if culprit is not None:
            word = "collapsed the model" if culprit.status == COLLAPSE else f"crossed fail_ratio {pp.fail_ratio}"
            reasons.append(f"edit '{culprit.edit.id}' ({culprit.edit.where}) {word}: perplexity "
                           f"x{culprit.ratio:.3f} of the unedited model")
        warned = [r for r in records if r.status == WARN]
        if warned:
            warnings.append(f"{len(warned)} edit(s) crossed warn_ratio {pp.warn_ratio}: "
                            + ", ".join(r.edit.id for r in warned[:10]))
        fired = [r for r in records if r.trend and r.trend["fired"]]
        if fired:
            first = fired[0]
            warnings.append(
                f"perplexity trend: the increments accelerate from edit '{first.edit.id}' ({first.edit.where}), "
                f"x{first.ratio:.3f}: fail_ratio {pp.fail_ratio} projected in {first.trend['edits_left']:.1f} "
                f"edit(s) (trend_horizon {pp.trend_horizon}; fired at {len(fired)} check(s))")
        for record in records:
            if record.risk:
                warnings.append(f"risky edit '{record.edit.id}' ({record.edit.where}): {'; '.join(record.risk)}")
        warnings += [f"{self.edits[c.edit].where}: {describe(c, self.edits)}" for c in self.conflicts]
        self._benchmark_verdict(reasons, warnings)
        summary = dict(self.checkpoints[-1].edit_metrics) if self.checkpoints and not stopped else {}
        if summary:
            summary["locality_after_edit"] = mean_of([r.locality_after_edit for r in records])
        ep = self.policy.edits
        for key, minimum in (("efficacy", ep.min_efficacy), ("generalization", ep.min_generalization),
                             ("locality", ep.min_locality)):
            value = summary.get(key)
            if value is not None and value < minimum:
                reasons.append(f"{key} {value:.3f} is below the policy's min_{key} {minimum}")
        summary["definition"] = DEFINITION
        return GateResult("failed" if reasons else "passed", reasons, warnings, culprit, records, self.baseline,
                          {k: v.to_dict() for k, v in self.baseline_benchmarks.items()}, self.checkpoints,
                          summary, dict(self.timings), environment(self.loaded), sorted(set(self.cache.hits)),
                          stopped, restored=self.restored)

    def _benchmark_verdict(self, reasons: list[str], warnings: list[str]) -> None:
        within_noise = self.policy.benchmarks.within_noise
        for point in self.checkpoints:
            failing = point.failing(within_noise)
            for c in point.benchmarks:
                if not c["failed"]:
                    continue
                text = (f"benchmark {c['task']} after {point.edits} edits: {c['metric']} {c['base']:.3f} -> "
                        f"{c['now']:.3f} (drop {c['drop']:.3f} > max_drop {self.policy.benchmarks.max_drop})")
                if c in failing:
                    reasons.append(text + (", within noise" if c["within_noise"] else ""))
                else:
                    warnings.append(text + ", within two standard errors of noise")


def risk_signals(info: dict[str, Any]) -> dict[str, float | None]:
    """The numbers the risk flags threshold, from a method's `info`: the largest relative update norm over
    the weights it wrote, and the normalised key denominator (ROME); None where the method has none."""
    norms = info.get("relative_update_norm")
    largest = max(norms.values()) if isinstance(norms, dict) and norms else norms
    denominator = info.get("key_denominator_normalised")
    return {"relative_update_norm": largest if isinstance(largest, float) else None,
            "key_denominator": denominator if isinstance(denominator, float) else None}


def environment(loaded: LoadedModel) -> dict[str, Any]:
    import transformers

    return {
        "model": loaded.spec, "model_source": loaded.source, "model_fingerprint": loaded.fingerprint,
        "device": str(loaded.device), "devices": sorted({str(p.device) for p in loaded.model.parameters()}),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "editgate": editgate.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
    }
