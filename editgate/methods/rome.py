"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

An MLP output projection W acts as a key-value memory: the key k is its input at the subject's last
token, the value W k its output. ROME picks
  k* = the key averaged over several context prefixes (so the edit is not tied to one phrasing),
  delta = an offset to the value, optimised so the model then predicts the new target,
and writes the rank-one update  W' = W + delta u^T  with  u = C^-1 k* / (k*^T C^-1 k*),  where
C = E[k k^T] over a text corpus. Then W' k* = W k* + delta exactly, while keys uncorrelated with k*
under C move as little as possible. Using the same averaged k* in u and in its denominator is the
consistency fix the "Fall of ROME" analysis (Gupta et al. 2024) showed prevents single-edit collapse.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editgate.architecture import MlpOut, mlp_out, num_layers
from editgate.manifests import Edit
from editgate.methods.base import AppliedEdit, EditMethod, HParamsBase
from editgate.methods.statistics import cached_second_moments

CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")


@dataclass
class RomeHParams(HParamsBase):
    layer: int | None = None  # None: about a sixth of the way up, where factual recall peaks in causal traces
    v_steps: int = 25  # Adam steps optimising the value offset at most
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0  # |delta| <= factor * |original value|
    kl_factor: float = 0.0625  # keep "<subject> is a" predictions close to the original (essence drift)
    early_stop_nll: float = 0.05  # stop once the target's mean NLL is below this (p ~ 0.95)
    context_templates: int = 10  # generated prefixes the key and value are averaged over
    context_length: int = 10
    stats_samples: int = 2000  # texts of the statistics corpus for C = E[k k^T]
    stats_max_tokens: int = 256


class Rome(EditMethod):
    name = "rome"
    description = "rank-one update of one MLP output matrix, solved against cached key statistics"
    HParams = RomeHParams

    def default_hparams(self) -> RomeHParams:
        return RomeHParams(layer=default_layer(num_layers(self.model)))

    def apply(self, edits: list[Edit], hparams: RomeHParams) -> AppliedEdit:
        if hparams.layer is None:
            hparams = hparams.updated({"layer": default_layer(num_layers(self.model))})
        target = mlp_out(self.model, hparams.layer)
        originals = {target.weight_name: target.weight.detach().clone()}
        infos = []
        for edit in edits:  # ROME edits one fact at a time; several are applied in sequence
            infos.append(self._apply_one(edit, target, hparams))
        info = infos[0] if len(infos) == 1 else {"edits": infos}
        return AppliedEdit(self.name, [e.id for e in edits], originals, info)

    def _apply_one(self, edit: Edit, target: MlpOut, hp: RomeHParams) -> dict:
        start = time.perf_counter()
        templates = context_templates(self, hp)
        inverse = inverse_second_moment(self, target.layer, hp)
        key = subject_key(self.model, self.tokenizer, target, edit, templates)
        delta, trace = optimise_value(self.model, self.tokenizer, target, edit, templates, hp)
        c_inv_k = inverse @ key.double()
        denominator = float(key.double() @ c_inv_k)
        u = (c_inv_k / denominator).float()
        update = torch.outer(delta.float(), u)  # [out, in]
        weight = target.weight
        with torch.no_grad():
            stored = update.T if target.transposed else update
            weight.add_(stored.to(weight.device, weight.dtype))
        relative = float(update.norm() / target.as_out_in(weight.detach()).float().norm())
        return {"layer": target.layer, "key_denominator": denominator, "relative_update_norm": relative,
                "seconds": time.perf_counter() - start, **trace}


def default_layer(layers: int) -> int:
    return max(1, round(layers * 0.17))


def context_templates(method: EditMethod, hp: RomeHParams) -> list[str]:
    """'{}' plus short prefixes sampled from the model itself with a fixed seed, as ROME does; memoised
    per run because every edit reuses them."""
    memo_key = f"rome-templates-{hp.context_templates}-{hp.context_length}-{method.context.seed}"
    if memo_key not in method.context.memo:
        method.context.memo[memo_key] = ["{}"] + [
            text.replace("{", " ").replace("}", " ") + ". {}"
            for text in sample_prefixes(method.model, method.tokenizer, hp.context_templates,
                                        hp.context_length, method.context.seed)
        ]
    return method.context.memo[memo_key]


def sample_prefixes(model, tokenizer, count: int, length: int, seed: int) -> list[str]:
    """`count` continuations of short seed words, top-5 sampled with a seeded generator (reproducible)."""
    if count <= 0:
        return []
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    starts = [CONTEXT_SEEDS[i % len(CONTEXT_SEEDS)] for i in range(count)]
    out = []
    with torch.inference_mode():
        for start in starts:
            ids = tokenizer(start, return_tensors="pt").input_ids.to(device)
            for _ in range(length):
                logits = model(input_ids=ids).logits[0, -1].float().cpu()
                top = torch.topk(logits, 5)
                choice = top.indices[torch.multinomial(F.softmax(top.values, -1), 1, generator=generator)]
                ids = torch.cat([ids, choice.view(1, 1).to(device)], dim=1)
            out.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return out


def inverse_second_moment(method: EditMethod, layer: int, hp: RomeHParams) -> torch.Tensor:
    """C^-1 for the layer in float64, from the cached statistics, memoised per run."""
    ctx = method.context
    memo_key = f"inv-c-{layer}-{hp.stats_samples}-{hp.stats_max_tokens}"
    if memo_key not in ctx.memo:
        moments = second_moments(method, [layer], hp.stats_samples, hp.stats_max_tokens)
        ctx.memo[memo_key] = torch.linalg.inv(moments[layer].double())
    return ctx.memo[memo_key]


def second_moments(method: EditMethod, layers: list[int], samples: int, max_tokens: int) -> dict[int, torch.Tensor]:
    ctx = method.context
    return cached_second_moments(
        method.model, method.tokenizer, layers, cache_dir=ctx.cache_dir, fingerprint=ctx.model_fingerprint,
        corpus=ctx.stats_corpus_name, texts_fn=lambda: ctx.stats_texts(samples), samples=samples,
        max_tokens=max_tokens, log=ctx.log)


def subject_last_index(tokenizer, text: str, subject_end: int) -> int:
    """Token index of the subject's last token: the length of the tokenized text up to its end, minus one."""
    return len(tokenizer(text[:subject_end])["input_ids"]) - 1


def fill(template: str, edit_prompt: str, subject: str) -> tuple[str, int]:
    """Put the edit's prompt into a context template; return the text and where the subject ends."""
    prompt = template.replace("{}", edit_prompt)
    marker = prompt.index("{}")
    return prompt.replace("{}", subject, 1), marker + len(subject)


def subject_key(model, tokenizer, target: MlpOut, edit: Edit, templates: list[str]) -> torch.Tensor:
    """k*: the projection's input at the subject's last token, averaged over the context templates."""
    texts, positions = [], []
    for template in templates:
        text, end = fill(template, edit.prompt, edit.subject)
        texts.append(text)
        positions.append(subject_last_index(tokenizer, text, end))
    captured = []
    handle = target.module.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        ids, mask = _pad(tokenizer, texts, next(model.parameters()).device)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    keys = captured[0][torch.arange(len(texts)), torch.tensor(positions)]
    return keys.float().mean(dim=0).cpu()


def _pad(tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(texts), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e)
        mask[row, : len(e)] = 1
    return ids.to(device), mask.to(device)


def optimise_value(model, tokenizer, target: MlpOut, edit: Edit, templates: list[str],
                   hp: RomeHParams) -> tuple[torch.Tensor, dict]:
    """The offset `delta` to the projection's output at the subject that makes the target likely.

    Each template, filled with the prompt and followed by the target's tokens, is a training sequence;
    "<subject> is a" is scored against its original distribution (KL) so the subject keeps its kind.
    """
    device = next(model.parameters()).device
    target_ids = tokenizer(" " + edit.target.strip(), add_special_tokens=False)["input_ids"]
    rewrite, kl = [], []
    for template in templates:
        text, end = fill(template, edit.prompt, edit.subject)
        rewrite.append((tokenizer(text)["input_ids"], subject_last_index(tokenizer, text, end)))
    kl_text, kl_end = fill("{}", "{} is a", edit.subject)
    kl.append((tokenizer(kl_text)["input_ids"], subject_last_index(tokenizer, kl_text, kl_end)))

    sequences = [ids + target_ids[:-1] for ids, _ in rewrite] + [ids for ids, _ in kl]
    lookup = torch.tensor([pos for _, pos in rewrite] + [pos for _, pos in kl], device=device)
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    n_rewrite = len(rewrite)
    # positions whose logits predict each target token, per rewrite sequence
    rows = torch.tensor([r for r in range(n_rewrite) for _ in target_ids], device=device)
    cols = torch.tensor([len(rewrite[r][0]) - 1 + j for r in range(n_rewrite) for j in range(len(target_ids))],
                        device=device)
    gold = torch.tensor(target_ids * n_rewrite, device=device)
    kl_rows = torch.arange(n_rewrite, len(sequences), device=device)
    kl_cols = torch.tensor([len(s) - 1 for s, _ in kl], device=device)

    batch_index = torch.arange(len(sequences), device=device)
    delta = torch.zeros(target.weight.shape[1] if target.transposed else target.weight.shape[0],
                        device=device, dtype=torch.float32, requires_grad=True)
    original_value: list[torch.Tensor] = []

    def add_delta(_module, _inputs, output):
        if not original_value:
            original_value.append(output[0, lookup[0]].detach().float().clone())
        output = output.clone()
        output[batch_index, lookup] = output[batch_index, lookup] + delta.to(output.dtype)
        return output

    handle = target.module.register_forward_hook(add_delta)
    optimiser = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_reference = None
    steps, nll = 0, math.inf
    try:
        for steps in range(1, hp.v_steps + 1):
            optimiser.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[rows, cols], dim=-1)
            nll = -logprobs.gather(1, gold[:, None]).mean()
            kl_logprobs = torch.log_softmax(logits[kl_rows, kl_cols], dim=-1)
            if kl_reference is None:
                kl_reference = kl_logprobs.detach()
            kl_loss = F.kl_div(kl_logprobs, kl_reference, log_target=True, reduction="batchmean")
            decay = delta.norm() ** 2 / original_value[0].norm() ** 2
            loss = nll + hp.kl_factor * kl_loss + hp.v_weight_decay * decay
            if float(nll.detach()) < hp.early_stop_nll:
                break
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                limit = hp.clamp_norm_factor * original_value[0].norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    finally:
        handle.remove()
    return delta.detach().cpu(), {"v_steps": steps, "target_nll": float(nll.detach())}
