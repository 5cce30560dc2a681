"""A run's result loaded back (editgate/results.py, `editgate generate`): every kind a run can leave (the
report directory's edit pack and memory.json, --save-delta, --save-model) rebuilds a model that
generates exactly what the gate measured, and undoing it gives the base model back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import read_json, run_cli
from editgate import results
from editgate.errors import InputError

MEMORY_HPARAMS = "  memory: {encoder: base, centre_texts: 20, threshold: 0.97}\n"


def gated(repo: Path, out: Path, *extra: str) -> dict:
    """`editgate run` on `repo` into `out`; its report."""
    outcome = run_cli("run", "--repo", str(repo), "--out", str(out), "--quiet", *extra)
    document = read_json(out / "report.json")
    assert outcome.exit_code == 0, (document["reasons"], outcome.output)
    return document


def use_memory(repo: Path) -> Path:
    config = repo / "editgate.yaml"
    text = config.read_text().replace("method: rome", "method: memory")
    config.write_text(text.replace("hparams:\n", "hparams:\n" + MEMORY_HPARAMS))
    return repo


def measured(document: dict) -> dict[str, str]:
    """What the gate saw each edit's prompt continued with."""
    return {e["id"]: e["metrics"]["generated"] for e in document["edits"]}


def regenerated(session, document: dict) -> dict[str, str]:
    saved = results.SavedResult("report", edits=document["edits"])
    asked = results.questions(saved, [], 16)
    return {q.edit["id"]: answer for q, answer in zip(asked, results.answers(session, asked))}


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["rome", "memory"])
def test_the_report_directory_reloads_as_the_gated_model(method, tiny_repo, tmp_path):
    repo = tiny_repo()
    if method == "memory":
        use_memory(repo)
    out = tmp_path / "out"
    document = gated(repo, out)
    result = document["artifacts"]["result"]
    assert result["complete"]
    if method == "rome":
        assert result == {"edit_pack": "edits.safetensors", "artifacts_of": [], "complete": True}
    else:
        assert result == {"edit_pack": None, "artifacts_of": ["memory"], "complete": True}

    session = results.load_result(out, cache_dir=tmp_path / "cache", log=lambda _m: None)
    assert regenerated(session, document) == measured(document)  # the same answers the gate measured
    edited = weights(session.base_model)
    session.undo_to(0)
    base = results.open_base(results.locate(out), cache_dir=tmp_path / "cache", log=lambda _m: None)
    for name, value in weights(base.base_model).items():
        assert torch.equal(session.base_model.get_parameter(name), value), name
    changed = [name for name, value in edited.items() if not torch.equal(value, base.base_model.get_parameter(name))]
    assert bool(changed) == (method == "rome")  # the memory never writes a weight


def test_every_saved_kind_loads_to_the_same_model(tiny_repo, tmp_path):
    """The report directory's pack, --save-delta's pack and --save-model's directory are one model."""
    repo = tiny_repo()
    out = tmp_path / "out"
    document = gated(repo, out, "--save-delta", str(tmp_path / "pack.safetensors"),
                     "--save-model", str(tmp_path / "model"))
    spec = document["environment"]["model"]
    answers = []
    for source in (out, tmp_path / "pack.safetensors", tmp_path / "model"):
        saved = results.locate(source)
        assert saved.base_model == spec, source
        session = results.open_base(saved, cache_dir=tmp_path / "cache", log=lambda _m: None)
        results.apply_result(session, saved)
        answers.append((weights(session.base_model), regenerated(session, document)))
    reference_weights, reference_answers = answers[0]
    assert reference_answers == measured(document)
    for loaded_weights, loaded_answers in answers[1:]:
        assert loaded_answers == reference_answers
        assert all(torch.equal(loaded_weights[name], value) for name, value in reference_weights.items())


def test_generate_prints_edited_and_unedited_answers(tiny_repo, tmp_path):
    repo = use_memory(tiny_repo())
    out = tmp_path / "out"
    document = gated(repo, out)
    shown = run_cli("generate", "--from", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert shown.exit_code == 0, shown.output
    for edit in document["edits"]:
        assert f"edit {edit['id']} ({edit['file']}:{edit['line']}) [memory]" in shown.output
        assert f"    edited:   {edit['metrics']['generated']}" in shown.output
    assert shown.output.count("    unedited: ") == len(document["edits"])

    free = run_cli("generate", "--from", str(out / "memory.json"), "--quiet", "--cache-dir", str(tmp_path / "cache"),
                   "--max-new-tokens", "3", "The Eiffel Tower is located in the city of")
    assert free.exit_code == 0, free.output
    assert free.output.splitlines()[0] == "The Eiffel Tower is located in the city of"


def test_a_memory_file_alone_needs_its_base_model_named(tiny_repo, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    gated(use_memory(tiny_repo()), out)
    alone = tmp_path / "elsewhere" / "memory.json"
    alone.parent.mkdir()
    alone.write_bytes((out / "memory.json").read_bytes())
    with pytest.raises(InputError, match="name it with --model"):
        results.load_result(alone, cache_dir=tmp_path / "cache", log=lambda _m: None)
    session = results.load_result(alone, model=str(tiny_model_dir("llama", 4)), cache_dir=tmp_path / "cache",
                                  log=lambda _m: None)
    assert session.wraps_model()


def test_unusable_sources_are_refused_with_their_path(tiny_repo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run_cli("generate", "--from", str(empty), "hello")
    assert refused.exit_code == 2 and f"{empty}: not a report directory" in refused.output

    out = tmp_path / "out"
    gated(tiny_repo(), out)
    report = read_json(out / "report.json")
    report["artifacts"]["result"]["edit_pack"] = "../../etc/passwd"  # a downloaded report may say anything
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="only a file name in the report directory"):
        results.locate(out)

    del report["artifacts"]["result"]  # an interrupted run, or an older editgate
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="kept no result"):
        results.locate(out)


def test_no_edit_pack_leaves_an_incomplete_result(tiny_repo, tmp_path):
    out = tmp_path / "out"
    document = gated(tiny_repo(), out, "--no-edit-pack")
    assert not (out / "edits.safetensors").exists()
    assert document["artifacts"]["result"]["complete"] is False
    with pytest.raises(InputError, match="--no-edit-pack"):
        results.locate(out)

