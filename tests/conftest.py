"""Shared fixtures: the embedded model's tokenizer, tiny random models of four architectures saved as
local Hugging Face directories, tiny gate repositories pointing at them, and a git work tree with a pull
request run as GitHub Actions runs it (the CI tests). Plain helpers and constants are in tests/helpers.py.

Tiny models are real transformers models built from a config (random init, fixed seed): they load
through `editgate.models.load_model` exactly like a user's local checkpoint and really get edited.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import (
    BASE_MANIFEST,
    EDITS_A,
    EDITS_B,
    HEAD_MANIFEST,
    NEW_MANIFEST,
    build_tiny_model,
    config_text,
    gate_policy,
    git,
    read_json,
    run_cli,
    write,
    write_repo,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tiny models are a few small matmuls per op: one thread is as fast as two on an idle machine and an
# order of magnitude faster on a busy one (OpenMP threads spinning against other processes). Tests on
# the real model raise it again (see `all_threads`).
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    """The simulated-GPU tier's host synchronisations per edit, check and benchmark run (tests/simdevice.py)."""
    import sys

    simdevice = sys.modules.get("simdevice")
    if simdevice is not None and simdevice.REPORT:
        terminalreporter.section("host synchronisations on simulated GPUs (per phase)")
        for line in simdevice.REPORT:
            terminalreporter.write_line(line)


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


# --- tiny repositories --------------------------------------------------------------------------


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
        policy_text = policy or gate_policy(warn_ratio=warn_ratio, fail_ratio=fail_ratio,
                                            collapse_ratio=collapse_ratio)
        model_dir = request.getfixturevalue("trained_tiny_dir") if trained else tiny_model_dir(arch, layers)
        return write_repo(tmp_path / name, model_dir,
                          manifests or {"edits/2026-01-01-a.yaml": EDITS_A, "edits/2026-01-02-b.yaml": EDITS_B},
                          policy_text, rome)

    return make


# --- a pull request on GitHub Actions (test_github.py, test_vcs.py, test_export.py) -------------------
# Session-scoped: one CI run shared by the three modules, as when their tests were one module.


@pytest.fixture(scope="session")
def pr_workspace(tmp_path_factory, tiny_model_dir):
    """A git work tree whose gated directory `gated/` has a base commit and a pull-request commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("ci")
    ws = root / "ws"
    gated = ws / "gated"
    write(gated / "editgate.yaml", config_text(tiny_model_dir("llama", 4)))
    write(gated / "policies" / "default.yaml", gate_policy(warn_ratio=1.001, fail_ratio=1.003, collapse_ratio=100.0))
    write(gated / "edits" / "2026-01-01-a.yaml", BASE_MANIFEST)
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "base")
    write(gated / "edits" / "2026-01-01-a.yaml", HEAD_MANIFEST)
    write(gated / "edits" / "2026-02-01-b.yaml", NEW_MANIFEST)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "pull request")
    return root, ws, gated


@pytest.fixture(scope="session")
def ci_run(pr_workspace):
    """`editgate run --base-ref HEAD~1 --save-model --save-delta` as GitHub Actions runs it."""
    root, ws, gated = pr_workspace
    summary, outputs = root / "summary.md", root / "outputs.txt"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs),
           "GITHUB_WORKSPACE": str(ws), "GITHUB_REPOSITORY": "octo/models", "GITHUB_SERVER_URL": "https://github.com"}
    out = root / "out"
    result = run_cli("run", "--repo", str(gated), "--out", str(out), "--base-ref", "HEAD~1",
                     "--save-model", str(root / "edited-model"), "--save-delta", str(root / "edits.safetensors"),
                     env=env)
    return {"root": root, "ws": ws, "gated": gated, "out": out, "result": result, "summary": summary,
            "outputs": outputs, "doc": read_json(out / "report.json")}
