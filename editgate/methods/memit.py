"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer") and AlphaEdit (Fang et al. 2025).

MEMIT spreads an edit over several consecutive MLP layers. For each edit it optimises the residual
stream z at the subject after the last of them (exactly ROME's value optimisation, since adding to
that layer's MLP output adds to its residual), then walks the layers upwards: at layer l the
remaining residual gap (z - current residual) is divided by the number of layers left, and the
least-squares update that writes it for the edits' keys K while preserving the corpus keys solves

    dW = R K^T (lambda C + K K^T)^-1          (C = E[k k^T], lambda = mom2_update_weight)

The update writes s/(1+s) of the residual for a key k, with s = k^T (lambda C)^-1 k, which is about
(key width)/lambda for a typical key since E[k^T C^-1 k] = key width. MEMIT's lambda 15,000 was set
for GPT-J's 16,384-wide keys (s about 1); on a 1,536-wide model the same lambda writes a tenth of
that. The default therefore scales lambda with the key width: 15,000 x width / 16,384.

AlphaEdit replaces the preservation term by a projection P onto the null space of C (directions the
corpus keys do not use), so the update cannot disturb preserved knowledge, and remembers the keys of
earlier edits in the sequence so later edits leave them alone:

    dW = R K^T P (P (K K^T + K_prev K_prev^T) + l2 I)^-1
"""

from __future__ import annotations

import time
import torch

from editgate.architecture import mlp_out, num_layers
from editgate.manifests import Edit
from editgate.methods.base import AppliedEdit, EditMethod
from editgate.methods.hparams import AlphaEditHParams, MemitHParams
from editgate.methods.locate import (context_templates, optimise_value, residual_at_subject,
                                     second_moments, subject_keys)
from editgate.methods.rome import default_layer
from editgate.methods.statistics import cached_tensor


GPTJ_LAMBDA, GPTJ_KEY_WIDTH = 15000.0, 16384  # MEMIT's published setting and the model it was set for


def default_layers(layers: int, span: int = 5) -> list[int]:
    """`span` consecutive layers centred on ROME's layer (MEMIT used 3-8 of GPT-J's 28), all below the
    last block: MEMIT's target residual is written after its top layer and read by the blocks above."""
    centre = default_layer(layers)
    span = max(1, min(span, layers - 1))  # a model shallower than the span edits all but its last block
    first = max(0, min(centre - span // 2, layers - 1 - span))
    return list(range(first, first + span))


class Memit(EditMethod):
    name = "memit"
    description = "least-squares update spread over several MLP layers, many edits at once"
    HParams = MemitHParams
    needs_a_block_above = True

    def default_hparams(self) -> MemitHParams:
        return self.with_model_defaults(self.HParams())

    def with_model_defaults(self, hp: MemitHParams) -> MemitHParams:
        """Fill what scales with the model: the layers (its depth) and lambda (its key width)."""
        layers = hp.layers or default_layers(num_layers(self.model))
        weight = hp.mom2_update_weight
        if weight is None:
            target = mlp_out(self.model, layers[0])
            key_width = target.as_out_in(target.weight).shape[1]
            weight = GPTJ_LAMBDA * key_width / GPTJ_KEY_WIDTH
        return hp.updated({"layers": layers, "mom2_update_weight": weight})

    def prepare(self, hparams: MemitHParams) -> None:
        hp = self.with_model_defaults(hparams)
        second_moments(self, sorted(hp.layers), hp.stats_samples, hp.stats_max_tokens)
        context_templates(self, hp.context_templates, hp.context_length)

    def apply(self, edits: list[Edit], hparams: MemitHParams) -> AppliedEdit:
        start = time.perf_counter()
        hp = self.with_model_defaults(hparams)
        layers = sorted(hp.layers)
        targets = {layer: mlp_out(self.model, layer) for layer in layers}  # raises before any change
        moments = second_moments(self, layers, hp.stats_samples, hp.stats_max_tokens)
        templates = context_templates(self, hp.context_templates, hp.context_length)
        top = targets[layers[-1]]
        deltas, traces = zip(*(optimise_value(self.model, self.tokenizer, top, e, templates, hp.value_settings())
                               for e in edits))
        goal = residual_at_subject(self.model, self.tokenizer, top.layer, edits, templates) + torch.stack(deltas)
        originals = {t.weight_name: t.weight.detach().clone() for t in targets.values()}
        applied = AppliedEdit(self.name, [e.id for e in edits], originals)
        norms = {}
        for i, layer in enumerate(layers):
            target = targets[layer]
            keys = subject_keys(self.model, self.tokenizer, [target], edits, templates)[layer].double()  # [n, in]
            current = residual_at_subject(self.model, self.tokenizer, top.layer, edits, templates)
            residual = ((goal - current) / (len(layers) - i)).double()  # [n, out]
            update = self.solve(layer, keys, residual, moments[layer].double(), hp, applied)  # [out, in]
            weight = target.weight
            with torch.no_grad():
                stored = update.T if target.transposed else update
                weight.add_(stored.to(weight.device, weight.dtype))
            norms[layer] = float(update.norm() / target.as_out_in(originals[target.weight_name]).float().norm())
        applied.info = {"layers": layers, "relative_update_norm": norms, "seconds": time.perf_counter() - start,
                        "v_steps": [t["v_steps"] for t in traces], "target_nll": [t["target_nll"] for t in traces]}
        return applied

    def solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, moment: torch.Tensor,
              hp: MemitHParams, applied: AppliedEdit) -> torch.Tensor:
        """MEMIT's update for one layer: R^T K (lambda C + K^T K)^-1, as [out, in] float32."""
        system = hp.mom2_update_weight * moment + keys.T @ keys
        return (residual.T @ torch.linalg.solve(system, keys.T).T).float()


class AlphaEdit(Memit):
    name = "alphaedit"
    description = "MEMIT with the update projected onto the null space of preserved knowledge's keys"
    HParams = AlphaEditHParams

    def __init__(self, model, tokenizer, context):
        super().__init__(model, tokenizer, context)
        self.previous_keys: dict[int, torch.Tensor] = {}  # layer -> sum of K K^T over earlier edits

    def projection(self, layer: int, moment: torch.Tensor, hp: AlphaEditHParams) -> torch.Tensor:
        """P = U0 U0^T over C's eigenvectors with eigenvalue below the threshold; cached per layer."""
        ctx = self.context
        name = f"nullspace-{layer}-{hp.stats_samples}x{hp.stats_max_tokens}-{hp.nullspace_threshold:g}"
        if name not in ctx.memo:
            def build() -> torch.Tensor:
                values, vectors = torch.linalg.eigh(moment.double())
                null = vectors[:, values < hp.nullspace_threshold]
                return (null @ null.T).float()
            ctx.memo[name] = cached_tensor(ctx.cache_dir, ctx.model_fingerprint, ctx.stats_corpus_name, name, build,
                                           log=ctx.log)
            kept = int(torch.linalg.matrix_rank(ctx.memo[name]))
            ctx.log(f"alphaedit: layer {layer} null space has {kept} of {moment.shape[0]} dimensions")
        return ctx.memo[name].double()

    def solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, moment: torch.Tensor,
              hp: AlphaEditHParams, applied: AppliedEdit) -> torch.Tensor:
        p = self.projection(layer, moment, hp)
        dim = keys.shape[1]
        previous = self.previous_keys.get(layer, torch.zeros(dim, dim, dtype=torch.float64))
        system = p @ (keys.T @ keys + previous) + hp.l2 * torch.eye(dim, dtype=torch.float64)
        update_in_out = torch.linalg.solve(system, p @ keys.T @ residual)  # [in, out]
        self._remember(layer, previous, keys, applied)
        return update_in_out.T.float()

    def _remember(self, layer: int, previous: torch.Tensor, keys: torch.Tensor, applied: AppliedEdit) -> None:
        """Add this edit's keys to the preserved set; undoing the edit puts the old set back exactly."""
        self.previous_keys[layer] = previous + keys.T @ keys
        applied.on_undo.append(lambda: self.previous_keys.__setitem__(layer, previous))
