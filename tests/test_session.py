"""The edit session and the public API: edits applied and undone to any earlier point exactly, the model
to evaluate following the stack (a memory wraps the base model, parametric methods write it), and the
whole gate callable from Python as from the CLI."""

from __future__ import annotations

import torch

import editgate
from editgate.manifests import Edit

from helpers import TINY_ROME

EIFFEL = Edit("eiffel", "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
KREMLIN = Edit("kremlin", "{} is located in the city of", "The Kremlin", "London", "Moscow")


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_session_undoes_to_any_earlier_point_exactly(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    session = editgate.EditSession(loaded, cache_dir=tmp_path / "cache", hparams={"rome": TINY_ROME},
                                   log=lambda _m: None)
    base = weights(loaded.model)
    session.apply([EIFFEL])
    after_first = weights(loaded.model)
    session.apply([KREMLIN])
    assert session.depth == 2 and session.edit_ids() == ["eiffel", "kremlin"]
    assert session.model is loaded.model and not session.wraps_model()  # ROME writes the weights
    assert session.written_parameters() == ["model.layers.1.mlp.down_proj.weight"] * 2
    assert not same(weights(loaded.model), after_first)
    session.undo_to(1)
    assert same(weights(loaded.model), after_first)
    session.undo_to(0)
    assert same(weights(loaded.model), base) and session.written_parameters() == []


def test_the_model_to_evaluate_follows_the_stack(load_tiny, tmp_path):
    """A memory wraps the base model; undoing its edits gives the base model back, untouched."""
    loaded = load_tiny("llama")
    session = editgate.EditSession(loaded, cache_dir=tmp_path / "cache", method="memory", log=lambda _m: None)
    base = weights(loaded.model)
    session.apply([EIFFEL])
    assert session.model is not loaded.model and session.wraps_model()
    assert session.written_parameters() == []
    session.undo_to(0)
    assert session.model is loaded.model and same(weights(loaded.model), base)


def test_the_gate_runs_from_python_as_from_the_cli(tiny_repo):
    document, code = editgate.run_gate(tiny_repo(), log=lambda _m: None)
    assert code == document["exit_code"] == 0 and document["verdict"] == "passed"
    assert [e["id"] for e in document["edits"]] == ["eiffel-rome", "kremlin-london", "taj-egypt"]

    broken = tiny_repo(name="broken", manifests={"edits/x.yaml": "edits:\n  - id: [oops]\n"})
    document, code = editgate.run_gate(broken, log=lambda _m: None)
    assert code == 2 and document["verdict"] == "invalid" and document["problems"][0]["file"] == "edits/x.yaml"
