"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

An MLP output projection W acts as a key-value memory: the key k is its input at the subject's last
token, the value W k its output. ROME picks
  k* = the key averaged over several context prefixes (so the edit is not tied to one phrasing),
  delta = an offset to the value, optimised so the model then predicts the new target,
and writes the rank-one update  W' = W + delta u^T  with  u = C^-1 k* / (k*^T C^-1 k*),  where
C = E[k k^T] over a text corpus. Then W' k* = W k* + delta exactly, while keys uncorrelated with k*
under C move as little as possible. Using the same averaged k* in u and in its denominator is the
consistency fix the "Fall of ROME" analysis (Gupta et al. 2024) showed prevents single-edit collapse.

`denominator: published` reproduces the update as kmeng01/rome and EasyEdit compute it, u = C^-1 k* /
(k_bare^T C^-1 k*) with k_bare the key of the bare prompt: the variant teams still run, kept so the gate
can be shown to catch the collapses it causes.
"""

from __future__ import annotations

import time
import torch

from editgate.architecture import MlpOut, mlp_out, num_layers
from editgate.manifests import Edit
from editgate.methods.base import AppliedEdit, EditMethod
from editgate.methods.hparams import RomeHParams
from editgate.methods.locate import context_templates, optimise_value, second_moments, subject_keys
from editgate.methods.statistics import cached_tensor


def default_layer(layers: int) -> int:
    """About a sixth of the way up, below the last block (an edit there reaches no later token)."""
    return max(0, min(max(1, round(layers * 0.17)), layers - 2))


class Rome(EditMethod):
    name = "rome"
    description = "rank-one update of one MLP output matrix, solved against cached key statistics"
    HParams = RomeHParams
    needs_a_block_above = True

    def default_hparams(self) -> RomeHParams:
        return RomeHParams(layer=default_layer(num_layers(self.model)))

    def apply(self, edits: list[Edit], hparams: RomeHParams) -> AppliedEdit:
        if hparams.layer is None:
            hparams = hparams.updated({"layer": default_layer(num_layers(self.model))})
        target = mlp_out(self.model, hparams.layer)
        originals = {target.weight_name: target.weight.detach().clone()}
        infos = [self._apply_one(edit, target, hparams) for edit in edits]  # one fact at a time
        return AppliedEdit(self.name, [e.id for e in edits], originals,
                           infos[0] if len(infos) == 1 else {"edits": infos})

    def prepare(self, hparams: RomeHParams) -> None:
        layer = default_layer(num_layers(self.model)) if hparams.layer is None else hparams.layer
        context_templates(self, hparams.context_templates, hparams.context_length)
        self.inverse_moment(layer, hparams)

    def inverse_moment(self, layer: int, hp: RomeHParams) -> torch.Tensor:
        """C^-1 for the layer in float64: every edit at that layer reuses it, so it is memoised per run
        and cached on disk beside the statistics it inverts."""
        ctx = self.context
        name = f"inverse-{layer}-{hp.stats_samples}x{hp.stats_max_tokens}"
        if name not in ctx.memo:
            def build() -> torch.Tensor:
                moment = second_moments(self, [layer], hp.stats_samples, hp.stats_max_tokens)[layer]
                return torch.linalg.inv(moment.double())
            ctx.memo[name] = cached_tensor(ctx.cache_dir, ctx.model_fingerprint, ctx.stats_corpus_name, name, build,
                                           log=ctx.log)
        return ctx.memo[name]

    def _bare_key(self, edit: Edit, target: MlpOut) -> torch.Tensor:
        """The key at the subject in the edit's prompt alone, without a context prefix: what the published
        update divides by. Where the subject opens the prompt this key sits at the sequence's first
        position, whose activations are unlike any other's, and the update explodes."""
        return subject_keys(self.model, self.tokenizer, [target], [edit], ["{}"])[target.layer][0]

    def _apply_one(self, edit: Edit, target: MlpOut, hp: RomeHParams) -> dict:
        start = time.perf_counter()
        templates = context_templates(self, hp.context_templates, hp.context_length)
        inverse = self.inverse_moment(target.layer, hp)
        key = subject_keys(self.model, self.tokenizer, [target], [edit], templates)[target.layer][0]
        delta, trace = optimise_value(self.model, self.tokenizer, target, edit, templates, hp.value_settings())
        c_inv_k = inverse @ key.double()
        denominator_key = key if hp.denominator == "consistent" else self._bare_key(edit, target)
        denominator = float(denominator_key.double() @ c_inv_k)
        update = torch.outer(delta.float(), (c_inv_k / denominator).float())  # [out, in]
        weight = target.weight
        relative = float(update.norm() / target.as_out_in(weight.detach()).float().norm())  # of W before the edit
        with torch.no_grad():
            stored = update.T if target.transposed else update
            weight.add_(stored.to(weight.device, weight.dtype))
        # E[k^T C^-1 k] over corpus keys is the key width, so denominator / width near or above 1 is
        # typical; far below it, u = C^-1 k* / denominator blows up (the "Fall of ROME" failure)
        return {"layer": target.layer, "denominator": hp.denominator, "key_denominator": denominator,
                "key_denominator_normalised": denominator / key.numel(), "relative_update_norm": relative,
                "seconds": time.perf_counter() - start, **trace}
