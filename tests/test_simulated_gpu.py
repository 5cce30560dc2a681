"""The GPU path on a CPU: the whole gate on one simulated GPU and on a model split across two
(tests/simdevice.py), for every method, against the same run on the CPU, with a budget on host
synchronisations: a check may synchronise per batch, never per text; an edit per optimisation step,
never per token. Positive controls show that a forgotten `.to(device)` and a per-token `.item()` are
caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editgate.gate import Gate
from editgate.validate import load_inputs

import simdevice
from conftest import EDITS_A, gate_policy

METHODS = ["rome", "memit", "alphaedit", "ft", "memory"]


def _place(model: torch.nn.Module, devices: int) -> torch.nn.Module:
    """The model on sim:0; or split with accelerate's dispatch: the embeddings and block 0 on sim:0, every
    later block, the final norm and the head on sim:1, so the edited layers sit on the second device and
    an edit's inputs, its keys and its outputs live on different devices."""
    if devices == 1:
        return model.to(simdevice.device(0))
    from accelerate import dispatch_model

    from editgate.architecture import block_list

    blocks_name, blocks = block_list(model)
    device_map = {name: "sim:1" for name, _ in model.named_children()}
    base = model.base_model_prefix
    del device_map[base]
    for name, _ in getattr(model, base).named_children():
        device_map[f"{base}.{name}"] = "sim:0" if "emb" in name or name in ("wte", "wpe") else "sim:1"
    del device_map[blocks_name]
    for i in range(len(blocks)):
        device_map[f"{blocks_name}.{i}"] = "sim:0" if i == 0 else "sim:1"
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embeddings.weight:  # tied (GPT-2): one tensor, one device,
        for name, module in model.named_children():  # as device_map="auto" keeps them
            if module is head:
                device_map[name] = "sim:0"
    return dispatch_model(model, device_map=device_map)


def run_gate(repo, load_tiny, devices: int, method: str, cache, arch: str = "llama"):
    config, policy, edits = load_inputs(repo)
    config = dataclasses.replace(config, method=method, cache_dir=str(cache))  # no statistics from another run
    edits = [dataclasses.replace(edit, method=method) for edit in edits]
    loaded = load_tiny(arch, layers=4)
    if devices == 0:
        gate = Gate(config, policy, edits, loaded, log=lambda _m: None)
        return gate.run(), None
    with simdevice.simulated_devices() as mode:
        loaded.model = _place(loaded.model, devices)
        loaded.device = next(loaded.model.parameters()).device
        gate = Gate(config, policy, edits, loaded, log=lambda _m: None)
        _count_by_phase(gate, mode)
        result = gate.run()
    return result, mode


def _count_by_phase(gate: Gate, mode: simdevice.SimulatedDevices) -> None:
    """Host synchronisations of each edit and each check, counted separately (per call: `edit-3`)."""
    for name, phase in (("apply", "edit"), ("measure_check", "check")):
        original = getattr(gate, name)

        def counted(*args, _original=original, _phase=phase, **kwargs):
            index = sum(1 for key in mode.by_phase if key.startswith(_phase))
            with mode.counting(f"{_phase}-{index}"):
                return _original(*args, **kwargs)

        setattr(gate, name, counted)


TEXTS = 24  # check texts: more than any per-check budget, so a sync per text cannot pass
MAX_STEPS = 25  # the most optimisation steps of any method here (ft's default; ROME's tiny setting is 10)


def check_budget(mode: simdevice.SimulatedDevices) -> None:
    """None per text in a check; none per token in an edit (after the first, which sets up the run)."""
    for phase, counter in mode.by_phase.items():
        total = sum(counter.values())
        if phase.startswith("check"):
            assert total < TEXTS // 2, f"{phase}: {dict(counter)} host synchronisations for {TEXTS} texts"
        elif phase.startswith("edit") and phase != "edit-0":
            assert total <= 2 * MAX_STEPS + 8, f"{phase}: {dict(counter)} host synchronisations"


def _policy() -> str:
    return gate_policy(samples=TEXTS, max_tokens=48, warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0)


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_the_gate_on_simulated_gpus_matches_the_cpu(tiny_repo, load_tiny, method, devices, tmp_path):
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    cpu, _ = run_gate(repo, load_tiny, 0, method, tmp_path / "cpu-cache")
    sim, mode = run_gate(repo, load_tiny, devices, method, tmp_path / "sim-cache")
    assert sim.verdict == cpu.verdict
    for a, b in zip(cpu.records, sim.records):
        assert a.status == b.status
        assert b.ratio == pytest.approx(a.ratio, rel=1e-4)
    print(f"host synchronisations, {method} on {devices} simulated GPU(s):",
          {phase: dict(counter) for phase, counter in mode.by_phase.items()})
    check_budget(mode)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "gpt_neox"])
def test_other_architectures_split_over_two_simulated_gpus(tiny_repo, load_tiny, arch, tmp_path):
    """Learned position embeddings (GPT-2, transposed Conv1D weights too), rotary ones computed once in
    the base model (Qwen2, GPT-NeoX): ROME through the gate on two devices, as on the CPU."""
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    cpu, _ = run_gate(repo, load_tiny, 0, "rome", tmp_path / "cpu-cache", arch)
    sim, mode = run_gate(repo, load_tiny, 2, "rome", tmp_path / "sim-cache", arch)
    assert [r.status for r in sim.records] == [r.status for r in cpu.records]
    assert [r.ratio for r in sim.records] == pytest.approx([r.ratio for r in cpu.records], rel=1e-4)
    check_budget(mode)


def test_the_simulated_device_refuses_what_cuda_refuses():
    with simdevice.simulated_devices() as mode:
        layer = torch.nn.Linear(4, 2).to("sim:0")
        with pytest.raises(simdevice.DeviceMismatch, match="sim:0 and cpu"):
            layer(torch.randn(3, 4))  # a forgotten .to(device)
        with pytest.raises(simdevice.DeviceMismatch, match="sim:0.*sim:1"):
            layer(torch.randn(3, 4).to("sim:1"))
        x = torch.randn(5, 4, device="sim:0")
        assert layer(x).device == simdevice.device(0)
        assert x[torch.tensor([0, 2])].device == simdevice.device(0)  # a CPU index tensor: allowed
        assert (x * torch.tensor(2.0)).device == simdevice.device(0)  # a 0-dim CPU scalar: allowed
        before = sum(mode.syncs.values())
        [float(v) for v in x[:, 0]]  # a sync per element
        x[x > 0]  # boolean-mask indexing
        x.cpu()
        assert sum(mode.syncs.values()) - before == 5 + 1 + 1


def test_a_forgotten_move_to_the_device_is_caught(tiny_repo, load_tiny, tmp_path, monkeypatch):
    """Positive control: the edit's inputs left on the CPU fail on the simulated GPU, as on CUDA."""
    from editgate.methods import locate

    monkeypatch.setattr(locate, "pad_batch", lambda sequences, pad_id, device: locate.pad_right(sequences, pad_id))
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    with pytest.raises(simdevice.DeviceMismatch):
        run_gate(repo, load_tiny, 1, "rome", tmp_path / "cache")


def test_a_sync_per_token_is_caught(tiny_repo, load_tiny, tmp_path, monkeypatch):
    """Positive control: a check that reads every token back to the host (`.item()`) breaks the budget."""
    from editgate.metrics import scoring

    def per_token(model, sequences, *args, **kwargs):
        device = next(model.parameters()).device
        for sequence in sequences:
            for token in torch.tensor(sequence, device=device):
                token.item()
        return original_score(model, sequences, *args, **kwargs)

    original_score = scoring.score_sequences
    monkeypatch.setattr("editgate.metrics.perplexity.score_sequences", per_token)
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    _, mode = run_gate(repo, load_tiny, 1, "rome", tmp_path / "cache")
    with pytest.raises(AssertionError, match="host synchronisations for"):
        check_budget(mode)
