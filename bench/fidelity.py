"""How often is the gate's verdict right? Labelled edit sequences on the embedded model (issue 15).

    python bench/fidelity.py                          # every planned sequence not measured yet, then the summary
    python bench/fidelity.py --minutes 90             # start no new sequence after 90 minutes (resume later)
    python bench/fidelity.py --only rome-hard-3,ft-wide-1
    python bench/fidelity.py --summary                # recompute the tables and plot from what was measured
    taskset -c 0 python bench/fidelity.py --threads 1 --shard 1/2 & taskset -c 1 python bench/fidelity.py \
        --threads 1 --shard 2/2                       # both cores, one process each

Each planned sequence (see `plan`: methods and variants, ordinary and hard CounterFact edits, healthy
and collapsing) is written out as a gated repository and run through the real gate (`Gate`, with the
policy under study: by default bench/fidelity_policy.yaml, builtin:default as it was before this study
set its thresholds; `--policy builtin:default` measures today's, into bench/results/fidelity-builtin-default/).
`--policy builtin:cpu --labels-from` labels nothing: it checks the study's states with another policy (the
policy's own suite skipped) and takes each state's label from the study's stored run of it, so a cheaper
check's verdicts are compared on the same states, and with the study's ratios judged at its bands.
After every check the state is labelled healthy or damaged by the ground-truth suite alone (default
`builtin:medium`): damaged when any task's paired drop from the unedited model exceeds the policy's
`max_drop`. Perplexity never enters the label.
Per sequence it keeps every state's gate status, ratio, risk flags, trend projection and label in
bench/results/fidelity/<name>.json, so an interrupted study resumes where it stopped. The summary
(bench/results/fidelity.json, fidelity.png, and the tables printed) measures:
  - agreement: the gate's per-state verdict (pass/warn vs fail/collapse) against the label;
  - culprit accuracy: in each sequence the label calls damaged, is the gate's culprit the first edit
    after which the label is damaged (for sequences checked every k edits: inside that window)?
  - risk recall and precision: of the edits that turn a healthy state into a damaged one, how many the
    risk flags marked before any check; of the flagged edits, how many left the state healthy;
  - lead time: in sequences whose gate fails after passing checks, how many edits before the first
    failing check the trend warning fired.
The edits are CounterFact records of ../shared/data/counterfact-2k.json chosen by a fixed seed; "hard"
edits are those whose subject is one token opening the prompt (the published ROME's collapse case).
Run it alone: two heavy processes on two cores slow each other down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from _common import RESULTS, SHARED_DATA, load_embedded, machine, print_table, save_json

SEED = 2026
STUDY_POLICY = "bench/fidelity_policy.yaml"  # builtin:default before the study set its thresholds


def study_outputs(policy: str) -> tuple[Path, str]:
    """Where the runs and the summary of a policy's study go: the stored study's own places, or places
    named after another policy, so measuring the new defaults never overwrites the runs that set them."""
    if policy == STUDY_POLICY:
        return RESULTS / "fidelity", "fidelity"
    tag = "fidelity-" + re.sub(r"[^a-z0-9]+", "-", policy.lower()).strip("-")
    return RESULTS / tag, tag


# --- the plan ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sequence:
    """One labelled sequence: edits (CounterFact record indices) applied in order with one method."""

    name: str
    kind: str  # what it tests, for the tables
    method: str
    records: list[int]
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    edit_hparams: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)  # by position
    check_every: int = 1


def counterfact() -> list[dict]:
    path = SHARED_DATA / "counterfact-2k.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the study reads ../shared/data beside the repository")
    return json.loads(path.read_text(encoding="utf-8"))


def is_hard(record: dict, tokenizer) -> bool:
    """The subject is one token and opens the prompt: its key sits at the sequence's first position."""
    return record["prompt"].startswith(record["subject"]) and len(tokenizer(record["subject"])["input_ids"]) == 1


def plan(records: list[dict], tokenizer) -> list[Sequence]:
    """The study's sequences, fixed by SEED; interleaved by kind so a partial run covers every kind."""
    rng = random.Random(SEED)
    hard = [i for i, r in enumerate(records) if is_hard(r, tokenizer)]
    ordinary = [i for i in range(len(records)) if i not in set(hard)]
    rng.shuffle(ordinary)
    pool = iter(ordinary)

    def take(n: int) -> list[int]:
        return [next(pool) for _ in range(n)]

    def with_hard(n: int, at: int, which: int) -> list[int]:
        edits = take(n - 1)
        return edits[:at] + [hard[which % len(hard)]] + edits[at:]

    kinds: dict[str, list[Sequence]] = {
        "rome": [Sequence(f"rome-{i}", "ROME, ordinary edits", "rome", take(10)) for i in range(5)],
        "rome-published": [Sequence(f"rome-published-{i}", "published ROME, ordinary edits", "rome", take(10),
                                    {"denominator": "published"}) for i in range(3)],
        "rome-hard": [Sequence(f"rome-hard-{i}", "published ROME, one hard edit", "rome",
                               with_hard(8, rng.randrange(1, 7), i), {"denominator": "published"})
                      for i in range(8)],
        "rome-hard-consistent": [Sequence(f"rome-hard-consistent-{i}", "ROME, one hard edit", "rome",
                                          with_hard(8, rng.randrange(1, 7), i + 3)) for i in range(2)],
        "rome-overdriven": [Sequence(f"rome-overdriven-{i}", "ROME, one overdriven edit", "rome", take(8),
                                     edit_hparams={rng.randrange(1, 7): {"clamp_norm_factor": 1000, "v_lr": 50,
                                                                         "v_weight_decay": 0, "kl_factor": 0}})
                            for i in range(2)],
        "ft": [Sequence("ft-0", "FT-L, default bound", "ft", take(8))]
        + [Sequence(f"ft-wide-{i}", f"FT-L, bound {bound:g}", "ft", take(8), {"norm_constraint": bound, "lr": lr})
           for i, (bound, lr) in enumerate([(0.05, 5e-3), (0.5, 1e-2), (1e6, 1e-2), (1e6, 5e-2)])],
        "memit": [Sequence(f"memit-batch-{size}", f"MEMIT, batches of {size}", "memit", take(size * units),
                           {"batch_size": size}) for size, units in ((10, 4), (25, 3), (50, 2))],
        "mixed": [Sequence(f"mixed-{i}", "mixed methods, one hard edit", "rome",
                           with_hard(9, rng.randrange(1, 8), i + 5), {"denominator": "published"},
                           edit_hparams={0: {"method": "ft"}, 4: {"method": "memit"}}) for i in range(2)],
        # gradual: about x1.13 after 12 edits at lr 1e-2 (a probe on other records); the trend warning
        # needs 12 checks before it judges, so these are long enough for it to speak
        "gradual": [Sequence(f"ft-gradual-{i}", f"FT-L bound {bound:g}, lr {lr:g}, 30 edits", "ft", take(30),
                             {"norm_constraint": bound, "lr": lr}) for i, (bound, lr) in enumerate([(0.05, 1e-2),
                                                                                                 (0.1, 2e-2)])],
        "long": [Sequence("long-rome", "ROME, 100 edits (checked every 10)", "rome", take(100), check_every=10)],
    }
    ordered, queues = [], [list(q) for q in kinds.values()]
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


# --- one sequence as a gated repository -------------------------------------------------------------


def write_repository(seq: Sequence, records: list[dict], policy: dict, root: Path) -> Path:
    """The sequence as a user's repository: editgate.yaml, one manifest, the policy under study."""
    repo = root / seq.name
    (repo / "edits").mkdir(parents=True)
    config = {"model": "builtin:smollm2-135m", "method": seq.method, "manifests": "edits/*.yaml",
              "policy": "policy.yaml"}
    if seq.hparams:
        config["hparams"] = {seq.method: seq.hparams}
    (repo / "editgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (repo / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    edits = []
    for position, index in enumerate(seq.records):
        record = records[index]
        edit = {"id": f"cf-{record['case_id']}", "prompt": record["prompt"], "subject": record["subject"],
                "target": record["target_new"], "ground_truth": record["ground_truth"],
                "paraphrases": [record["rephrase_prompt"]],
                "locality": [{"prompt": record["locality_prompt"], "answer": record["locality_ground_truth"]}]}
        extra = dict(seq.edit_hparams.get(position, {}))
        if "method" in extra:
            edit["method"] = extra.pop("method")
        if extra:
            edit["hparams"] = extra
        edits.append(edit)
    (repo / "edits" / "edits.yaml").write_text(yaml.safe_dump({"edits": edits}, sort_keys=False), encoding="utf-8")
    return repo


def load_study_policy(name: str):
    """`builtin:<name>` or a policy file: the policy whose verdicts are measured."""
    from editgate.policy import builtin_policy_path, load_policy

    path = builtin_policy_path(name.removeprefix("builtin:")) if name.startswith("builtin:") else \
        Path(__file__).resolve().parents[1] / name
    return load_policy(path, name)


def study_policy(name: str) -> dict:
    """The policy under study as a repository file, as a user would commit it."""
    policy = dataclasses.asdict(load_study_policy(name))
    policy.pop("source", None)
    return policy


class GroundTruth:
    """Labels a model state healthy or damaged by the suite alone: damaged when some task's paired drop
    from the unedited model exceeds `max_drop`. Each task's docs are scored in `chunks` parts, and a task
    stops as soon as its docs so far settle it at z standard errors: damaging when its drop less z paired
    standard errors is above `max_drop` (the state is then damaged at once); harmless when even the share
    of docs it lost (a one-sided Wilson bound; the drop is at most that share) is below `max_drop`. A
    task never settled is scored whole and judged by its point estimate. Most states are clearly one or
    the other, so this costs a part of the suite; an ambiguous task costs all of its docs."""

    def __init__(self, suite, baseline: dict, max_drop: float, chunks: int = 4, z: float = 2.0):
        self.suite, self.baseline, self.max_drop, self.z, self.chunks = suite, baseline, max_drop, z, chunks
        self.parts = {task.name: [task.docs(task.n * k // chunks, task.n * (k + 1) // chunks)
                                  for k in range(chunks)] for task in suite.tasks}

    def label(self, model) -> dict:
        start = time.perf_counter()
        outcomes: dict[str, list[int]] = {name: [] for name in self.parts}
        figures: dict[str, dict] = {}
        open_tasks, damaged = list(self.parts), False
        for k in range(self.chunks):
            for name in list(open_tasks):
                part = self.parts[name][k]
                result = part.evaluate(model, self.suite.batch_tokens, self.suite.pad_id)
                outcomes[name] += result.per_doc[result.metric]
                figures[name] = self.figures(name, outcomes[name])
                settled = self.settle(figures[name], final=k == self.chunks - 1)
                if settled is not None:
                    open_tasks.remove(name)
                    damaged = damaged or settled
                    if damaged:
                        break
            if damaged or not open_tasks:
                break
        return {"damaged": damaged, "seconds": time.perf_counter() - start, "chunks": k + 1, "tasks": figures}

    def figures(self, name: str, now: list[int]) -> dict:
        from editgate.metrics.benchmarks.results import paired_stderr

        base = self.baseline[name].per_doc[self.baseline[name].metric][: len(now)]
        lost = sum(1 for b, a in zip(base, now) if b > a)
        return {"docs": len(now), "drop": (sum(base) - sum(now)) / len(now), "stderr": paired_stderr(base, now),
                "lost": lost, "lost_upper": wilson_upper(lost, len(now), self.z)}

    def settle(self, f: dict, final: bool) -> bool | None:
        """True: this task is damaged; False: it is not; None: score more of its docs."""
        if f["drop"] - self.z * (f["stderr"] or 0) > self.max_drop:
            return True
        if f["lost_upper"] < self.max_drop:
            return False
        return f["drop"] > self.max_drop + 1e-9 if final else None


def wilson_upper(k: int, n: int, z: float) -> float:
    """The upper end of the Wilson score interval for k successes in n trials."""
    p, z2 = k / n, z * z
    return (p + z2 / (2 * n) + z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n)


def replaying_gate_class():
    """A Gate that reaches every state like the labelling one (nothing restored or stored) and labels
    none: another policy's checks on the study's states, whose labels the study already has."""
    from editgate.gate import Gate

    class ReplayingGate(Gate):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.labels: dict[int, dict] = {}
            self.label_baseline: dict = {}

        def restore(self, units, keys, scorer) -> int:
            return 0

        def store_state(self, units, keys) -> None:
            return None

    return ReplayingGate


def labelling_gate_class(truth_suite: str):
    """A Gate that labels the state after every check with the ground-truth suite, and neither restores
    nor stores edited states (every state must really be reached and labelled)."""

    class LabellingGate(replaying_gate_class()):
        labels: dict[int, dict]
        truth: GroundTruth

        def prepare_benchmarks(self) -> None:
            """The ground truth's suite and baseline (cached like every baseline), then the policy's own
            suite, which the final checkpoint scores as the gate does."""
            policy = self.policy
            self.policy = dataclasses.replace(policy, benchmarks=dataclasses.replace(policy.benchmarks,
                                                                                      suite=truth_suite))
            super().prepare_benchmarks()
            self.truth = GroundTruth(self.suite, self.baseline_benchmarks, policy.benchmarks.max_drop)
            self.label_baseline = {name: r.to_dict() for name, r in self.baseline_benchmarks.items()}
            self.labels = {}
            self.policy, self.suite, self.baseline_benchmarks = policy, None, {}
            super().prepare_benchmarks()

        def check(self, unit: list[int]) -> str:
            status = super().check(unit)
            label = self.labels[unit[-1]] = self.truth.label(self.model)
            self.log(f"label after {unit[-1] + 1}: {'damaged' if label['damaged'] else 'healthy'} "
                     f"({label['chunks']} part(s), {label['seconds']:.0f}s) "
                     + ", ".join(f"{t} {f['drop']:+.3f}±{f['stderr']:.3f}" for t, f in label["tasks"].items()))
            return status

    return LabellingGate


def run_sequence(seq: Sequence, records: list[dict], policy_name: str, suite: str | None, loaded, log) -> dict:
    """Gate the sequence, labelling every checked state with `suite` (None: label none, and skip the
    policy's own suite too); returns the sequence's rows and verdict."""
    from editgate.gate import risk_signals
    from editgate.validate import load_inputs

    with tempfile.TemporaryDirectory() as tmp:
        policy = study_policy(policy_name)
        if seq.check_every != 1:
            policy["perplexity"]["check_every"] = seq.check_every
        if suite is None:
            policy["benchmarks"]["suite"] = "none"
        repo = write_repository(seq, records, policy, Path(tmp))
        config, policy_obj, edits = load_inputs(repo)
        start = time.perf_counter()
        gate_class = labelling_gate_class(suite) if suite else replaying_gate_class()
        gate = gate_class(config, policy_obj, edits, loaded, log=log)
        try:
            result = gate.run()
        finally:
            gate.session.undo_to(0)
        seconds = time.perf_counter() - start
    hard = {f"cf-{records[i]['case_id']}" for i in seq.records if is_hard(records[i], loaded.tokenizer)}
    rows = []
    for position, record in enumerate(result.records):
        label = gate.labels.get(position)
        rows.append({"position": position, "id": record.edit.id, "method": record.method,
                     "hard": record.edit.id in hard, "status": record.status, "ratio": record.ratio,
                     "risk": list(record.risk), "risk_signals": risk_signals(record.method_info),
                     "trend": getattr(record, "trend", None),
                     "damaged": label["damaged"] if label else None,
                     "tasks": label["tasks"] if label else None, "label_seconds": label["seconds"] if label else None,
                     "label_parts": label["chunks"] if label else None,
                     "edit_seconds": record.edit_seconds, "check_seconds": record.check_seconds})
    return {"name": seq.name, "kind": seq.kind, "method": seq.method, "hparams": seq.hparams,
            "edit_hparams": {str(k): v for k, v in seq.edit_hparams.items()}, "check_every": seq.check_every,
            "verdict": result.verdict, "reasons": result.reasons,
            "checkpoint": final_checkpoint(result, policy_obj.benchmarks.within_noise),
            "max_drop": policy_obj.benchmarks.max_drop,
            "culprit": result.culprit.edit.id if result.culprit else None,
            "stopped_early": result.stopped_early, "warnings": result.warnings, "seconds": seconds,
            "baseline_tasks": {k: v["value"] for k, v in gate.label_baseline.items()}, "rows": rows}


def final_checkpoint(result, within_noise: str) -> dict | None:
    """The policy's own benchmark suite at the end, as the gate judged it (None when the gate stopped
    before its final checkpoint, or the policy runs none)."""
    if not result.checkpoints or not result.checkpoints[-1].benchmarks:
        return None
    last = result.checkpoints[-1]
    return {"failed": bool(last.failing(within_noise)),
            "tasks": {t["task"]: {k: t[k] for k in ("drop", "stderr", "within_noise", "failed")}
                      for t in last.benchmarks}}


def with_study_labels(run: dict, study: dict) -> dict:
    """A replayed run with the study's labels of the same states (same edits, in the same order, from the
    same unedited model: the labels depend on the state, not on the policy that checked it)."""
    by_position = {row["position"]: row for row in study["rows"]}
    for row in run["rows"]:
        labelled = by_position.get(row["position"])
        if labelled is None or labelled["id"] != row["id"]:
            raise SystemExit(f"{run['name']}: edit {row['position']} is {row['id']} here but not in the study")
        row.update(damaged=labelled["damaged"], tasks=labelled["tasks"], label_seconds=None, label_parts=None,
                   study_ratio=labelled["ratio"])
    run.pop("checkpoint", None)  # the replay skips the policy's own suite: no whole-sequence verdict
    return run


# --- the figures ------------------------------------------------------------------------------------

BAD = ("fail", "collapse")
OLD_RUNS_MAX_DROP = 0.05  # runs stored before they kept their max_drop were all labelled with builtin:default's


def check_failed(run: dict) -> bool:
    return any(row["status"] in BAD for row in run["rows"])


def states(runs: list[dict]) -> list[dict]:
    return [dict(row, sequence=run["name"], max_drop=run.get("max_drop", OLD_RUNS_MAX_DROP))
            for run in runs for row in run["rows"] if row["damaged"] is not None]


def agreement(runs: list[dict]) -> dict:
    """The gate's per-state verdict against the ground-truth label (a confusion table); also over the
    states whose label is clear, where no task's drop was left within z standard errors of `max_drop`."""
    table = {"gate_bad_label_damaged": 0, "gate_bad_label_healthy": 0, "gate_ok_label_damaged": 0,
             "gate_ok_label_healthy": 0}
    clear, clear_right = 0, 0
    for row in states(runs):
        gate = "bad" if row["status"] in BAD else "ok"
        table[f"gate_{gate}_label_{'damaged' if row['damaged'] else 'healthy'}"] += 1
        if label_is_clear(row):
            clear += 1
            clear_right += (gate == "bad") == row["damaged"]
    total = sum(table.values())
    right = table["gate_bad_label_damaged"] + table["gate_ok_label_healthy"]
    return {**table, "states": total, "agreement": right / total if total else None,
            "clear_states": clear, "agreement_clear": clear_right / clear if clear else None}


def label_is_clear(row: dict, z: float = 2.0) -> bool:
    """Settled at z standard errors (GroundTruth.settle's bounds), not by a point estimate near max_drop:
    damaged by a task clearly above it, or healthy with every task clearly below."""
    def above(f: dict) -> bool:
        return f["drop"] - z * (f["stderr"] or 0) > row["max_drop"]

    def below(f: dict) -> bool:
        return f["lost_upper"] < row["max_drop"]

    tasks = list(row["tasks"].values())
    return any(above(f) for f in tasks) if row["damaged"] else all(below(f) for f in tasks)


def first_damaged_window(run: dict) -> tuple[int, int] | None:
    """(first position that may be the culprit, labelled position where damage is first seen): the label is
    only known at checked states, so the culprit lies after the last healthy state up to the first damaged."""
    last_healthy = -1
    for row in run["rows"]:
        if row["damaged"] is None:
            continue
        if row["damaged"]:
            return last_healthy + 1, row["position"]
        last_healthy = row["position"]
    return None


def culprit_accuracy(runs: list[dict]) -> dict:
    damaged = [run for run in runs if first_damaged_window(run) is not None]
    right, cases = 0, []
    for run in damaged:
        low, high = first_damaged_window(run)
        ids = [row["id"] for row in run["rows"][low: high + 1]]
        correct = run["culprit"] in ids
        right += correct
        cases.append({"sequence": run["name"], "first_damaged": ids, "culprit": run["culprit"], "correct": correct})
    return {"damaged_sequences": len(damaged), "right": right,
            "accuracy": right / len(damaged) if damaged else None, "cases": cases}


def risk_figures(runs: list[dict], thresholds: tuple[float, float] | None = None) -> dict:
    """Edits that turn a labelled-healthy state into a damaged one (checked every edit), against the flags:
    the gate's own, or those that (max_relative_update, min_key_denominator) `thresholds` would raise."""
    damaging, flagged_damaging, flagged, flagged_harmless = 0, 0, 0, 0
    for run in runs:
        if run["check_every"] != 1:
            continue
        previous = False  # the unedited model is healthy by definition
        for row in run["rows"]:
            if row["damaged"] is None:
                continue
            flag = bool(row["risk"]) if thresholds is None else would_flag(row, *thresholds)
            turns = row["damaged"] and not previous
            damaging += turns
            flagged += flag
            flagged_damaging += flag and turns
            flagged_harmless += flag and not row["damaged"]
            previous = row["damaged"]
    return {"damaging_edits": damaging, "flagged_of_damaging": flagged_damaging, "flagged": flagged,
            "flagged_harmless": flagged_harmless,
            "recall": flagged_damaging / damaging if damaging else None,
            "false_alarm_share": flagged_harmless / flagged if flagged else None}


RISK_SWEEP = [(update, denominator) for update in (0.1, 0.25, 0.5, 1.0, 2.0) for denominator in (0.1, 0.05, 0.02)]


def would_flag(row: dict, max_update: float, min_denominator: float) -> bool:
    """Would these thresholds flag the edit? Exact for thresholds no looser than the study policy's: a
    signal the gate did not flag was already inside them (older runs kept only the flag texts)."""
    signals = row.get("risk_signals") or {
        "relative_update_norm": _number_after("update is ", row["risk"]),
        "key_denominator": _number_after("key width is ", row["risk"])}
    update, denominator = signals["relative_update_norm"], signals["key_denominator"]
    return (update is not None and update > max_update) or (denominator is not None and denominator < min_denominator)


def _number_after(prefix: str, texts: list[str]) -> float | None:
    for text in texts:
        if prefix in text:
            return float(text.split(prefix, 1)[1].split()[0])
    return None


def risk_sweep(runs: list[dict]) -> list[dict]:
    return [{"max_relative_update": update, "min_key_denominator": denominator,
             **risk_figures(runs, (update, denominator))} for update, denominator in RISK_SWEEP]


def lead_times(runs: list[dict]) -> dict:
    """Sequences whose gate fails after at least two passing checks (gradual): did the trend warning fire
    before the first failing check, and how many edits before it?"""
    gradual, fired, leads = 0, 0, []
    for run in runs:
        checked = [row for row in run["rows"] if row["ratio"] is not None]
        first_bad = next((i for i, row in enumerate(checked) if row["status"] in BAD), None)
        if first_bad is None or first_bad < 2:
            continue
        gradual += 1
        warned = next((row["position"] for row in checked[:first_bad] if (row["trend"] or {}).get("fired")), None)
        if warned is not None:
            fired += 1
            leads.append(checked[first_bad]["position"] - warned)
    return {"gradual_failures": gradual, "trend_fired_before": fired, "lead_edits": leads}


def judged(rows: list[dict], bad: Callable[[dict], bool]) -> tuple[int, int]:
    """(states judged right, healthy states failed) had the gate failed exactly the states `bad` picks."""
    return (sum(bad(row) == row["damaged"] for row in rows),
            sum(bad(row) and not row["damaged"] for row in rows))


FAIL_SWEEP = (1.05, 1.08, 1.10, 1.15, 1.20, 1.30, 1.50)


def fail_ratio_sweep(runs: list[dict]) -> list[dict]:
    """Agreement and culprit accuracy had `fail_ratio` been X, from the ratios the checks recorded. An
    early-stopped check measured part of its sample, enough to place it against the study policy's
    thresholds, so near another X its ratio is an estimate: the sweep guides the default, the runs at
    that default confirm it."""
    rows = states(runs)
    clear = [row for row in rows if label_is_clear(row)]
    windows = [(run, first_damaged_window(run)) for run in runs if run["check_every"] == 1]
    damaged = [(run, window) for run, window in windows if window]
    out = []
    for threshold in FAIL_SWEEP:
        def bad(row: dict, x: float = threshold) -> bool:
            return row["ratio"] is not None and not (row["ratio"] <= x)  # NaN and inf fail

        right, false_fails = judged(rows, bad)
        clear_right, clear_false_fails = judged(clear, bad)
        culprits_right = 0
        for run, (low, high) in damaged:
            first = next((row["position"] for row in run["rows"] if bad(row)), None)
            culprits_right += first is not None and low <= first <= high
        out.append({"fail_ratio": threshold, "states": len(rows), "agreement": right / len(rows) if rows else None,
                    "healthy_states_failed": false_fails,
                    "agreement_clear": clear_right / len(clear) if clear else None,
                    "clearly_healthy_states_failed": clear_false_fails, "damaged_sequences": len(damaged),
                    "culprit_right": culprits_right})
    return out


def sequence_verdicts(runs: list[dict]) -> dict:
    """The gate's verdict on a whole sequence (checks, then the policy's own suite at the final checkpoint)
    against the label of its final state: what the shipped policy buys beyond per-edit perplexity. Runs
    measured before the study kept the final checkpoint are left out."""
    table = {"checks_fail": [0, 0], "checkpoint_only_fails": [0, 0], "passes": [0, 0]}  # [damaged, healthy]
    for run in runs:
        labelled = [row for row in run["rows"] if row["damaged"] is not None]
        if "checkpoint" not in run or not labelled:
            continue
        column = 0 if labelled[-1]["damaged"] else 1
        if check_failed(run):
            table["checks_fail"][column] += 1
        elif run["checkpoint"] and run["checkpoint"]["failed"]:
            table["checkpoint_only_fails"][column] += 1
        else:
            table["passes"][column] += 1
    return table


def paired_stderrs(runs: list[dict]) -> dict:
    """The ground-truth suite's paired standard errors over the labelled states, per task."""
    by_task: dict[str, list[float]] = {}
    for row in states(runs):
        for task, figures in (row["tasks"] or {}).items():
            if figures.get("stderr") is not None:
                by_task.setdefault(task, []).append(figures["stderr"])
    return {task: {"median": sorted(v)[len(v) // 2], "max": max(v), "states": len(v)} for task, v in by_task.items()}


def status_agreement(runs: list[dict], policy) -> dict | None:
    """A replay's statuses against the study's ratios judged at the same policy's bands, over the labelled
    states: how often a smaller check sample reaches the default sample's verdict (None: not a replay)."""
    from editgate.gate import classify

    rows = [row for row in states(runs) if "study_ratio" in row and row["ratio"] is not None]
    if not rows:
        return None
    same_status, same_verdict, right, study_right, differ = 0, 0, 0, 0, []
    for row in rows:
        reference = classify(row["study_ratio"], policy)
        same_status += reference == row["status"]
        right += (row["status"] in BAD) == row["damaged"]
        study_right += (reference in BAD) == row["damaged"]
        if (reference in BAD) == (row["status"] in BAD):
            same_verdict += 1
        else:
            differ.append({"sequence": row["sequence"], "position": row["position"], "status": row["status"],
                           "ratio": row["ratio"], "reference": reference, "study_ratio": row["study_ratio"],
                           "damaged": row["damaged"]})
    return {"states": len(rows), "same_status": same_status, "same_verdict": same_verdict,
            "agreement": right / len(rows), "study_agreement": study_right / len(rows), "differ": differ}


def summary(runs: list[dict], policy: str, suite: str) -> dict:
    return {"policy": policy, "suite": suite, "sequences": len(runs),
            "against_study": status_agreement(runs, load_study_policy(policy)),
            "states": len(states(runs)), "agreement": agreement(runs), "culprit": culprit_accuracy(runs),
            "risk": risk_figures(runs), "risk_sweep": risk_sweep(runs), "lead_time": lead_times(runs),
            "fail_ratio_sweep": fail_ratio_sweep(runs), "sequence_verdicts": sequence_verdicts(runs),
            "paired_stderr": paired_stderrs(runs),
            "by_kind": by_kind(runs)}


def by_kind(runs: list[dict]) -> list[dict]:
    rows = []
    for kind in dict.fromkeys(run["kind"] for run in runs):
        chosen = [run for run in runs if run["kind"] == kind]
        agree = agreement(chosen)
        rows.append({"kind": kind, "sequences": len(chosen), "states": agree["states"],
                     "damaged_states": agree["gate_bad_label_damaged"] + agree["gate_ok_label_damaged"],
                     "agreement": agree["agreement"],
                     "check_failed_runs": sum(check_failed(run) for run in chosen)})
    return rows


def plot(runs: list[dict], path: Path, fail_ratio: float, max_drop: float) -> None:
    """Each labelled state: perplexity ratio against the largest benchmark drop, coloured by the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for damaged, colour, name in ((False, "tab:blue", "healthy (label)"), (True, "tab:red", "damaged (label)")):
        chosen = [row for row in states(runs) if row["damaged"] == damaged and row["ratio"] is not None]
        ax.scatter([min(row["ratio"], 20) for row in chosen],
                   [max(t["drop"] for t in row["tasks"].values()) for row in chosen], s=14, c=colour, label=name,
                   alpha=0.7)
    ax.axvline(fail_ratio, color="black", linestyle="--", linewidth=1, label=f"fail_ratio {fail_ratio}")
    ax.axhline(max_drop, color="grey", linestyle=":", linewidth=1, label=f"max_drop {max_drop}")
    ax.set_xscale("log")
    ax.set_xlabel("perplexity ratio after the edit (gate's check; capped at 20)")
    ax.set_ylabel("largest paired benchmark drop (ground truth)")
    ax.set_title("Gate verdict vs ground truth, every labelled state")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(result: dict) -> list[str]:
    agree, culprit, risk, lead = result["agreement"], result["culprit"], result["risk"], result["lead_time"]
    out = [print_table(["", "label damaged", "label healthy"], [
        ["gate fail/collapse", agree["gate_bad_label_damaged"], agree["gate_bad_label_healthy"]],
        ["gate pass/warn", agree["gate_ok_label_damaged"], agree["gate_ok_label_healthy"]]])]
    out.append(print_table(["figure", "measured", "target"], [
        ["agreement (states)", f"{agree['agreement']:.3f} of {agree['states']}" if agree["states"] else "—", ">= 0.95"],
        ["agreement (states with a clear label)",
         f"{agree['agreement_clear']:.3f} of {agree['clear_states']}" if agree["clear_states"] else "—", ""],
        ["culprit exactly right", _share(culprit["right"], culprit["damaged_sequences"]), ">= 0.95"],
        ["risk recall", _share(risk["flagged_of_damaging"], risk["damaging_edits"]), ">= 0.80"],
        ["risk false alarms (flagged, harmless)", _share(risk["flagged_harmless"], risk["flagged"]), "<= 0.20"],
        ["trend warning before the failure", _share(lead["trend_fired_before"], lead["gradual_failures"]), "most"],
    ]))
    if result.get("against_study"):
        ref = result["against_study"]
        out.append(print_table(["states", "same status as the study's ratio at these bands", "same verdict",
                                "agreement with the labels", "the study's ratios' agreement"],
                               [[ref["states"], ref["same_status"], ref["same_verdict"], ref["agreement"],
                                 ref["study_agreement"]]]))
        out.append(print_table(["sequence", "edit", "status here", "ratio here", "study's status", "study's ratio",
                                "label"],
                               [[d["sequence"], d["position"] + 1, d["status"], d["ratio"], d["reference"],
                                 d["study_ratio"], "damaged" if d["damaged"] else "healthy"] for d in ref["differ"]]))
    out.append(print_table(["kind", "sequences", "states", "damaged states", "agreement", "check failed"],
                           [[r["kind"], r["sequences"], r["states"], r["damaged_states"], r["agreement"],
                             r["check_failed_runs"]] for r in result["by_kind"]]))
    seq = result["sequence_verdicts"]
    if any(sum(counts) for counts in seq.values()):  # replays skip the final checkpoint
        out.append(print_table(["whole sequence (final state)", "label damaged", "label healthy"], [
            ["a check fails", *seq["checks_fail"]], ["only the final checkpoint fails", *seq["checkpoint_only_fails"]],
            ["gate passes", *seq["passes"]]]))
    out.append(print_table(["fail_ratio", "agreement (states)", "healthy states failed", "agreement (clear labels)",
                            "clearly healthy failed", "culprit right"],
                           [[r["fail_ratio"], r["agreement"], r["healthy_states_failed"], r["agreement_clear"],
                             r["clearly_healthy_states_failed"], _share(r["culprit_right"], r["damaged_sequences"])]
                            for r in result["fail_ratio_sweep"]]))
    out.append(print_table(["max_relative_update", "min_key_denominator", "risk recall", "false alarms"],
                           [[r["max_relative_update"], r["min_key_denominator"],
                             _share(r["flagged_of_damaging"], r["damaging_edits"]),
                             _share(r["flagged_harmless"], r["flagged"])] for r in result["risk_sweep"]]))
    out.append(print_table(["task", "paired stderr (median)", "max", "states"],
                           [[t, v["median"], v["max"], v["states"]] for t, v in result["paired_stderr"].items()]))
    return out


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.3f}" if whole else "— (none)"


def measured(path: Path, policy: str, suite: str) -> bool:
    """A stored run of this sequence under the same policy and ground truth."""
    if not path.is_file():
        return False
    run = json.loads(path.read_text(encoding="utf-8"))
    return run.get("policy") == policy and run.get("suite") == suite


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=STUDY_POLICY,
                        help="the policy under study: builtin:<name> or a file relative to the repository")
    parser.add_argument("--suite", default="builtin:medium", help="the ground-truth suite that labels every state")
    parser.add_argument("--minutes", type=float, default=None, help="start no new sequence after this long")
    parser.add_argument("--only", default=None, help="comma-separated sequence names, run in this order")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shard", default="1/1", help="i/n: run every n-th planned sequence from the i-th "
                                                       "(one process per core, each pinned with taskset)")
    parser.add_argument("--labels-from", action="store_true",
                        help="label nothing: check the study's states with --policy and take their labels from "
                             "the study's stored runs (a cheaper check's verdicts on the same states)")
    parser.add_argument("--summary", action="store_true", help="only recompute the summary from stored runs")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args()
    start = time.perf_counter()
    loaded = load_embedded(args.threads)
    records = counterfact()
    sequences = plan(records, loaded.tokenizer)
    if args.list:
        for seq in sequences:
            print(f"{seq.name:28} {seq.kind:45} {len(seq.records):4} edits, check every {seq.check_every}")
        return
    study, tag = study_outputs(args.policy)
    study.mkdir(parents=True, exist_ok=True)
    labelled, _ = study_outputs(STUDY_POLICY)
    if args.labels_from:
        args.suite = f"labels of {labelled.relative_to(RESULTS.parent.parent)}"
    pending = [seq for seq in sequences
               if not args.summary and not measured(study / f"{seq.name}.json", args.policy, args.suite)]
    if args.labels_from:
        pending = [seq for seq in pending if (labelled / f"{seq.name}.json").is_file()]
    if args.only:
        by_name = {seq.name: seq for seq in pending}
        pending = [by_name[name] for name in args.only.split(",") if name in by_name]
    shard, shards = (int(x) for x in args.shard.split("/"))
    for seq in pending[shard - 1::shards]:
        path = study / f"{seq.name}.json"
        if args.minutes is not None and time.perf_counter() - start > args.minutes * 60:
            print(f"time budget spent: {seq.name} and later sequences left for another run", file=sys.stderr)
            break
        print(f"== {seq.name}: {seq.kind}, {len(seq.records)} edits", file=sys.stderr, flush=True)
        log = lambda m, s=seq.name: print(f"  [{s}] {m}", file=sys.stderr, flush=True)  # noqa: E731
        run = run_sequence(seq, records, args.policy, None if args.labels_from else args.suite, loaded, log)
        if args.labels_from:
            run = with_study_labels(run, json.loads((labelled / f"{seq.name}.json").read_text(encoding="utf-8")))
        run.update(machine=machine(), policy=args.policy, suite=args.suite)
        path.write_text(json.dumps(run, indent=1, default=str), encoding="utf-8")
    runs = [json.loads((study / f"{seq.name}.json").read_text(encoding="utf-8")) for seq in sequences
            if measured(study / f"{seq.name}.json", args.policy, args.suite)]
    result = summary(runs, args.policy, args.suite)
    result["tables"] = tables(result)
    result["planned_sequences"] = len(sequences)
    policy = load_study_policy(args.policy)
    if runs:
        plot(runs, RESULTS / f"{tag}.png", policy.perplexity.fail_ratio, policy.benchmarks.max_drop)
    print(f"saved {save_json(f'{tag}.json', result)} ({len(runs)} of {len(sequences)} sequences measured)")


if __name__ == "__main__":
    main()
