"""Exporting edits: the edit pack (--save-delta / apply-delta, bit for bit) and --save-model."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import run_cli, write


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(width)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_edit_pack_reproduces_the_edited_weights_bit_for_bit(ci_run, tiny_model_dir, tmp_path):
    from editgate.export import read_pack

    root, doc = ci_run["root"], ci_run["doc"]
    saved, pack = root / "edited-model", root / "edits.safetensors"
    assert doc["artifacts"] == {"delta": str(pack), "delta_parameters": 1, "model": str(saved),
                                "result": {"edit_pack": "edits.safetensors", "artifacts_of": [], "complete": True}}
    assert {"config.json", "tokenizer.json", "editgate-model.json"} <= {p.name for p in saved.iterdir()}
    assert list(saved.glob("*.safetensors"))
    assert not list(root.glob(".edited-model*"))  # no temporary directory left behind
    tensors, metadata = read_pack(pack)
    assert metadata["base_fingerprint"] == doc["environment"]["model_fingerprint"]
    (name, info), = metadata["parameters"].items()
    assert name == "model.layers.1.mlp.down_proj.weight" and info["changed"] > 0
    assert metadata["edits"] == [e["id"] for e in doc["edits"] if e["status"] != "not-run"]

    base_dir = tiny_model_dir("llama", 4)
    out = tmp_path / "applied"
    result = run_cli("apply-delta", "--model", str(base_dir), "--delta", str(pack), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    edited, applied, base = _weights(saved), _weights(out), _weights(base_dir)
    assert set(applied) == set(edited)
    for key in edited:
        assert torch.equal(_bits(applied[key]), _bits(edited[key])), key
    assert not torch.equal(edited[name], base[name])  # the edit really changed the weight
    # everything else is the base model's
    assert all(torch.equal(_bits(edited[k]), _bits(base[k])) for k in base if k != name)


def test_edit_pack_rounding_is_exact():
    """W0 + (W1 - W0) is not always W1 in floating point: the pack stores corrections for those."""
    from editgate.export import apply_pack, pack_tensors, written_parameters
    from editgate.methods.base import AppliedEdit

    for dtype in (torch.float32, torch.bfloat16):
        model = torch.nn.Linear(3, 2, bias=False).to(dtype)
        base_values = torch.tensor([[1e8, 1.0, -3.0], [0.1, 2.0**-20, 7.0]]).to(dtype)
        edited_values = torch.tensor([[1.0, 1e8, -3.0], [0.3, 5.0, 7.0]]).to(dtype)
        with torch.no_grad():
            model.weight.copy_(edited_values)
        applied = [AppliedEdit("test", ["a"], {"weight": base_values.clone()})]
        tensors, meta = pack_tensors(model, written_parameters(applied))
        naive = (base_values.float() + tensors["delta/weight"]).to(dtype)
        assert not torch.equal(_bits(naive), _bits(edited_values))  # plain addition is not exact here
        assert meta["weight"]["fixups"] > 0 and meta["weight"]["changed"] == 4
        with torch.no_grad():
            model.weight.copy_(base_values)
        apply_pack(model, tensors, {"parameters": meta})
        assert torch.equal(_bits(model.weight.detach()), _bits(edited_values)), dtype


def test_apply_delta_refuses_another_base_model(ci_run, tiny_model_dir, tmp_path):
    other = tiny_model_dir("llama", 4, seed=1)
    result = run_cli("apply-delta", "--model", str(other), "--delta", str(ci_run["root"] / "edits.safetensors"),
                     "--out", str(tmp_path / "x"), "--quiet")
    assert result.exit_code == 2 and "differs from the pack's base weights" in result.stderr
    assert not (tmp_path / "x").exists()
    bogus = write(tmp_path / "bogus.safetensors", "not a pack")
    result = run_cli("apply-delta", "--model", str(other), "--delta", str(bogus), "--out", str(tmp_path / "y"))
    assert result.exit_code == 2 and "not a safetensors file" in result.stderr


def test_save_model_refuses_a_foreign_directory(pr_workspace, tmp_path):
    _, _, gated = pr_workspace
    write(tmp_path / "precious" / "thesis.txt", "do not delete")
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out"),
                     "--save-model", str(tmp_path / "precious"), "--quiet")
    assert result.exit_code == 2 and "was not written by editgate" in result.output
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


def test_saving_weights_of_memory_edits_is_refused(tiny_repo, tmp_path):
    manifest = ("edits:\n  - id: remembered\n    prompt: '{} is in'\n    subject: The Kremlin\n"
                "    target: London\n    method: memory\n")
    repo = tiny_repo(manifests={"edits/m.yaml": manifest})
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"),
                     "--save-delta", str(tmp_path / "pack.safetensors"))
    assert result.exit_code == 2 and "keeps edits out of the weights" in result.output
    assert not (tmp_path / "pack.safetensors").exists()
