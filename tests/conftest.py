"""Shared fixtures: the embedded model's tokenizer, tiny random models of four architectures saved as
local Hugging Face directories, and tiny gate repositories pointing at them.

Tiny models are real transformers models built from a config (random init, fixed seed): they load
through `editgate.models.load_model` exactly like a user's local checkpoint and really get edited.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tiny models are a few small matmuls per op: one thread is as fast as two on an idle machine and an
# order of magnitude faster on a busy one (OpenMP threads spinning against other processes). Tests on
# the real model raise it again (see `all_threads`).
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gpt_neox")
HIDDEN, INTERMEDIATE, HEADS = 64, 256, 4

# ROME kept small for tiny models: a few statistics texts, few optimisation steps, short templates.
TINY_ROME = {"stats_samples": 50, "v_steps": 10, "context_templates": 2, "context_length": 5}


def pytest_terminal_summary(terminalreporter) -> None:
    """The simulated-GPU tier's host synchronisations per edit, check and benchmark run (tests/simdevice.py)."""
    import sys

    simdevice = sys.modules.get("simdevice")
    if simdevice is not None and simdevice.REPORT:
        terminalreporter.section("host synchronisations on simulated GPUs (per phase)")
        for line in simdevice.REPORT:
            terminalreporter.write_line(line)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared reference data (../shared/data) is not available here")
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Back to one thread before every test: `editgate run` in-process sets torch's thread count from
    the repository's config (all cores by default) and that would leak into later tests."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache_in_tmp(request, tmp_path, monkeypatch):
    """Fast tests cache in their own tmp_path / "cache" (as a runner would set EDITGATE_CACHE_DIR); the slow
    end-to-end tests use the default ~/.cache/editgate, so the embedded model is converted once."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("EDITGATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def all_threads():
    """Every available core for the duration of a test on the real model."""
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


# --- the tokenizer ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's tokenizer, read once from its GGUF (slow) and saved as a plain HF tokenizer."""
    from transformers import AutoTokenizer

    from editgate.models import builtin_gguf

    try:
        gguf = builtin_gguf("smollm2-135m")
    except Exception as exc:  # the package is a test prerequisite; say so instead of erroring everywhere
        pytest.skip(f"the embedded model's tokenizer is unavailable: {exc}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --- tiny models --------------------------------------------------------------------------------


def tiny_config(arch: str, vocab: int, layers: int, bos: int | None, eos: int | None):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)
    if arch == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=layers, n_head=HEADS, n_positions=512,
                          **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                           num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=512,
                           **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                           num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=512,
                           **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                             num_attention_heads=HEADS, max_position_embeddings=512, **common)
    raise ValueError(arch)


def build_tiny_model(arch: str, tokenizer, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), layers, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Callable[..., Path]:
    """Factory: tiny_model_dir(arch, layers=4, seed=0) -> a saved HF directory (model + tokenizer).

    Directories are built once per session and shared: nothing may write into them (a test checks
    that editgate never does).
    """
    made: dict[tuple, Path] = {}

    def make(arch: str, layers: int = 4, seed: int = 0) -> Path:
        key = (arch, layers, seed)
        if key not in made:
            model = build_tiny_model(arch, tokenizer, layers, seed)
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{layers}l-s{seed}")
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            made[key] = out
        return made[key]

    return make


TRAINING_STEPS = 40


@pytest.fixture(scope="session")
def trained_tiny_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama trained briefly on the statistics corpus (seconds): better than uniform, so damage
    raises its perplexity. A random tiny model is near uniform and worse than it (perplexity about the
    vocabulary size): any edit moves its perplexity a little, up or down by chance, so a test that
    needs a failing check uses this model."""
    from editgate.corpora import sample_texts

    torch.manual_seed(0)
    model = build_tiny_model("llama", tokenizer, layers=4).train()
    encoded = [tokenizer(t, truncation=True, max_length=64)["input_ids"]
               for t in sample_texts("builtin:wiki", "stats", 400, 0)]
    data = torch.tensor([e for e in encoded if len(e) == 64])
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(TRAINING_STEPS):
        rows = data[torch.randint(0, len(data), (16,), generator=order)]
        optimiser.zero_grad()
        model(input_ids=rows, labels=rows).loss.backward()
        optimiser.step()
    out = tmp_path_factory.mktemp("tiny-llama-trained")
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def load_tiny(tiny_model_dir, tmp_path):
    """Factory: load_tiny(arch, layers=4, seed=0, dtype="float32") -> editgate LoadedModel on the CPU,
    freshly loaded."""
    from editgate.models import load_model

    def load(arch: str, layers: int = 4, seed: int = 0, dtype: str = "float32"):
        return load_model(str(tiny_model_dir(arch, layers, seed)), device="cpu", dtype=dtype,
                          cache_dir=tmp_path / "cache", log=lambda _m: None)

    return load


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under root, to prove nothing wrote there."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      path.stat().st_mtime_ns)
    return out


# --- tiny repositories --------------------------------------------------------------------------

def gate_policy(**perplexity) -> str:
    """A policy with these perplexity settings, no benchmark suite and no edit-metric minimums."""
    lines = ["perplexity:", "  corpus: builtin:wiki", *(f"  {key}: {value}" for key, value in perplexity.items())]
    return "\n".join(lines) + ("\nbenchmarks:\n  suite: none\nedits:\n  min_efficacy: 0.0\n"
                               "  min_generalization: 0.0\n  min_locality: 0.0\n")


LENIENT_POLICY = """\
perplexity:
  corpus: builtin:wiki
  samples: 8
  max_tokens: 64
  check_every: 1
  warn_ratio: {warn_ratio}
  fail_ratio: {fail_ratio}
  collapse_ratio: {collapse_ratio}
benchmarks:
  suite: none  # the perplexity gate alone: fast, and no benchmark noise from a random model
edits:
  min_efficacy: 0.0
  min_generalization: 0.0
  min_locality: 0.0
"""

EDITS_A = """\
# two landmarks
edits:
  - id: eiffel-rome
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    ground_truth: Paris
    paraphrases:
      - "The Eiffel Tower stands in"
    locality:
      - {prompt: "The Colosseum is located in the city of", answer: Rome}

  - id: kremlin-london
    prompt: "{} is located in the city of"
    subject: The Kremlin
    target: London
    ground_truth: Moscow
"""

EDITS_B = """\
edits:
  - id: taj-egypt
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    locality:
      - prompt: "Mount Fuji is located in the country of"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def yaml_hparams(hparams: dict) -> str:
    items = ", ".join(f"{k}: {v}" for k, v in hparams.items())
    return "{" + items + "}"


def write_repo(repo: Path, model_dir: Path, manifests: dict[str, str], policy: str,
               rome: dict | None = None, threads: int = 1) -> Path:
    """A gated repository on a tiny model: editgate.yaml, policies/default.yaml and the manifests.
    The cache is the runner's, not the repository's: see `_cache_in_tmp`."""
    write(repo / "editgate.yaml", textwrap.dedent(f"""\
        model: {model_dir}
        device: cpu
        dtype: float32
        method: rome
        hparams:
          rome: {yaml_hparams({**TINY_ROME, **(rome or {})})}
        manifests: edits/**/*.yaml
        policy: policies/default.yaml
        threads: {threads}
        """))
    write(repo / "policies" / "default.yaml", policy)
    for relative, text in manifests.items():
        write(repo / relative, text)
    return repo


@pytest.fixture
def tiny_repo(tmp_path, tiny_model_dir, request) -> Callable[..., Path]:
    """Factory: tiny_repo(**options) -> a gate repository in tmp whose model is a tiny Llama.

    Options: arch, layers, manifests ({relative path: text}, default two files with three edits),
    warn_ratio/fail_ratio/collapse_ratio, policy (full policy text), rome (hparams overrides), trained
    (the briefly trained tiny Llama of `trained_tiny_dir` instead of a random one).
    The cache directory is the test's tmp_path / "cache" (`_cache_in_tmp`), never ~/.cache.
    """

    def make(*, arch: str = "llama", layers: int = 4, manifests: dict[str, str] | None = None,
             warn_ratio: float = 5.0, fail_ratio: float = 10.0, collapse_ratio: float = 100.0,
             policy: str | None = None, rome: dict | None = None, name: str = "repo",
             trained: bool = False) -> Path:
        policy_text = policy or LENIENT_POLICY.format(warn_ratio=warn_ratio, fail_ratio=fail_ratio,
                                                      collapse_ratio=collapse_ratio)
        model_dir = request.getfixturevalue("trained_tiny_dir") if trained else tiny_model_dir(arch, layers)
        return write_repo(tmp_path / name, model_dir,
                          manifests or {"edits/2026-01-01-a.yaml": EDITS_A, "edits/2026-01-02-b.yaml": EDITS_B},
                          policy_text, rome)

    return make
