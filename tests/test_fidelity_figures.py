"""The fidelity study's figures (bench/fidelity.py) on hand-made runs whose right answers are known: the
tables in README are only as good as the arithmetic that makes them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
fidelity = pytest.importorskip("fidelity")

CLEAR_HEALTHY = {"t": {"drop": 0.0, "stderr": 0.0, "lost_upper": 0.02}}
CLEAR_DAMAGED = {"t": {"drop": 0.30, "stderr": 0.03, "lost_upper": 0.4}}
NEAR_THE_LINE = {"t": {"drop": 0.052, "stderr": 0.012, "lost_upper": 0.09}}


def row(position: int, status: str, ratio: float, damaged: bool, tasks: dict, risk: list[str] = ()) -> dict:
    return {"position": position, "id": f"e{position}", "status": status, "ratio": ratio, "damaged": damaged,
            "tasks": tasks, "risk": list(risk), "trend": None}


def run(name: str, culprit: str | None, rows: list[dict], **extra) -> dict:
    return {"name": name, "kind": name, "check_every": 1, "culprit": culprit, "rows": rows, **extra}


# one edit wrecks the model and the gate names it; one edit is flagged but harmless
SUDDEN = run("sudden", "e1", [
    row(0, "pass", 1.00, False, CLEAR_HEALTHY, ["update is 0.200 of the weight's norm (> 0.1)"]),
    row(1, "fail", 1.90, True, CLEAR_DAMAGED, ["update is 2.204 of the weight's norm (> 0.1)",
                                               "key denominator / key width is 0.0141 (< 0.1)"]),
    row(2, "fail", 1.95, True, CLEAR_DAMAGED)])
# damage starts at edit 1 (label near the line) while perplexity passes; the gate fails only at edit 2
GRADUAL = run("gradual", "e2", [
    row(0, "pass", 1.02, False, CLEAR_HEALTHY),
    row(1, "pass", 1.09, True, NEAR_THE_LINE),
    row(2, "fail", 1.60, True, CLEAR_DAMAGED)])


def test_agreement_counts_each_state_and_sets_apart_labels_near_max_drop():
    figures = fidelity.agreement([SUDDEN, GRADUAL])
    assert figures["states"] == 6
    assert figures["gate_ok_label_damaged"] == 1  # the gradual run's edit 1: a miss
    assert figures["agreement"] == pytest.approx(5 / 6)
    assert figures["clear_states"] == 5  # the near-the-line label is not clear
    assert figures["agreement_clear"] == 1.0


def test_the_culprit_is_right_only_when_it_is_the_first_damaging_edit():
    figures = fidelity.culprit_accuracy([SUDDEN, GRADUAL])
    assert figures["damaged_sequences"] == 2
    assert figures["right"] == 1
    assert [case["correct"] for case in figures["cases"]] == [True, False]


def test_risk_recall_and_false_alarms_and_their_sweep_over_thresholds():
    as_run = fidelity.risk_figures([SUDDEN, GRADUAL])
    assert (as_run["damaging_edits"], as_run["flagged_of_damaging"]) == (2, 1)  # gradual's edit 1 unflagged
    assert (as_run["flagged"], as_run["flagged_harmless"]) == (2, 1)
    sweep = {(r["max_relative_update"], r["min_key_denominator"]): r for r in fidelity.risk_sweep([SUDDEN])}
    assert sweep[(0.1, 0.1)]["flagged_harmless"] == 1
    assert sweep[(0.25, 0.1)]["flagged_harmless"] == 0
    assert sweep[(2.0, 0.1)]["flagged_of_damaging"] == 1  # 2.204 > 2.0, and the denominator flags it anyway
    assert sweep[(2.0, 0.02)]["flagged_of_damaging"] == 1
    assert fidelity.would_flag(SUDDEN["rows"][1], 5.0, 0.02)  # 0.0141 < 0.02
    assert not fidelity.would_flag(SUDDEN["rows"][1], 5.0, 0.01)


def test_a_lower_fail_ratio_catches_the_gradual_damage_in_the_sweep():
    sweep = {r["fail_ratio"]: r for r in fidelity.fail_ratio_sweep([SUDDEN, GRADUAL])}
    assert sweep[1.5]["agreement"] == pytest.approx(5 / 6) and sweep[1.5]["culprit_right"] == 1
    assert sweep[1.08]["agreement"] == 1.0 and sweep[1.08]["culprit_right"] == 2
    assert sweep[1.05]["healthy_states_failed"] == 0


def test_a_sequence_verdict_counts_the_final_checkpoint_only_where_the_checks_passed():
    caught_at_the_end = run("end", None, [row(0, "pass", 1.02, True, CLEAR_DAMAGED)],
                            checkpoint={"failed": True, "tasks": {}})
    missed = run("missed", None, [row(0, "pass", 1.02, True, CLEAR_DAMAGED)], checkpoint=None)
    table = fidelity.sequence_verdicts([caught_at_the_end, missed, dict(SUDDEN, checkpoint=None), GRADUAL])
    assert table == {"checks_fail": [1, 0], "checkpoint_only_fails": [1, 0], "passes": [1, 0]}


def test_a_replay_takes_the_study_labels_and_is_compared_with_the_study_ratios_at_its_bands():
    """`--labels-from`: a smaller sample's checks of the study's states, against the study's ratios judged
    at the replayed policy's bands (builtin:cpu: warn 1.05, fail 1.10)."""
    replay = run("gradual", "e1", [row(0, "pass", 1.01, None, None), row(1, "fail", 1.12, None, None),
                                   row(2, "fail", 1.70, None, None)], checkpoint=None)
    replay = fidelity.with_study_labels(replay, GRADUAL)
    assert [r["damaged"] for r in replay["rows"]] == [False, True, True] and "checkpoint" not in replay
    figures = fidelity.status_agreement([replay], fidelity.load_study_policy("builtin:cpu"))
    # the study's 1.09 is a warn at these bands where the replay's 1.12 fails: one verdict differs, and the
    # replay is the one that agrees with the label (damaged)
    assert (figures["states"], figures["same_status"], figures["same_verdict"]) == (3, 2, 2)
    assert figures["agreement"] == 1.0 and figures["study_agreement"] == pytest.approx(2 / 3)
    assert [(d["position"], d["status"], d["reference"]) for d in figures["differ"]] == [(1, "fail", "warn")]
    with pytest.raises(SystemExit, match="edit 0 is other here"):
        fidelity.with_study_labels(run("gradual", None, [dict(row(0, "pass", 1.0, None, None), id="other")]),
                                   GRADUAL)
