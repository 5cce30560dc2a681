"""Export what a run changed: the whole edited model (`--save-model DIR`) or an edit pack of just the
changed tensors (`--save-delta FILE`), and apply such a pack to the base model again
(`editgate apply-delta`), reproducing the edited weights bit for bit.

An edit pack is a safetensors file. For every parameter any edit wrote it holds
  `delta/<name>`      edited minus base weight (float32 for 16-bit weights), the change itself, which
                      other tools can read, scale or add up;
  `fix/<name>/index`, `fix/<name>/value`  the flat positions (int64) and exact edited values where
                      `base + delta`, rounded back to the weight's dtype, is not the edited value:
                      in floating point W0 + (W1 - W0) is not always W1;
and metadata `editgate` (JSON): the base model's fingerprint and dtype, each parameter's shape,
dtype and the sha256 of its base and edited bytes, the edits, editgate's version. Applying checks the
base tensors' hashes first and the results' hashes last, so a pack never silently lands on another
model or produces different weights.

Both outputs are written atomically: into a temporary sibling, then renamed into place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

import editgate
from editgate.atomicfile import atomic_path
from editgate.errors import InputError, RunError

PACK_FORMAT = "editgate-delta/1"
MODEL_MARKER = "editgate-model.json"
_DELTA, _FIX_INDEX, _FIX_VALUE = "delta/{}", "fix/{}/index", "fix/{}/value"


# --- what the edits wrote ---------------------------------------------------------------------------


def written_parameters(applied: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Each parameter any applied edit wrote, with its value before the first edit that wrote it.

    `applied` is the gate's list of AppliedEdit, in order; a later edit's `originals` already hold
    earlier edits' changes, so the first copy of each parameter is the base weight.
    """
    base: dict[str, torch.Tensor] = {}
    for item in applied:
        for name, original in item.originals.items():
            base.setdefault(name, original)
    return base


def _bytes_digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise bitwise equality (NaN == NaN with the same payload, 0.0 != -0.0)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.contiguous().view(width) == b.contiguous().view(width)


def _delta_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _apply_delta(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (base.to(delta.dtype) + delta).to(base.dtype)


# --- the edit pack ----------------------------------------------------------------------------------


def pack_tensors(model: torch.nn.Module, base: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The pack's tensors and per-parameter metadata for the model's current values against `base`."""
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, original in base.items():
        edited = params[name].detach().cpu().contiguous()
        original = original.detach().cpu().contiguous()
        if not edited.is_floating_point():
            raise RunError(f"parameter {name} is {edited.dtype}; edit packs hold floating-point weights only")
        delta = edited.to(_delta_dtype(edited.dtype)) - original.to(_delta_dtype(edited.dtype))
        wrong = ~_bits_equal(_apply_delta(original, delta), edited)
        tensors[_DELTA.format(name)] = delta
        if bool(wrong.any()):
            index = wrong.reshape(-1).nonzero().reshape(-1).to(torch.int64)
            tensors[_FIX_INDEX.format(name)] = index
            tensors[_FIX_VALUE.format(name)] = edited.reshape(-1)[index].contiguous()
        meta[name] = {"shape": list(edited.shape), "dtype": str(edited.dtype).removeprefix("torch."),
                      "base_sha256": _bytes_digest(original), "edited_sha256": _bytes_digest(edited),
                      "changed": int((~_bits_equal(original, edited)).sum()),
                      "fixups": int(wrong.sum())}
    return tensors, meta


def save_delta(path: Path, model: torch.nn.Module, applied: Iterable[Any], *, fingerprint: str,
               model_spec: str, dtype: torch.dtype, edit_ids: list[str]) -> dict[str, Any]:
    """Write the edit pack atomically; returns its metadata."""
    from safetensors.torch import save_file

    applied = list(applied)
    tensors, params = pack_tensors(model, written_parameters(applied))
    metadata = {
        "format": PACK_FORMAT, "editgate": editgate.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": model_spec, "base_fingerprint": fingerprint,
        "dtype": str(dtype).removeprefix("torch."), "edits": edit_ids,
        "methods": [{"method": a.method, "edits": list(a.edit_ids)} for a in applied],
        "parameters": params,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"editgate": json.dumps(metadata, sort_keys=True)})
    return metadata


def read_pack(path: Path, shown: str = "--delta") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of an edit pack; InputError (naming it after `shown`, the option that
    named it) when the file is not one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    label = f"{shown} {path}" if shown else str(path)
    if not path.is_file():
        raise InputError(f"{label}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("editgate")
        metadata = json.loads(raw) if raw else None
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for foreign files
        raise InputError(f"{label}: not a safetensors file ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != PACK_FORMAT:
        raise InputError(f"{label}: not an editgate edit pack (no '{PACK_FORMAT}' metadata)")
    return tensors, metadata


def pack_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The edited value of every parameter an edit pack changes, computed over `model`'s weights
    (which it does not write).

    Raises InputError when the model is not the pack's base (names, shapes, dtypes or base bytes
    differ) and RunError when a result does not hash to the edited weights (a corrupted pack).
    """
    params = dict(model.named_parameters())
    plan = metadata["parameters"]
    problems = []
    for name, info in plan.items():
        param = params.get(name)
        if param is None:
            problems.append(f"the model has no parameter {name}")
        elif list(param.shape) != info["shape"] or str(param.dtype).removeprefix("torch.") != info["dtype"]:
            problems.append(f"{name} is {str(param.dtype).removeprefix('torch.')} {list(param.shape)}, "
                            f"the pack's base {info['dtype']} {info['shape']}")
        elif _bytes_digest(param) != info["base_sha256"]:
            problems.append(f"{name} differs from the pack's base weights")
    if problems:
        raise InputError([f"the edit pack was made for {metadata.get('base_model')} "
                          f"(fingerprint {metadata.get('base_fingerprint')}): {p}" for p in problems])
    edited_weights = {}
    for name, info in plan.items():
        param = params[name]
        edited = _apply_delta(param.detach().cpu(), tensors[_DELTA.format(name)]).reshape(-1).clone()
        if _FIX_INDEX.format(name) in tensors:
            edited[tensors[_FIX_INDEX.format(name)]] = tensors[_FIX_VALUE.format(name)].to(edited.dtype)
        edited = edited.reshape(param.shape)
        if _bytes_digest(edited) != info["edited_sha256"]:
            raise RunError(f"applying the pack to {name} did not reproduce the edited weights; the pack is damaged")
        edited_weights[name] = edited
    return edited_weights


def apply_pack(model: torch.nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> list[str]:
    """Apply an edit pack to the base model in place (see `pack_weights`); returns the parameters it wrote."""
    edited = pack_weights(model, tensors, metadata)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in edited.items():
            params[name].copy_(value.to(params[name].device))
    return list(edited)


# --- whole models -----------------------------------------------------------------------------------


def saved_weights(directory: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of a model saved in `directory` (safetensors) whose bytes differ from `model`'s:
    the edits, to write into a loaded base model. InputError when the saved model is not of its shape."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise InputError(f"{directory}: holds no safetensors weights")
    params = dict(model.named_parameters())
    changed: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name not in params:
                    continue  # a tied weight saved under its other name, or a buffer
                saved = handle.get_tensor(name)
                base = params[name].detach().cpu()
                if saved.shape != base.shape or saved.dtype != base.dtype:
                    raise InputError(f"{directory}: {name} is {saved.dtype} {list(saved.shape)} there, "
                                     f"{base.dtype} {list(base.shape)} in the base model; not saved from it")
                if not bool(_bits_equal(saved, base).all()):
                    changed[name] = saved
    return changed


def check_model_target(path: Path) -> None:
    """Refuse, before any work, to replace a directory that editgate did not write (or a file)."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        raise InputError(f"--save-model {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / MODEL_MARKER).is_file():
        raise InputError(f"--save-model {path}: the directory exists and was not written by editgate; "
                         "choose a new directory or empty it")


def save_model(path: Path, model: torch.nn.Module, tokenizer: Any, info: dict[str, Any]) -> None:
    """The model (safetensors), tokenizer and config into `path`, atomically: written into a temporary
    sibling directory, then swapped in (a previous editgate model there is replaced)."""
    path = Path(path)
    check_model_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    old = None
    try:
        if getattr(model, "hf_quantizer", None) is not None:  # a GGUF-loaded model is plain weights by now
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MODEL_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n",
                                            encoding="utf-8")
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
