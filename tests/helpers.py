"""Plain helpers and constants the tests share: paths, tiny-model settings, policy and manifest texts, file
writers, the in-process CLI and git. Fixtures and hooks stay in conftest.py (which imports from here).

Test modules import these with `from helpers import ...` (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gpt_neox")
HIDDEN, INTERMEDIATE, HEADS = 64, 256, 4

# ROME kept small for tiny models: a few statistics texts, few optimisation steps, short templates.
TINY_ROME = {"stats_samples": 50, "v_steps": 10, "context_templates": 2, "context_length": 5}


def editing_method(name: str, loaded, cache_dir: Path, **session):
    """Method `name` on a loaded model, opened as every caller opens one: through an EditSession of its
    own (quiet; `session`: more EditSession arguments, e.g. `stats_texts`)."""
    from editgate import EditSession

    return EditSession(loaded, cache_dir=cache_dir, log=lambda _m: None, **session).method(name)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared reference data (../shared/data) is not available here")
    return path


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


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under root, to prove nothing wrote there."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      path.stat().st_mtime_ns)
    return out


# --- policies, manifests and repositories ---------------------------------------------------------

# The lenient gate policy's perplexity settings: a small, fast check and thresholds a random tiny model
# passes. check_every: 1 is also the policy's default.
LENIENT_PERPLEXITY = {"samples": 8, "max_tokens": 64, "check_every": 1, "warn_ratio": 5.0, "fail_ratio": 10.0,
                      "collapse_ratio": 100.0}


def gate_policy(**perplexity) -> str:
    """A lenient policy for gate tests: the perplexity gate alone (no benchmark suite, no edit-metric
    minimums), with LENIENT_PERPLEXITY's settings overridden or extended by `perplexity`."""
    settings = {**LENIENT_PERPLEXITY, **perplexity}
    lines = ["perplexity:", "  corpus: builtin:wiki", *(f"  {key}: {value}" for key, value in settings.items())]
    return "\n".join(lines) + (
        "\nbenchmarks:\n"
        "  suite: none  # the perplexity gate alone: fast, and no benchmark noise from a random model\n"
        "edits:\n  min_efficacy: 0.0\n  min_generalization: 0.0\n  min_locality: 0.0\n")


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

# one valid edit, as an item of an `edits:` list; format it with an id
GOOD_EDIT = """\
  - id: {id}
    prompt: "{{}} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
"""

# a pull request's manifests (tests/conftest.py `pr_workspace`): the base commit's ...
BASE_MANIFEST = """\
edits:
  - id: eiffel-rome
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    ground_truth: Paris
  - id: kremlin-london
    prompt: "{} is located in the city of"
    subject: The Kremlin
    target: London
"""

# the pull request: the two edits reordered and reformatted, one of them changed, and a new file
HEAD_MANIFEST = """\
# reordered and reformatted; kremlin-london now says Berlin
edits:
  - {id: kremlin-london, prompt: '{} is located in the city of', subject: 'The Kremlin', target: Berlin}
  - id: eiffel-rome
    subject: The Eiffel Tower
    prompt: '{} is located in the city of'
    ground_truth: 'Paris'
    target: "Rome"
"""

NEW_MANIFEST = """\
edits:
  - id: extreme
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0}
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
    The cache is the runner's, not the repository's: see conftest's `_cache_in_tmp`."""
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


def config_text(model_dir: Path) -> str:
    """The editgate.yaml of the CI tests' gated repository (conftest's `pr_workspace`)."""
    return textwrap.dedent(f"""\
        model: {model_dir}
        device: cpu
        dtype: float32
        method: rome
        hparams:
          rome: {yaml_hparams(TINY_ROME)}
        manifests: edits/**/*.yaml
        policy: policies/default.yaml
        threads: 2
        """)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def messages(excinfo: pytest.ExceptionInfo) -> list[str]:
    """The problems of a raised InputError, as text."""
    return [str(p) for p in excinfo.value.problems]


# --- the CLI and git ------------------------------------------------------------------------------


def run_cli(*args: str, env: dict | None = None):
    """`editgate ARGS` in-process; an exception other than SystemExit is raised again."""
    from editgate.cli import main

    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=editgate-tests", "-c", "user.email=tests@example.com",
                           "-c", "commit.gpgsign=false", "-C", str(cwd), *args],
                          capture_output=True, text=True, check=True)
    return proc.stdout
