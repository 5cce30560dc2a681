"""Edits that contradict each other (editgate/conflicts.py): found by `validate` from the manifests alone,
named with both locations, and left out of the gate's end-of-run figures instead of blamed as bleed."""

from __future__ import annotations

import sys
import subprocess

import pytest

from helpers import gate_policy, read_json, run_cli
from editgate.conflicts import LOCALITY, OWN_FACT, SAME_FACT, Conflict, conflict_warnings, find_conflicts
from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.edit_metrics import EditScorer


def edit(id: str, subject: str, target: str, prompt: str = "{} is located in the city of", *,
         locality: tuple = (), paraphrases: tuple = (), ground_truth: str | None = None, line: int = 1) -> Edit:
    checks = tuple(LocalityCheck(p, a) for p, a in locality)
    return Edit(id, prompt, subject, target, ground_truth, paraphrases, checks, source="edits/x.yaml", line=line)


GUARD = edit("eiffel-rome", "The Eiffel Tower", "Rome", line=2,
             locality=(("The Colosseum is located in the city of", "Rome"),
                       ("The Louvre is located in the city of", "Paris")))
ATHENS = edit("colosseum-athens", "The Colosseum", "Athens", ground_truth="Rome", line=9)


def test_a_locality_prompt_another_edit_rewrites_is_a_conflict():
    assert find_conflicts([GUARD, ATHENS]) == [Conflict(LOCALITY, 0, 1, 0)]
    assert find_conflicts([ATHENS, GUARD]) == [Conflict(LOCALITY, 1, 0, 0)]  # an earlier edit changes it too


@pytest.mark.parametrize("prompt, answer", [
    ("the  COLOSSEUM is located in the city of", None),  # case and whitespace
    ("The Colosseum stands in", None),  # a paraphrase of the other edit
    ("Tourists visit The Colosseum in", "Rome"),  # any wording that gives the answer the edit replaces
])
def test_the_fact_is_recognised_however_it_is_asked(prompt, answer):
    rewriter = edit("colosseum-athens", "The Colosseum", "Athens", ground_truth="Rome",
                    paraphrases=("The Colosseum stands in",))
    guard = edit("guard", "The Eiffel Tower", "Rome", locality=((prompt, answer),))
    assert find_conflicts([guard, rewriter]) == [Conflict(LOCALITY, 0, 1, 0)]


@pytest.mark.parametrize("prompt, answer", [
    ("The Colosseum was built by", "Vespasian"),  # the same subject, another relation
    ("The Colosseums of the world are located in the city of", None),  # not the subject: a word boundary
    ("The Louvre is located in the city of", "Rome"),  # the replaced answer, but another subject
])
def test_other_prompts_are_not_conflicts(prompt, answer):
    guard = edit("guard", "The Eiffel Tower", "Rome", locality=((prompt, answer),))
    assert find_conflicts([guard, ATHENS]) == []


def test_two_edits_of_one_fact_and_an_edit_guarding_its_own_fact():
    first = edit("colosseum-athens", "The Colosseum", "Athens", line=3)
    again = edit("colosseum-paris", "Colosseum", "Paris", prompt="The {} is located in the city of", line=8)
    same = edit("colosseum-athens-again", "The Colosseum", "athens.", line=12)
    own = edit("own", "The Kremlin", "London", locality=(("The Kremlin is located in the city of", None),))
    found = find_conflicts([first, again, same, own])
    assert {Conflict(SAME_FACT, 0, 1), Conflict(SAME_FACT, 0, 2), Conflict(SAME_FACT, 1, 2)} <= set(found)
    assert Conflict(OWN_FACT, 3, 3, 0) in found
    messages = [str(w) for w in conflict_warnings([first, again, same, own])]
    assert "edits/x.yaml:3: edit 'colosseum-athens' and the later edit 'colosseum-paris' (edits/x.yaml:8) edit the " \
           "same fact ('The Colosseum is located in the city of'): 'colosseum-paris' sets 'Paris' instead of " \
           "'Athens', and wins" in messages
    assert any("'colosseum-athens-again' sets the same target" in m for m in messages)


def test_thousands_of_edits_are_checked_quickly():
    """An index by subject word, not a comparison of every prompt with every edit (a cap on time, loose)."""
    import time

    edits = [edit(f"e{i}", f"Landmark {i}", "Rome", locality=((f"Landmark {i + 1} is located in the city of", None),))
             for i in range(3000)]
    start = time.perf_counter()
    found = find_conflicts(edits)
    assert len(found) == 2999
    assert time.perf_counter() - start < 10  # matching every prompt with every edit takes minutes here


CONTRADICTING = """\
edits:
  - id: eiffel-rome
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    locality:
      - {prompt: "The Colosseum is located in the city of"}
  - id: colosseum-athens
    prompt: "{} is located in the city of"
    subject: The Colosseum
    target: Athens
    ground_truth: Rome
"""


def test_validate_warns_naming_both_locations(tiny_repo):
    repo = tiny_repo(manifests={"edits/a.yaml": CONTRADICTING})
    outcome = run_cli("validate", str(repo))
    assert outcome.exit_code == 0, outcome.output
    assert ("warning: edits/a.yaml:2: edit 'eiffel-rome': its locality prompt 'The Colosseum is located in the city "
            "of' asks the fact that edit 'colosseum-athens' (edits/a.yaml:8) changes") in outcome.output
    assert "ok: 2 edits valid (1 warning(s)" in outcome.output


def test_validate_still_imports_no_torch(tiny_repo):
    repo = tiny_repo(manifests={"edits/a.yaml": CONTRADICTING})
    code = ("import sys; from editgate.validate import validate_paths; "
            f"assert validate_paths([{str(repo)!r}]).warnings; "
            "assert 'torch' not in sys.modules, 'validate imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_gate_leaves_deliberate_changes_out_and_says_so(tiny_repo, tmp_path):
    policy = gate_policy().replace("min_locality: 0.0", "min_locality: 1.0")
    repo = tiny_repo(manifests={"edits/a.yaml": CONTRADICTING}, policy=policy)
    out = tmp_path / "out"
    run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet")
    document = read_json(out / "report.json")
    guard = document["edits"][0]
    assert guard["metrics"]["locality"] is None and guard["metrics"]["locality_tf"] is None
    assert guard["metrics"]["left_out"] == ["locality prompt 'The Colosseum is located in the city of': changed on "
                                            "purpose by edit 'colosseum-athens'"]
    assert guard["locality_after_edit"] is not None  # measured before the Colosseum edit came
    assert not any("locality" in reason for reason in document["reasons"])
    assert any("edits/a.yaml:2: edit 'eiffel-rome'" in warning for warning in document["warnings"])
    assert "**Left out of the edit metrics** (1)" in (out / "report.md").read_text()


def test_the_scorer_leaves_a_prompt_out_only_once_its_changer_is_applied(load_tiny):
    loaded = load_tiny("llama")
    model, tokenizer = loaded.model, loaded.tokenizer
    edits = [GUARD, ATHENS]
    plain = EditScorer(model, tokenizer, edits)
    aware = EditScorer(model, tokenizer, edits, conflicts=find_conflicts(edits))
    before = aware.score(model, upto=1)[0]  # the Colosseum edit not applied yet: both prompts count
    assert before.locality == plain.score(model, upto=1)[0].locality and before.left_out == []
    after = aware.score(model)[0]
    assert after.left_out and "'colosseum-athens'" in after.left_out[0]
    assert after.locality == 1.0  # the one prompt left, on the unedited model


def test_locality_right_after_an_edit_can_fail(load_tiny):
    """On the unedited model every locality prompt keeps its answer; on another model they do not."""
    loaded = load_tiny("llama")
    scorer = EditScorer(loaded.model, loaded.tokenizer, [GUARD])
    assert scorer.locality_after(loaded.model, [0]) == {0: 1.0}
    other = load_tiny("llama", seed=1)
    assert scorer.locality_after(other.model, [0])[0] < 1.0
