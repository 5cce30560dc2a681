"""Every method's hyperparameters: what a manifest or editgate.yaml may set, with its type and range.

Declared apart from the methods (which need torch) so that `editgate validate` checks a repository's
hyperparameters without loading torch; each method's class names its dataclass as `HParams`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from editgate.limits import MAX_BATCH_EDITS, MAX_LAYER, MAX_STEPS, MAX_TEXTS, MAX_TOKENS


def bounded(default: Any, low: float, high: float, *, layer: bool = False) -> Any:
    """A hyperparameter field with the range validation enforces: manifests in pull requests set these,
    so every count is bounded (10^9 steps would hold the runner for days) and every number finite.
    `layer`: a layer index (or list of them), also checked against the model's depth once it is loaded."""
    return field(default=default, metadata={"range": (low, high), "layer": layer})


def choice(default: str, options: tuple[str, ...]) -> Any:
    """A hyperparameter that takes one of a few named values (validation lists them)."""
    return field(default=default, metadata={"choices": options})


class HParamsBase:
    """Mixin for method hyperparameter dataclasses: typed fields, `None` meaning "scale with the model"."""

    @classmethod
    def ranges(cls) -> dict[str, tuple[float, float]]:
        return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        return {f.name: f.metadata["choices"] for f in dataclasses.fields(cls) if "choices" in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def layer_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("layer")]  # type: ignore[arg-type]

    @classmethod
    def field_types(cls) -> dict[str, tuple[type, ...]]:
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            hint = hints[f.name]
            args = typing.get_args(hint) or (hint,)
            out[f.name] = tuple(typing.get_origin(a) or a for a in args)
        return out

    def updated(self, overrides: dict[str, Any]):
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


@dataclass(frozen=True)
class ValueSettings:
    """How the value offset is optimised (ROME's compute_v / MEMIT's compute_z)."""

    steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    early_stop_nll: float


@dataclass
class ValueHParams(HParamsBase):
    """The hyperparameters ROME and MEMIT share: the value optimisation, the context prefixes the key
    and value are averaged over, and the corpus of the key statistics."""

    v_steps: int = bounded(25, 0, MAX_STEPS)  # Adam steps optimising the value offset at most
    v_lr: float = bounded(0.5, 0, 100)
    v_weight_decay: float = bounded(1e-3, 0, 1e3)
    clamp_norm_factor: float = bounded(4.0, 0, 1e6)  # |delta| <= factor * |original value|
    # keep "<subject> is a" predictions close to the original (essence drift)
    kl_factor: float = bounded(0.0625, 0, 1e6)
    early_stop_nll: float = bounded(0.05, 0, 1e3)  # stop once the target's mean NLL is below this (p ~ 0.95)
    context_templates: int = bounded(10, 1, 100)  # generated prefixes the key and value are averaged over
    context_length: int = bounded(10, 1, 256)
    stats_samples: int = bounded(2000, 1, MAX_TEXTS)  # texts of the statistics corpus for C = E[k k^T]
    stats_max_tokens: int = bounded(256, 1, MAX_TOKENS)

    def value_settings(self) -> ValueSettings:
        return ValueSettings(self.v_steps, self.v_lr, self.v_weight_decay, self.clamp_norm_factor,
                             self.kl_factor, self.early_stop_nll)


# -- ROME, MEMIT, AlphaEdit ------------------------------------------------------------------------


@dataclass
class RomeHParams(ValueHParams):
    # None: about a sixth of the way up, where factual recall peaks in causal traces
    layer: int | None = bounded(None, 0, MAX_LAYER, layer=True)
    # "consistent": k*^T C^-1 k* (editgate's); "published": the bare prompt's key in the denominator, as
    # kmeng01/rome and EasyEdit compute it: the variant that collapses models (README, Editing methods)
    denominator: str = choice("consistent", ("consistent", "published"))


@dataclass
class MemitHParams(ValueHParams):
    layers: list | None = bounded(None, 0, MAX_LAYER, layer=True)  # None: five layers around ROME's
    # consecutive edits of one manifest applied as one update (1: checked one by one)
    batch_size: int = bounded(1, 1, MAX_BATCH_EDITS)
    # lambda, how strongly corpus keys are preserved; None: scaled
    mom2_update_weight: float | None = bounded(None, 0, 1e12)


@dataclass
class AlphaEditHParams(MemitHParams):
    # eigenvalues of C below this span the preserved keys' null space
    nullspace_threshold: float = bounded(2e-2, 0, 1e6)
    l2: float = bounded(10.0, 0, 1e12)  # ridge term of the projected solve


# -- fine-tuning ------------------------------------------------------------------------------------


@dataclass
class FtHParams(HParamsBase):
    layers: list | None = bounded(None, 0, MAX_LAYER, layer=True)  # None: ROME's layer
    # README (Editing methods) says why not the ROME paper's 5e-4
    lr: float = bounded(5e-3, 0, 100)
    steps: int = bounded(25, 0, MAX_STEPS)
    norm_constraint: float = bounded(5e-3, 0, 1e6)  # |W - W0| <= this, element-wise
    early_stop_nll: float = bounded(0.05, 0, 1e3)
    batch_size: int = bounded(1, 1, MAX_BATCH_EDITS)
