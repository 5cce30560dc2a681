"""Input validation: config, manifests, policies and the safe YAML loader. Fast; no model is loaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from editgate.config import Config, load_config
from editgate.errors import InputError
from editgate.manifests import Edit, LocalityCheck, edit_fingerprint, load_manifests
from editgate.policy import BUILTIN_POLICIES, Policy, builtin_policy_path, load_policy
from editgate.validate import load_inputs, validate_paths
from editgate.yamlio import LineDict, LineList, did_you_mean, load_yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COUNTERFACT = SHARED / "data" / "counterfact-2k.json"
REPO_ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def messages(excinfo: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


GOOD_EDIT = """\
  - id: {id}
    prompt: "{{}} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
"""


def load_one(tmp_path: Path, text: str, name: str = "edits/a.yaml") -> list[Edit]:
    path = write(tmp_path / name, text)
    return load_manifests([path], tmp_path, "rome")


# --- the YAML loader -------------------------------------------------------------------------------


def test_loader_keeps_lines(tmp_path):
    data = load_yaml(write(tmp_path / "x.yaml", "a: 1\nlist:\n  - x\n  - {k: v}\n"), "x.yaml")
    assert isinstance(data, LineDict) and data.line == 1
    assert data.key_lines == {"a": 1, "list": 2}
    assert isinstance(data["list"], LineList) and data["list"].item_lines == [3, 4]
    assert data["list"][1].line == 4


def test_billion_laughs_rejected_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):  # 9 levels of 9: only 72 aliases, 9**9 values
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = write(tmp_path / "lol.yaml", "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        load_yaml(path, "lol.yaml")
    assert time.perf_counter() - start < 1.0
    assert "aliases expand to more than" in str(e.value)
    assert str(e.value).startswith("lol.yaml:")


def test_too_many_aliases_rejected(tmp_path):
    text = "a: &a x\nb: [" + ", ".join(["*a"] * 150) + "]\n"
    with pytest.raises(InputError, match="more than 100 aliases"):
        load_yaml(write(tmp_path / "many.yaml", text), "many.yaml")


def test_deep_nesting_rejected_without_crashing(tmp_path):
    with pytest.raises(InputError, match="nested more than"):
        load_yaml(write(tmp_path / "deep.yaml", "[" * 100_000), "deep.yaml")


def test_oversize_rejected(tmp_path):
    path = write(tmp_path / "big.yaml", "a: 1\n# " + "x" * 200 + "\n")
    with pytest.raises(InputError, match="big.yaml: is larger than 100 bytes; split it"):
        load_yaml(path, "big.yaml", max_bytes=100)
    assert load_yaml(path, "big.yaml", max_bytes=1000) == {"a": 1}


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "edits:\n  - id: x\n    prompt: a: b\n")
    with pytest.raises(InputError) as e:
        load_yaml(path, "edits/bad.yaml")
    (message,) = messages(e)
    assert message.startswith("edits/bad.yaml:3: invalid YAML")
    assert "quote" in message


def test_duplicate_keys_and_unsafe_tags_and_bad_encoding(tmp_path):
    with pytest.raises(InputError, match=r"d\.yaml:3: .*duplicate key 'a' \(first written on line 1\)"):
        load_yaml(write(tmp_path / "d.yaml", "a: 1\nb: 2\na: 3\n"), "d.yaml")
    with pytest.raises(InputError, match="not allowed"):
        load_yaml(write(tmp_path / "t.yaml", "a: !!python/object/apply:os.system [ls]\n"), "t.yaml")
    (tmp_path / "u.yaml").write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(InputError, match=r"u\.yaml:2: is not valid UTF-8"):
        load_yaml(tmp_path / "u.yaml", "u.yaml")


def test_json_loads_with_lines_and_escaped_emoji(tmp_path):
    data = load_yaml(write(tmp_path / "a.json", '[\n\t{"prompt": "x",\n\t "n": 1e3}\n]'), "a.json")
    assert data[0]["n"] == 1000.0 and data[0].key_lines["n"] == 3
    assert load_yaml(write(tmp_path / "b.json", '{"a": "\\ud83d\\ude00"}'), "b.json") == {"a": "\U0001F600"}


def test_did_you_mean():
    assert did_you_mean("taget", ["id", "target", "subject"]) == " (did you mean 'target'?)"
    assert did_you_mean("zzz", ["id", "target"]) == ""


# --- manifests -------------------------------------------------------------------------------------


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


# --- config ----------------------------------------------------------------------------------------


def test_config_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.delenv("EDITGATE_CACHE_DIR")  # set for every fast test (conftest): here, the default
    config = load_config(tmp_path)
    assert config == Config(root=tmp_path.resolve())
    assert config.model == "builtin:smollm2-135m" and config.manifests == ["edits/**/*.yaml"]
    assert config.cache_path() == Path("~/.cache/editgate").expanduser()
    assert config.policy_path() == builtin_policy_path("default")  # no policies/default.yaml here


def test_config_unknown_key_and_bad_values(tmp_path):
    write(tmp_path / "editgate.yaml", "modle: x\ndtype: fp16\ndevice: gpu\nthreads: 0\nmethod: rom\n"
                                      "trust_remote_code: 'yes'\nhparams: {rome: {layr: 1}, memitt: {}}\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path)
    got = messages(e)
    assert got[0] == "editgate.yaml:1: unknown setting 'modle' (did you mean 'model'?)"
    assert got[1].startswith("editgate.yaml:2: dtype: 'fp16' is not one of auto, float32, bfloat16, float16")
    assert got[2].startswith("editgate.yaml:3: device: 'gpu' is not a device")
    assert got[3].startswith("editgate.yaml:4: threads: must be a whole number from 1 to ")
    assert got[4].startswith("editgate.yaml:5: method: unknown method 'rom' (did you mean 'rome'?)")
    assert got[5].startswith("editgate.yaml:6: trust_remote_code: running the model repository's code is the "
                             "runner owner's decision")
    assert len(got) == 6  # hparams are checked only once `method` is valid


def test_config_hparams_checked(tmp_path):
    write(tmp_path / "editgate.yaml", "hparams:\n  rome: {layr: 1}\n  memitt: {}\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path)
    got = messages(e)
    assert got[0].startswith("editgate.yaml:2: hparams.rome: unknown hyperparameter 'layr'")
    assert got[1].startswith("editgate.yaml:3: hparams: unknown method 'memitt'")


def test_paths_escaping_repo_rejected(tmp_path):
    repo = tmp_path / "repo"
    write(tmp_path / "outside.yaml", "perplexity: {}\n")
    write(repo / "editgate.yaml", "policy: ../outside.yaml\nmanifests: ['../*.yaml', /etc/*.yaml]\n")
    with pytest.raises(InputError) as e:
        load_config(repo)
    got = messages(e)
    assert got[0] == ("editgate.yaml:1: policy: '../outside.yaml' is outside the repository; "
                      "use a path inside it or builtin:<name>")
    assert got[1].startswith("editgate.yaml:2: manifests: '../*.yaml' is outside the repository")


def test_symlinked_manifest_outside_repo_rejected(tmp_path):
    repo = tmp_path / "repo"
    secret = write(tmp_path / "secret.yaml", "edits: []\n")
    (repo / "edits").mkdir(parents=True)
    (repo / "edits" / "link.yaml").symlink_to(secret)
    with pytest.raises(InputError, match="edits/link.yaml: is a link to a file outside the repository"):
        load_config(repo).manifest_paths()


def test_manifest_paths_sorted_across_nested_dirs(tmp_path):
    for name in ["edits/b.yaml", "edits/a/z.yaml", "edits/a.yaml", "edits/2026/01-x.yaml", "edits/c.txt",
                 "other/o.yaml"]:
        write(tmp_path / name, "edits: []\n")
    write(tmp_path / "editgate.yaml", "manifests: [edits/**/*.yaml, edits/a.yaml, other/*.yaml]\n")
    paths = load_config(tmp_path).manifest_paths()
    assert [p.relative_to(tmp_path.resolve()).as_posix() for p in paths] == [
        "edits/2026/01-x.yaml", "edits/a.yaml", "edits/a/z.yaml", "edits/b.yaml", "other/o.yaml"]


# --- policy ----------------------------------------------------------------------------------------


def test_builtin_policies_load_and_match_repo_copies():
    default = load_policy("builtin:default")
    assert default.perplexity.warn_ratio == 1.10 and default.perplexity.fail_ratio == 1.50
    assert default.perplexity.collapse_ratio == 10.0 and default.benchmarks.run_at == "end"
    assert default.edits.min_efficacy == 0.9 and default.source == "builtin:default"
    strict, lenient = load_policy("builtin:strict"), load_policy("builtin:lenient")
    assert strict.perplexity.fail_ratio < default.perplexity.fail_ratio < lenient.perplexity.fail_ratio
    assert strict.edits.min_efficacy > default.edits.min_efficacy > lenient.edits.min_efficacy
    for name in BUILTIN_POLICIES:
        copy = REPO_ROOT / "policies" / f"{name}.yaml"
        assert copy.read_text() == builtin_policy_path(name).read_text()
    with pytest.raises(InputError, match="unknown builtin policy 'strct' \\(did you mean 'strict'\\?\\)"):
        load_policy("builtin:strct")


def test_policy_ranges_and_typos(tmp_path):
    path = write(tmp_path / "p.yaml", """\
perplexity:
  warn_ratio: 1.6
  fail_ratio: 1.5
benchmarks:
  run_at: sometimes
  max_drop: 5
edits:
  min_efficacy: 1.5
  min_localty: 0.9
benchmark: {}
""")
    with pytest.raises(InputError) as e:
        load_policy(path, "policies/p.yaml")
    assert messages(e) == [
        "policies/p.yaml:2: perplexity.warn_ratio (1.6) must not exceed perplexity.fail_ratio (1.5)",
        "policies/p.yaml:5: benchmarks.run_at must be \"end\" or a whole number N from 1 to 1,000,000 "
        "(every N edits), not 'sometimes'",
        "policies/p.yaml:6: benchmarks.max_drop must be a number between 0 and 1, not a number (5)",
        "policies/p.yaml:8: edits.min_efficacy must be a number between 0 and 1, not a number (1.5)",
        "policies/p.yaml:9: edits: unknown key 'min_localty' (did you mean 'min_locality'?)",
        "policies/p.yaml:10: unknown section 'benchmark' (did you mean 'benchmarks'?)",
    ]


def test_policy_ratios_and_counts(tmp_path):
    path = write(tmp_path / "p.yaml", "perplexity:\n  samples: 0\n  fail_ratio: 0.5\n  check_every: 2.5\n"
                                      "  corpus: ../../etc/passwd\n")
    with pytest.raises(InputError) as e:
        load_policy(path, "p.yaml", root=tmp_path)
    got = messages(e)
    assert got[0].startswith("p.yaml:2: perplexity.samples must be a whole number from 1 to 100,000")
    assert got[1].startswith("p.yaml:3: perplexity.fail_ratio must be a number of at least 1")
    assert got[2].startswith("p.yaml:4: perplexity.check_every must be a whole number")
    assert got[3].startswith("p.yaml:5: perplexity.corpus '../../etc/passwd' is outside the repository")
    ok = load_policy(write(tmp_path / "ok.yaml", "benchmarks: {run_at: 10}\nperplexity: {warn_ratio: 1.2}\n"), "ok")
    assert ok.benchmarks.run_at == 10 and ok.perplexity.warn_ratio == 1.2 and ok.perplexity.fail_ratio == 1.5


# --- everything together ---------------------------------------------------------------------------


def make_repo(root: Path) -> Path:
    write(root / "editgate.yaml", "method: rome\npolicy: policies/default.yaml\n")
    write(root / "policies/default.yaml", builtin_policy_path("default").read_text())
    write(root / "edits/2026-11-01-capitals.yaml", "edits:\n" + GOOD_EDIT.format(id="eiffel"))
    return root


def test_load_inputs_ok(tmp_path):
    config, policy, edits = load_inputs(make_repo(tmp_path))
    assert isinstance(policy, Policy) and policy.source == "policies/default.yaml"
    assert [e.id for e in edits] == ["eiffel"] and edits[0].source == "edits/2026-11-01-capitals.yaml"
    _, strict, _ = load_inputs(tmp_path, policy_override="builtin:strict")
    assert strict.perplexity.fail_ratio == 1.20


def test_load_inputs_collects_problems_from_all_inputs(tmp_path):
    make_repo(tmp_path)
    write(tmp_path / "editgate.yaml", "method: rome\nseed: -1\n")
    write(tmp_path / "policies/default.yaml", "perplexity: {samples: many}\n")
    write(tmp_path / "edits/z.yaml", "edits:\n  - id: eiffel\n")
    with pytest.raises(InputError) as e:
        load_inputs(tmp_path)
    got = messages(e)
    assert got[0].startswith("editgate.yaml:2: seed: must be a whole number from 0 to 4294967295")
    assert got[1].startswith("policies/default.yaml:1: perplexity.samples must be a whole number")
    assert "edits/z.yaml:2: edit 'eiffel': duplicate id, already used at edits/2026-11-01-capitals.yaml:2; " \
           "ids must be unique" in got
    assert "edits/z.yaml:2: edit 'eiffel': 'target' is required" in got


def test_load_inputs_no_manifests(tmp_path):
    with pytest.raises(InputError, match=r"manifests: no file matches 'edits/\*\*/\*\.yaml' \(the default"):
        load_inputs(tmp_path)


def test_validate_paths_classifies_files(tmp_path):
    repo = make_repo(tmp_path / "repo")
    policy = write(tmp_path / "mine.yaml", "edits: {min_efficacy: 0.5}\n")
    manifest = write(tmp_path / "more.yaml", "edits:\n" + GOOD_EDIT.format(id="other"))
    result = validate_paths([repo, policy, manifest])
    assert len(result.repos) == 1 and len(result.policies) == 1 and result.manifest_files == 1
    assert result.policies[0].edits.min_efficacy == 0.5 and result.edit_count == 2
    broken = write(tmp_path / "broken.yaml", "edits:\n  - id: x\n")
    with pytest.raises(InputError) as e:
        validate_paths([str(broken), str(tmp_path / "missing.yaml")])
    got = messages(e)
    assert got[0] == f"{tmp_path / 'missing.yaml'}: does not exist"
    assert f"{broken}:2: edit 'x': 'prompt' is required" in got
