"""Edit manifests: fields checked with exact file and line, the CounterFact shape, and edit fingerprints. Fast; no
model is loaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from editgate.errors import InputError
from editgate.manifests import Edit, LocalityCheck, edit_fingerprint, load_manifests

from helpers import GOOD_EDIT, SHARED, messages, write


COUNTERFACT = SHARED / "data" / "counterfact-2k.json"


def load_one(tmp_path: Path, text: str, name: str = "edits/a.yaml") -> list[Edit]:
    path = write(tmp_path / name, text)
    return load_manifests([path], tmp_path, "rome")


def test_required_field_error_has_exact_file_and_line(tmp_path):
    text = "edits:\n" + GOOD_EDIT.format(id="ok-one") + (
        "  - id: eiffel-tower-city\n"
        "    prompt: \"{} is located in the city of\"\n"
        "    subject: The Eiffel Tower\n"
    )
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text, "edits/2026-11-capitals.yaml")
    assert messages(e) == ["edits/2026-11-capitals.yaml:6: edit 'eiffel-tower-city': 'target' is required"]


def test_all_errors_listed_across_files(tmp_path):
    a = write(tmp_path / "edits/a.yaml", "edits:\n  - id: one\n    prompt: p {}\n    subject: s\n")
    b = write(tmp_path / "edits/b.yaml", "edits:\n  - id: two\n    subject: s\n    target: t\n"
                                         "  - prompt: x {}\n    subject: s\n    target: t\n")
    with pytest.raises(InputError) as e:
        load_manifests([a, b], tmp_path, "rome")
    assert messages(e) == [
        "edits/a.yaml:2: edit 'one': 'target' is required",
        "edits/b.yaml:2: edit 'two': 'prompt' is required",
        "edits/b.yaml:5: edit #2: 'id' is required",
    ]


def test_typo_field_did_you_mean(tmp_path):
    text = "edits:\n  - id: x\n    prompt: \"{} is in\"\n    subject: S\n    taget: Rome\n"
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text)
    assert "edits/a.yaml:5: edit 'x': unknown field 'taget' (did you mean 'target'?)" in messages(e)
    assert "edits/a.yaml:2: edit 'x': 'target' is required" in messages(e)


def test_yaml_boolean_and_number_targets_flagged(tmp_path):
    text = "edits:\n" + (
        "  - id: x\n    prompt: \"Is {} open? The answer is\"\n    subject: the shop\n    target: no\n"
        "  - id: y\n    prompt: \"{} was founded in\"\n    subject: Acme\n    target: 1999\n"
    )
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text)
    assert messages(e) == [
        "edits/a.yaml:5: edit 'x': 'target' must be text, but YAML read a boolean (false); quote it: target: \"no\"",
        "edits/a.yaml:9: edit 'y': 'target' must be text, but YAML read a number (1999); quote it: target: \"1999\"",
    ]


def test_duplicate_ids_across_files_name_both(tmp_path):
    a = write(tmp_path / "edits/a.yaml", "edits:\n" + GOOD_EDIT.format(id="dup"))
    b = write(tmp_path / "edits/b.yaml", "edits:\n" + GOOD_EDIT.format(id="other") + GOOD_EDIT.format(id="dup"))
    with pytest.raises(InputError) as e:
        load_manifests([a, b], tmp_path, "rome")
    assert messages(e) == [
        "edits/b.yaml:6: edit 'dup': duplicate id, already used at edits/a.yaml:2; ids must be unique"
    ]


def test_subject_not_in_prompt_and_placeholder_count(tmp_path):
    text = "edits:\n" + (
        "  - id: x\n    prompt: the tower is in\n    subject: The Eiffel Tower\n    target: Rome\n"
        "  - id: y\n    prompt: \"{} and {} are in\"\n    subject: A\n    target: B\n"
        "  - id: z\n    prompt: \"the eiffel tower is in\"\n    subject: The Eiffel Tower\n    target: Rome\n"
    )
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text)
    got = messages(e)
    assert got[0].startswith("edits/a.yaml:3: edit 'x': the subject 'The Eiffel Tower' does not occur in the prompt")
    assert got[1] == "edits/a.yaml:7: edit 'y': 'prompt' has 2 '{}' placeholders; use exactly one, for the subject"
    assert "different capitalisation" in got[2]


def test_prompt_normalised_from_literal_subject(tmp_path):
    text = "edits:\n" + (
        "  - id: x\n    prompt: \"Paris {Paris} Paris is the capital of\"\n    subject: Paris\n    target: Italy\n"
        "    ground_truth: France\n    paraphrases: [\"The capital {} belongs to\"]\n"
        "    locality:\n      - {prompt: Berlin is the capital of, answer: Germany}\n      - Rome is in\n"
    )
    (edit,) = load_one(tmp_path, text)
    assert edit.prompt == "{} {Paris} Paris is the capital of"
    assert edit.text == "Paris {Paris} Paris is the capital of"
    assert edit.paraphrases == ("The capital Paris belongs to",)
    assert edit.locality == (LocalityCheck("Berlin is the capital of", "Germany"), LocalityCheck("Rome is in", None))
    assert (edit.source, edit.line, edit.method) == ("edits/a.yaml", 2, "rome")


def test_manifest_method_and_hparams_apply_and_are_checked(tmp_path):
    text = "method: rome\nhparams: {layer: 3}\nedits:\n" + GOOD_EDIT.format(id="a") + (
        "  - id: b\n    prompt: \"{} is in\"\n    subject: X\n    target: Y\n    method: rmoe\n"
        "  - id: c\n    prompt: \"{} is in\"\n    subject: X\n    target: Y\n    hparams: {lyer: 2}\n"
    )
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text)
    got = messages(e)
    assert got[0] == "edits/a.yaml:12: edit 'b': unknown method 'rmoe' (did you mean 'rome'?)"
    assert got[1].startswith("edits/a.yaml:17: edit 'c': unknown hyperparameter 'lyer'")
    (edit,) = load_one(tmp_path, "method: rome\nhparams: {layer: 3}\nedits:\n" + GOOD_EDIT.format(id="a"), "ok.yaml")
    assert edit.method == "rome" and edit.hparams == {"layer": 3} and type(edit.hparams) is dict


def test_empty_and_shapeless_manifests(tmp_path):
    paths = [write(tmp_path / "e1.yaml", ""), write(tmp_path / "e2.yaml", "edits: []\n"),
             write(tmp_path / "e3.yaml", "just text\n"),
             write(tmp_path / "e4.yaml", "id: x\nprompt: p\nsubject: s\ntarget: t\n")]
    with pytest.raises(InputError) as e:
        load_manifests(paths, tmp_path, "rome")
    got = messages(e)
    assert got[0].startswith("e1.yaml: no edits")
    assert got[1].startswith("e2.yaml:1: no edits")
    assert got[2].startswith("e3.yaml: expected a mapping with an 'edits:' list")
    assert any(m.startswith("e4.yaml:1: no 'edits:' list; put the edit in a list under 'edits:'") for m in got)


def test_counterfact_list_shape(tmp_path):
    text = """\
- case_id: 7
  prompt: The mother tongue of Danielle Darrieux is
  subject: Danielle Darrieux
  target_new: English
  ground_truth: French
  rephrase_prompt: [Danielle Darrieux spoke, "In her youth, Danielle Darrieux spoke"]
  locality_prompt: Michel Rocard is a native speaker of
  locality_ground_truth: French
- prompt: Toko Yasuda plays the
  subject: Toko Yasuda
  target_new: piano
"""
    first, second = load_one(tmp_path, text, "data/cf.yaml")
    assert first.id == "case-7" and first.prompt == "The mother tongue of {} is" and first.target == "English"
    assert first.paraphrases == ("Danielle Darrieux spoke", "In her youth, Danielle Darrieux spoke")
    assert first.locality == (LocalityCheck("Michel Rocard is a native speaker of", "French"),)
    assert second.id == "cf-1" and second.line == 9 and second.ground_truth is None


def test_counterfact_typo_and_mismatched_locality(tmp_path):
    text = """\
- case_id: 1
  prompt: A is in
  subject: A
  target_nwe: B
- case_id: 2
  prompt: A is in
  subject: A
  target_new: B
  locality_prompt: [x, y]
  locality_ground_truth: [z]
"""
    with pytest.raises(InputError) as e:
        load_one(tmp_path, text, "cf.yaml")
    assert messages(e) == [
        "cf.yaml:1: edit 'case-1': 'target_new' is required",
        "cf.yaml:4: edit 'case-1': unknown field 'target_nwe' (did you mean 'target_new'?)",
        "cf.yaml:10: edit 'case-2': 2 locality_prompt but 1 locality_ground_truth; give one answer per prompt",
    ]


@pytest.mark.skipif(not COUNTERFACT.is_file(), reason=f"shared data not found at {COUNTERFACT} (../shared absent)")
def test_counterfact_2k_json_loads(tmp_path):
    start = time.perf_counter()
    edits = load_manifests([COUNTERFACT], SHARED, "rome")
    assert time.perf_counter() - start < 10
    assert len(edits) == 2000 and len({e.id for e in edits}) == 2000
    first = edits[0]
    assert first.id == "case-0" and first.source == "data/counterfact-2k.json" and first.line == 2
    assert first.text == "The mother tongue of Danielle Darrieux is" and first.prompt.count("{}") == 1
    assert first.locality == (LocalityCheck("Michel Rocard is a native speaker of", "French"),)
    assert all(e.prompt.count("{}") == 1 and e.text.count(e.subject) >= 1 for e in edits)


def test_fingerprint_ignores_id_and_location_only():
    base = Edit(id="a", prompt="{} is in", subject="X", target="Y", source="a.yaml", line=3)
    moved = Edit(id="b", prompt="{} is in", subject="X", target="Y", source="b.yaml", line=9)
    changed = Edit(id="a", prompt="{} is in", subject="X", target="Z", source="a.yaml", line=3)
    tuned = Edit(id="a", prompt="{} is in", subject="X", target="Y", hparams={"layer": 2})
    assert edit_fingerprint(base) == edit_fingerprint(moved)
    assert len({edit_fingerprint(e) for e in (base, changed, tuned)}) == 3
    assert hash(base) == hash(Edit(id="a", prompt="{} is in", subject="X", target="Y", source="a.yaml", line=3))
