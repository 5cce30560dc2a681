"""The GPU path on a CPU: the whole gate on one simulated GPU and on a model split across two
(tests/simdevice.py), for every method, against the same run on the CPU, with a budget on host
synchronisations: a check may synchronise per batch, never per text; an edit per optimisation step,
never per token. Positive controls show that a forgotten `.to(device)` and a per-token `.item()` are
caught."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from editgate import models
from editgate.cli import main
from editgate.gate import Gate
from editgate.methods import get_method, locate
from editgate.validate import load_inputs

import simdevice
from helpers import EDITS_A, EDITS_B, TINY_ROME, gate_policy, yaml_hparams

METHODS = ["rome", "memit", "alphaedit", "ft", "memory"]


def run_gate(repo, load_tiny, devices: int, method: str, cache, arch: str = "llama", dtype: str = "float32"):
    config, policy, edits = load_inputs(repo)
    config = dataclasses.replace(config, method=method, cache_dir=str(cache))  # no statistics from another run
    edits = [dataclasses.replace(edit, method=method) for edit in edits]
    loaded = load_tiny(arch, layers=4, dtype=dtype)
    if devices == 0:
        gate = Gate(config, policy, edits, loaded, log=lambda _m: None)
        return gate.run(), None
    with simdevice.simulated_devices() as mode, statistics_counted(mode):
        loaded.model = loaded.model.to(simdevice.device(0)) if devices == 1 else simdevice.split(loaded.model)
        loaded.device = next(loaded.model.parameters()).device
        gate = Gate(config, policy, edits, loaded, log=lambda _m: None)
        for name, counted in _counted_phases(gate, mode):
            setattr(gate, name, counted)
        result = gate.run()
    return result, mode


PHASES = {"apply": "edit", "measure_check": "check", "checkpoint": "benchmarks"}


@contextlib.contextmanager
def statistics_counted(mode: simdevice.SimulatedDevices):
    """The key statistics pass (once per model and layer, then cached on disk) counted as its own phase:
    it synchronises per batch of corpus texts, inside transformers' attention-mask preparation."""
    with mock.patch.object(locate, "cached_second_moments",
                           _counted(mode, "statistics", locate.cached_second_moments)):
        yield


def _counted(mode: simdevice.SimulatedDevices, phase: str, function):
    """`function` with the host synchronisations of each call counted under a phase of its own (`edit-3`)."""
    def counted(*args, **kwargs):
        index = sum(1 for key in mode.by_phase if key.startswith(phase))
        with mode.counting(f"{phase}-{index}"):
            return function(*args, **kwargs)
    return counted


def _counted_phases(gate, mode: simdevice.SimulatedDevices):
    """(name, wrapper) for the gate's edit, check and benchmark steps, each call its own phase."""
    for name, phase in PHASES.items():
        yield name, _counted(mode, phase, getattr(gate, name))


TEXTS = 24  # check texts: more than any per-check budget, so a sync per text cannot pass
MAX_STEPS = 25  # the most optimisation steps of any method here (ft's default; ROME's tiny setting is 10)
MAX_TEMPLATES = 10  # context prefixes, generated once per run (MEMIT's default); one read-back each
BENCHMARK_REQUESTS = 500  # builtin:small's docs (200 + 200 + 40 + 60)
# the checkpoint's edit metrics by generation: transformers' generate synchronises once or twice per
# generated token and batch (has every row ended?), and the memory model generates routed rows alone;
# the tier's 7 edit prompts of up to 6 new tokens stay well under this
GENERATION_STEPS = 100


def check_budget(mode: simdevice.SimulatedDevices, label: str = "") -> None:
    """None per text in a check, per request in a benchmark run; none per token in an edit: a few per optimisation
    step and per context prefix. The statistics pass is reported, not budgeted (once, then cached).
    The counts go into the test session's summary (`simdevice.REPORT`)."""
    if label:
        simdevice.REPORT.append(f"{label}: " + ", ".join(
            f"{phase} {sum(counter.values())}" for phase, counter in mode.by_phase.items()))
    for phase, counter in mode.by_phase.items():
        total = sum(counter.values())
        if phase.startswith("check"):
            assert total < TEXTS // 2, f"{phase}: {dict(counter)} host synchronisations for {TEXTS} texts"
        elif phase.startswith("edit"):
            assert total <= 2 * MAX_STEPS + 2 * MAX_TEMPLATES + 8, f"{phase}: {dict(counter)} host synchronisations"
        elif phase.startswith("benchmarks"):  # per batch: 2 (the others), 4 (memory: its routing, too)
            assert total < BENCHMARK_REQUESTS + GENERATION_STEPS, \
                f"{phase}: {dict(counter)} for {BENCHMARK_REQUESTS} requests and the edit prompts' generation"


def _policy() -> str:
    return gate_policy(samples=TEXTS, max_tokens=48, warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0)


@pytest.mark.parametrize("devices", [2])  # one simulated GPU: the CLI tests below
@pytest.mark.parametrize("method", METHODS)
def test_the_gate_on_simulated_gpus_matches_the_cpu(tiny_repo, load_tiny, method, devices, tmp_path):
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    cpu, _ = run_gate(repo, load_tiny, 0, method, tmp_path / "cpu-cache")
    sim, mode = run_gate(repo, load_tiny, devices, method, tmp_path / "sim-cache")
    assert sim.verdict == cpu.verdict
    for a, b in zip(cpu.records, sim.records):
        assert a.status == b.status
        assert b.ratio == pytest.approx(a.ratio, rel=1e-4)
    check_budget(mode, f"{method}, gate, {devices} simulated GPU(s)")


@pytest.mark.parametrize(("arch", "method"), [("gpt2", "rome"), ("gpt2", "memit"), ("qwen2", "rome"),
                                            ("gpt_neox", "rome")])
def test_other_architectures_in_bfloat16_split_over_two_simulated_gpus(tiny_repo, load_tiny, arch, method,
                                                                      tmp_path):
    """Learned position embeddings (GPT-2, transposed Conv1D weights too), rotary ones computed once in
    the base model (Qwen2, GPT-NeoX), in bfloat16 on two devices as on the CPU; the prefix cache holds
    in bfloat16 (checks run from the edited block, GPT-2 included)."""
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A}, policy=_policy())
    cpu, _ = run_gate(repo, load_tiny, 0, method, tmp_path / "cpu-cache", arch, "bfloat16")
    sim, mode = run_gate(repo, load_tiny, 2, method, tmp_path / "sim-cache", arch, "bfloat16")
    assert [r.status for r in sim.records] == [r.status for r in cpu.records]
    assert [r.ratio for r in sim.records] == pytest.approx([r.ratio for r in cpu.records], rel=TOLERANCE)
    lowest = 1 if method == "rome" else 0  # ROME edits block 1 of 4; MEMIT blocks 0-2
    assert [r.check.from_layer for r in sim.records] == [lowest] * len(sim.records)
    check_budget(mode, f"{method}, gate, {arch}, bfloat16, 2 simulated GPUs")


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


# --- the CLI on simulated GPUs: `device: cuda` and `device: multi` ------------------------------------

# Checks come every two edits. The first edit, an overdriven ROME edit (as in tests/test_collapse.py) of
# the briefly trained tiny model (damage raises its perplexity; a random model's moves by chance), fails
# the first check, so the gate bisects the two edits that check covers, and --confirm undoes every edit,
# the method's own too, and re-runs without the culprit. The benchmark suite runs at the end.
OVERDRIVEN = """\
edits:
  - id: overdriven
    prompt: "{} was founded by"
    subject: Microsoft
    target: Steve Jobs
    method: rome
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0, kl_factor: 0}
"""
CLI_POLICY = f"""\
perplexity:
  corpus: builtin:wiki
  samples: {TEXTS}
  max_tokens: 48
  check_every: 2
  warn_ratio: 1.0
  fail_ratio: 1.0000001
  collapse_ratio: 1000000.0
benchmarks:
  suite: builtin:small
  run_at: end
edits:
  min_efficacy: 0.0
  min_generalization: 0.0
  min_locality: 0.0
"""

FIGURES = ("ratio", "perplexity", "status", "found_by_bisection", "metrics")


@pytest.fixture
def simulated_gpus(monkeypatch):
    """editgate's GPU seam on two simulated devices; host synchronisations counted per edit, check and
    benchmark run of the gate the CLI builds."""
    with simdevice.simulated_devices() as mode, statistics_counted(mode):
        monkeypatch.setattr(models, "GPUS", simdevice.SimulatedGpus())
        original_init = Gate.__init__

        def counting_init(gate, *args, **kwargs):
            original_init(gate, *args, **kwargs)
            for name, counted in _counted_phases(gate, mode):
                setattr(gate, name, counted)

        monkeypatch.setattr(Gate, "__init__", counting_init)
        yield mode


def run_cli_on(device: str, repo: Path, out: Path, mode: simdevice.SimulatedDevices, *extra: str) -> dict:
    mode.by_phase.clear()
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(out), "--device", device,
                                       "--dtype", "auto", "--confirm", "--quiet", *extra])
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert result.exit_code == document["exit_code"] and result.exit_code in (0, 1), (result.output, document["error"])
    return document


@pytest.mark.parametrize("method", METHODS)
def test_the_cli_on_two_simulated_gpus_matches_one(tiny_repo, method, simulated_gpus, tmp_path):
    """`device: multi` gives the verdict and figures of `device: cuda` (bfloat16 on both, the GPU default):
    every check, edit metric, benchmark, the bisection, the confirmation and the edit pack."""
    repo = tiny_repo(manifests={"edits/a.yaml": EDITS_A, "edits/b.yaml": EDITS_B, "edits/0.yaml": OVERDRIVEN},
                     policy=CLI_POLICY, trained=True)
    set_method(repo, method)
    writes_weights = get_method(method).writes_weights  # or a saved pack would lack the edits
    def pack(name: str) -> list[str]:
        return ["--save-delta", str(tmp_path / name)] if writes_weights else []

    one = run_cli_on("cuda", repo, tmp_path / "one", simulated_gpus, *pack("one.pack"))
    check_budget(simulated_gpus, f"{method}, CLI, device: cuda")
    two = run_cli_on("multi", repo, tmp_path / "two", simulated_gpus, *pack("two.pack"))
    check_budget(simulated_gpus, f"{method}, CLI, device: multi")

    assert one["environment"]["devices"] == ["sim:0"] and one["environment"]["dtype"] == "bfloat16"
    assert two["environment"]["devices"] == ["sim:0", "sim:1"]
    assert two["verdict"] == one["verdict"] and two["culprit"] == one["culprit"]
    for a, b in zip(one["edits"], two["edits"], strict=True):
        assert_same_figures({k: a[k] for k in FIGURES}, {k: b[k] for k in FIGURES}, a["id"])
    assert_same_figures(one["benchmarks"], two["benchmarks"], "benchmarks")
    assert two["benchmarks"]["baseline"] and two["benchmarks"]["checkpoints"], "the benchmark suite ran"
    assert_same_figures(one["confirmation"], two["confirmation"], "confirmation")
    assert two["verdict"] == "failed" and two["culprit"]["id"] == "overdriven"
    assert two["edits"][0]["found_by_bisection"] and two["confirmation"]["without"] == "overdriven"
    if writes_weights:
        first, second = load_file(tmp_path / "one.pack"), load_file(tmp_path / "two.pack")
        assert first.keys() == second.keys() and first
        assert all(torch.equal(first[k], second[k]) for k in first)
        applied = CliRunner().invoke(main, ["apply-delta", "--model", str(one["environment"]["model"]), "--delta",
                                            str(tmp_path / "two.pack"), "--out", str(tmp_path / "edited")])
        assert applied.exit_code == 0, applied.output


TOLERANCE = 1e-6  # relative: both runs use the CPU's kernels, so the figures agree far closer than this


def assert_same_figures(a, b, where: str) -> None:
    """Equal structure, numbers within TOLERANCE; timings (`seconds`) ignored."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            if key != "seconds":
                assert_same_figures(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_figures(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=TOLERANCE), where
    else:
        assert a == b, where


def set_method(repo: Path, method: str) -> None:
    """The method for every edit without one; MEMIT and AlphaEdit kept as small as ROME (TINY_ROME)."""
    config = repo / "editgate.yaml"
    text = config.read_text(encoding="utf-8").replace("method: rome", f"method: {method}")
    small = yaml_hparams(TINY_ROME)
    text = text.replace("hparams:\n", f"hparams:\n  memit: {small}\n  alphaedit: {small}\n")
    config.write_text(text, encoding="utf-8")
