"""Find the modules editing methods need, from the model's structure rather than a per-checkpoint table.

Every decoder-only transformer in transformers keeps its blocks in one `nn.ModuleList` with
`num_hidden_layers` entries, and each block has an MLP whose last projection maps the intermediate
width back to the hidden width. That projection's input is ROME's "key" and its output the "value".
GPT-2 stores that projection as a `Conv1D` with the weight transposed; everything else uses `nn.Linear`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editgate.errors import RunError


@dataclass(frozen=True)
class MlpOut:
    """The output projection of one block's MLP."""

    layer: int
    module_name: str
    module: nn.Module
    weight_name: str
    transposed: bool  # True for GPT-2's Conv1D: weight is [in, out] instead of [out, in]

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def as_out_in(self, tensor: torch.Tensor) -> torch.Tensor:
        """View a weight-shaped tensor as [out, in] whatever the storage layout."""
        return tensor.T if self.transposed else tensor


def hidden_size(model: nn.Module) -> int:
    config = model.config
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise RunError(f"cannot tell the hidden size of {type(model).__name__}")


def num_layers(model: nn.Module) -> int:
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise RunError(f"cannot tell the number of layers of {type(model).__name__}")


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer blocks (the largest one with num_layers entries)."""
    n = num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise RunError(
        f"{type(model).__name__}: no list of {n} transformer blocks found; "
        "editgate edits decoder-only transformers (GPT-2, Llama, Qwen2, GPT-NeoX, ...)"
    )


def _weight_out_in(module: nn.Module) -> tuple[int, int, bool] | None:
    """(out, in, transposed) for a Linear or GPT-2 Conv1D, None for anything else."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        rows, cols = module.weight.shape
        return cols, rows, True
    return None


def mlp_out(model: nn.Module, layer: int) -> MlpOut:
    """The MLP output projection of block `layer`: the projection from a wider width down to hidden."""
    blocks_name, blocks = block_list(model)
    if not 0 <= layer < len(blocks):
        raise RunError(f"layer {layer} is out of range: the model has {len(blocks)} layers (0-{len(blocks) - 1})")
    hidden = hidden_size(model)
    block = blocks[layer]
    candidates = []
    for name, module in block.named_modules():
        shape = _weight_out_in(module)
        if shape and shape[0] == hidden and shape[1] > hidden and _is_in_mlp(name):
            candidates.append((name, module, shape[2]))
    if len(candidates) != 1:
        found = ", ".join(n for n, _, _ in candidates) or "none"
        raise RunError(
            f"{type(model).__name__}: cannot identify the MLP output projection of layer {layer} "
            f"(candidates: {found}); this architecture is not supported by parametric methods"
        )
    name, module, transposed = candidates[0]
    full = f"{blocks_name}.{layer}.{name}"
    return MlpOut(layer, full, module, f"{full}.weight", transposed)


def _is_in_mlp(name: str) -> bool:
    """Attention output projections map hidden->hidden, so the width test already excludes them; the
    name test keeps mixture-of-experts routers and other exotic projections out."""
    first = name.split(".")[0].lower()
    return "mlp" in first or "ffn" in first or "feed_forward" in first or first == "ff"
