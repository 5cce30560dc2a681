"""Editing methods behind one interface, and the registry the CLI and validation read.

A method takes the model, a batch of edits and its hyperparameters, changes the model in place and
returns an `AppliedEdit` recording exactly what it changed, so the gate can undo, diff or export it.

The registry names each method's hyperparameters (torch-free, in `hparams.py` and the memory
method's own `hparams.py`) and where its implementation lives; an implementation imports torch, so it
is imported only when a model is edited: `editgate validate` checks every hyperparameter without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from typing import TYPE_CHECKING, Any

from editgate.limits import MAX_LAYERS_LISTED
from editgate.methods.hparams import AlphaEditHParams, FtHParams, HParamsBase, MemitHParams, RomeHParams
from editgate.methods.memory.hparams import MemoryHParams

if TYPE_CHECKING:
    from editgate.methods.base import AppliedEdit, EditMethod

# name -> (its hyperparameters, "module:class" of its implementation)
_REGISTRY: dict[str, tuple[type[HParamsBase], str]] = {
    "rome": (RomeHParams, "editgate.methods.rome:Rome"),
    "memit": (MemitHParams, "editgate.methods.memit:Memit"),
    "alphaedit": (AlphaEditHParams, "editgate.methods.memit:AlphaEdit"),
    "ft": (FtHParams, "editgate.methods.ft:FineTune"),
    "memory": (MemoryHParams, "editgate.methods.memory:MemoryEditor"),
}
HPARAMS: dict[str, type[HParamsBase]] = {name: hparams for name, (hparams, _) in _REGISTRY.items()}

__all__ = ["AppliedEdit", "EditMethod", "HPARAMS", "METHODS", "method_names", "get_method", "check_hparams",
           "layer_problems"]


def __getattr__(name: str) -> Any:
    """`METHODS` (every implementation), `AppliedEdit` and `EditMethod`, imported on first use."""
    if name == "METHODS":
        return {method: get_method(method) for method in _REGISTRY}
    if name in ("AppliedEdit", "EditMethod"):
        return getattr(importlib.import_module("editgate.methods.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> type[EditMethod]:
    """The implementation of method `name` (its module is imported now: it needs torch)."""
    try:
        module, cls = _REGISTRY[name][1].split(":")
    except KeyError:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(method_names())}") from None
    return getattr(importlib.import_module(module), cls)


def check_hparams(method: str, hparams: dict[str, Any]) -> list[str]:
    """Messages for unknown or mistyped hyperparameters of `method` (empty when all is well)."""
    if method not in HPARAMS:
        return []  # the unknown method itself is reported by the caller
    fields = {f.name: f for f in dataclasses.fields(HPARAMS[method])}
    problems = []
    for key, value in hparams.items():
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"unknown hyperparameter {key!r} for method {method!r}{suffix}")
            continue
        expected = HPARAMS[method].field_types()[key]
        if not _matches(value, expected):
            problems.append(
                f"hyperparameter {key!r} of method {method!r} must be {_describe(expected)}, "
                f"not {type(value).__name__} {value!r}"
            )
            continue
        problems.extend(_range_problems(method, key, value, HPARAMS[method].ranges().get(key)))
        options = HPARAMS[method].choices().get(key)
        if options is not None and value not in options:
            problems.append(f"hyperparameter {key!r} of method {method!r} must be one of "
                            f"{', '.join(repr(o) for o in options)}, not {value!r}")
    value_check = getattr(HPARAMS[method], "value_problems", None)
    if not problems and value_check is not None:  # values only once every key and type is right
        problems.extend(value_check(hparams))
    return problems


def _range_problems(method: str, key: str, value: Any, bounds: tuple[float, float] | None) -> list[str]:
    """Finite numbers within the declared range; a list of layers non-empty, short and in range."""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not 1 <= len(value) <= MAX_LAYERS_LISTED:
        return [f"hyperparameter {key!r} of method {method!r} must list 1 to {MAX_LAYERS_LISTED} values, "
                f"not {len(value)}"]
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            return [f"hyperparameter {key!r} of method {method!r} must be a finite number, not {item}"]
        if bounds is not None and isinstance(item, (int, float)) and not bounds[0] <= item <= bounds[1]:
            return [f"hyperparameter {key!r} of method {method!r} must be from {bounds[0]:g} to {bounds[1]:g}, "
                    f"not {item!r}"]
    return []


def layer_problems(method: str, hparams: Any, depth: int) -> list[str]:
    """Layer indices beyond the loaded model (checked after loading, before the first edit: Python's
    negative indexing would otherwise edit a layer nobody asked for), and the last block for a method
    that needs a block above its edit (there the edit silently changes nothing the prompt's answer sees)."""
    cls = get_method(method)
    top = depth - 2 if cls.needs_a_block_above else depth - 1
    problems = []
    for key in cls.HParams.layer_fields():
        value = getattr(hparams, key)
        for layer in value if isinstance(value, list) else [value]:
            if layer is None or 0 <= layer <= top:
                continue
            if 0 <= layer < depth:
                problems.append(f"hyperparameter {key!r} of method {method!r} is {layer}, the model's last block: "
                                f"{method} writes a value at the subject's last token, which reaches the tokens "
                                f"after it only through the blocks above; use a layer from 0 to {top}")
            else:
                problems.append(f"hyperparameter {key!r} of method {method!r} is {layer}, but the model has "
                                f"{depth} layers (0 to {depth - 1})")
    return problems


def _matches(value: Any, expected: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in expected:
        return False
    if isinstance(value, int) and float in expected:
        return True
    if isinstance(value, list) and list in expected:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, expected)


def _describe(expected: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list of integers", type(None): "null (automatic)"}
    return " or ".join(names.get(t, t.__name__) for t in expected)
