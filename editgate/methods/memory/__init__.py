"""Memory-based editing: SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") with a
frozen in-context counterfactual model.

Edits never touch the weights: they are stored in an explicit memory, a similarity scope classifier
routes each input that falls under a stored edit to the base model with that edit stated in its
context, and every other input goes to the base model unchanged.

One module per concept (each imports only those above it):
- `hparams`: MemoryHParams, their value checks, and the shared helpers (fact_of, key_fields, text_hash).
- `encoders`: the embeddings routing compares (Encoder; MiniLmEncoder, BaseModelEncoder).
- `store`: the memory and its router (EditMemory, MemoryEntry, Route), its file format, and the
  threshold's calibration (calibrate_threshold).
- `model`: MemoryModel, the base model behind the router, which the gate evaluates.
- `figures`: routing_figures, how the router routes the texts a report shows.
- `method`: MemoryEditor, the EditMethod tying them together.

The names below load on first use: `hparams` imports no torch, and the method registry reads it
(`editgate validate` checks hyperparameters without loading torch); the rest need torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "hparams": ("DEFAULT_THRESHOLDS", "ENCODERS", "KEY_FIELDS", "MemoryHParams", "check_values", "fact_of",
                "key_fields", "text_hash", "value_problems"),
    "encoders": ("MINILM_PACKAGE", "MINILM_PIP", "BaseModelEncoder", "Encoder", "MiniLmEncoder", "minilm_dir"),
    "store": ("FORMAT", "FORMAT_VERSION", "EditMemory", "MemoryEntry", "Route", "calibrate_threshold",
              "edit_from_json", "edit_to_json", "keys_of"),
    "model": ("MemoryModel",),
    "figures": ("routing_figures",),
    "method": ("MemoryEditor", "middle_layer"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """A public name of the method, from the module that owns it (imported now)."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
