"""Keys and values at the subject: the machinery ROME, MEMIT and AlphaEdit share.

A fact is read from an MLP output projection at the subject's last token: its input there is the
"key", its output the "value" added to the residual stream. These helpers find those positions,
read keys averaged over context prefixes, read the residual stream, and optimise the value offset
that makes the new target likely.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import editgate
from editgate import cachefile
from editgate.architecture import MlpOut, block_list
from editgate.hooks import Hooks
from editgate.manifests import Edit
from editgate.methods.hparams import ValueSettings
from editgate.methods.statistics import cached_second_moments
from editgate.metrics.scoring import pad_right

CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")


def context_templates(method, count: int, length: int) -> list[str]:
    """'{}' plus short prefixes sampled from the model itself with a fixed seed, as ROME does; memoised
    per run and cached on disk per model, seed, dtype and device, because every edit reuses them."""
    ctx = method.context
    memo_key = f"templates-{count}-{length}-{ctx.seed}"
    if memo_key not in ctx.memo:
        parameter = next(method.model.parameters())
        made_by = f"{parameter.dtype}-{parameter.device.type}-{editgate.__version__}"
        where = "".join(c if c.isalnum() else "_" for c in made_by)
        path = Path(ctx.cache_dir) / "setup" / ctx.model_fingerprint / f"{memo_key}-{where}.json"
        templates = cachefile.read_json(path, ctx.log)
        if not isinstance(templates, list):
            prefixes = sample_prefixes(method.model, method.tokenizer, count, length, ctx.seed)
            templates = ["{}"] + [p.replace("{", " ").replace("}", " ") + ". {}" for p in prefixes]
            cachefile.write_json(path, templates)
        ctx.memo[memo_key] = templates
    return ctx.memo[memo_key]


TOP_K = 5  # context prefixes sample among the model's five likeliest next tokens


def sample_prefixes(model, tokenizer, count: int, length: int, seed: int) -> list[str]:
    """`count` continuations of short seed words, top-5 sampled. Reproducible on any device: the random
    draws come from a seeded CPU generator and pick a token by inverting the top-5 distribution, on the
    device. Generation reuses the key-value cache, and a continuation is read back once, when done:
    no host synchronisation per token."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keyword = cache_keyword(model)
    out = []
    with torch.inference_mode():
        for i in range(count):
            ids = tokenizer(CONTEXT_SEEDS[i % len(CONTEXT_SEEDS)], return_tensors="pt").input_ids.to(device)
            draws = torch.rand(length, generator=generator).to(device)
            tokens, step, past = [ids], ids, None
            for position in range(length):
                output = model(input_ids=step, use_cache=True, **{keyword: past})
                past = getattr(output, keyword)  # the output's field has the keyword's name
                top = torch.topk(output.logits[0, -1].float(), TOP_K)
                below = (F.softmax(top.values, -1).cumsum(-1) < draws[position]).sum().clamp(max=TOP_K - 1)
                step = top.indices.gather(0, below.view(1)).view(1, 1)  # gather: no read-back of the index
                tokens.append(step)
            out.append(tokenizer.decode(torch.cat(tokens, dim=1)[0].tolist(), skip_special_tokens=True).strip())
    return out


def second_moments(method, layers: list[int], samples: int, max_tokens: int) -> dict[int, torch.Tensor]:
    """E[k k^T] of each layer's keys, from the disk cache or one truncated pass over the corpus."""
    ctx = method.context
    return cached_second_moments(
        method.model, method.tokenizer, layers, cache_dir=ctx.cache_dir, fingerprint=ctx.model_fingerprint,
        corpus=ctx.stats_corpus_name, texts_fn=lambda: ctx.stats_texts(samples), samples=samples,
        max_tokens=max_tokens, log=ctx.log)


def fill(template: str, edit_prompt: str, subject: str) -> tuple[str, int]:
    """Put the edit's prompt into a context template; return the text and where the subject ends."""
    prompt = template.replace("{}", edit_prompt)
    marker = prompt.index("{}")
    return prompt.replace("{}", subject, 1), marker + len(subject)


def subject_last_index(tokenizer, text: str, subject_end: int) -> int:
    """Token index of the subject's last token: the length of the tokenized text up to its end, minus one."""
    return len(tokenizer(text[:subject_end])["input_ids"]) - 1


def pad_batch(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: real tokens never attend to right padding."""
    ids, mask = pad_right(sequences, pad_id)
    return ids.to(device), mask.to(device)


LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def logits_at(model, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              **inputs) -> torch.Tensor:
    """Logits only at the (row, col) positions a loss needs, as float32.

    The vocabulary projection over every position is about a fifth of a small model's forward pass
    and most of its activation memory; the loss needs a handful of positions. Models that transform
    logits after the projection (soft-capping, scaling) take the full forward pass instead. `inputs`
    go to the model as they are (a key-value cache and the positions that go with it).
    """
    head = model.get_output_embeddings()
    if head is None or any(getattr(model.config, k, None) not in (None, 1, 1.0) for k in LOGIT_POSTPROCESSING):
        return model(input_ids=ids, attention_mask=mask, **inputs).logits[rows, cols].float()
    # the base model's output stays where its last block ran (accelerate returns to the input's device only
    # from the whole model's forward): pick there, and give the logits back on the input's device
    hidden = model.base_model(input_ids=ids, attention_mask=mask, **inputs).last_hidden_state
    picked = hidden[rows.to(hidden.device), cols.to(hidden.device)]
    return head(picked).float().to(ids.device)


def _subject_batch(tokenizer, edits: list[Edit], templates: list[str]) -> tuple[list[list[int]], list[int]]:
    """Every edit's prompt in every template, tokenized, with the subject's last token index."""
    sequences, positions = [], []
    for edit in edits:
        for template in templates:
            text, end = fill(template, edit.prompt, edit.subject)
            sequences.append(tokenizer(text)["input_ids"])
            positions.append(subject_last_index(tokenizer, text, end))
    return sequences, positions


def subject_keys(model, tokenizer, targets: list[MlpOut], edits: list[Edit],
                 templates: list[str]) -> dict[int, torch.Tensor]:
    """k* per layer: each projection's input at each edit's subject, averaged over the templates.

    Returns {layer: [n_edits, key_dim]} float32 on the CPU, from one forward pass for all layers.
    """
    sequences, positions = _subject_batch(tokenizer, edits, templates)
    ids, mask = pad_batch(sequences, tokenizer.pad_token_id or 0, next(model.parameters()).device)
    with torch.inference_mode(), Hooks() as hooks:
        captured = {t.layer: hooks.record_input(t.module) for t in targets}
        model(input_ids=ids, attention_mask=mask)
    rows = torch.arange(len(sequences))
    index = torch.tensor(positions)
    return {layer: keys[0][rows, index].float().cpu().view(len(edits), len(templates), -1).mean(dim=1)
            for layer, keys in captured.items()}


def residual_at_subject(model, tokenizer, layer: int, edits: list[Edit], templates: list[str]) -> torch.Tensor:
    """The residual stream after block `layer` at each edit's subject, averaged over templates: [n, hidden]."""
    _, blocks = block_list(model)
    sequences, positions = _subject_batch(tokenizer, edits, templates)
    ids, mask = pad_batch(sequences, tokenizer.pad_token_id or 0, next(model.parameters()).device)
    with torch.inference_mode(), Hooks() as hooks:
        captured = hooks.record_output(blocks[layer], stop=True)  # the blocks above are not needed
        model(input_ids=ids, attention_mask=mask)
    states = captured[0][torch.arange(len(sequences)), torch.tensor(positions)].float().cpu()
    return states.view(len(edits), len(templates), -1).mean(dim=1)


@dataclass
class RewriteBatch:
    """The sequences the value offset is trained on, split at the token where the offset enters.

    Each is a context template filled with the prompt and followed by the target's tokens but the
    last, plus "<subject> is a" for the KL term. The offset is added at the subject's last token, so
    every token before it has the same keys and values at every layer in every optimisation step:
    those are computed once (a key-value cache) and each step runs only the tokens from the
    subject's last on, about a third of the batch with ROME's generated prefixes.
    """

    ids: torch.Tensor  # [rows, suffix] the tokens from each subject's last on, right-padded
    mask: torch.Tensor  # [rows, prefix + suffix] which cached and new positions are real tokens
    positions: torch.Tensor  # [rows, suffix] each new token's position in its own sequence
    prefix: object | None  # the model's key-value cache of the tokens before the subject, or None
    rows: torch.Tensor  # scored positions: the target tokens' predictions, then the KL position
    cols: torch.Tensor
    gold: torch.Tensor  # the target token at each of the target positions
    cache_keyword: str = "cache"  # the keyword the model's forward takes `prefix` by

    def logits(self, model) -> torch.Tensor:
        """Logits at `rows, cols` (float32), with whatever offset hook is registered on the model."""
        inputs = {"position_ids": self.positions}
        if self.prefix is not None:
            # each step appends to its own copy: the forward extends the cache it is given in place
            inputs[self.cache_keyword] = copy.deepcopy(self.prefix)
        return logits_at(model, self.ids, self.mask, self.rows, self.cols, **inputs)


def cache_keyword(model) -> str:
    """The keyword the model's forward takes a key-value cache by.

    transformers renamed `past_key_values` to `cache` after 5.15 (5.24 warns on the old name, which goes
    in 5.40); read from the class's signature, so an instance's hooks (accelerate) cannot hide it.
    """
    forward = type(model.base_model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def empty_cache(model):
    """An empty key-value cache, the one the model's forward makes itself with `use_cache=True`."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def rewrite_batch(model, tokenizer, edit: Edit, templates: list[str]) -> RewriteBatch:
    """Tokenize the rewrite and KL sequences, split them at the subject and cache what comes before."""
    device = next(model.parameters()).device
    target_ids = tokenizer(" " + edit.target.strip(), add_special_tokens=False)["input_ids"]
    sequences, splits = [], []
    n = len(templates)
    for i, (template, prompt) in enumerate([(t, edit.prompt) for t in templates] + [("{}", "{} is a")]):
        text, end = fill(template, prompt, edit.subject)
        ids = tokenizer(text)["input_ids"]
        sequences.append(ids + target_ids[:-1] if i < n else ids)  # the last one is the KL sequence
        splits.append(subject_last_index(tokenizer, text, end))
    pad = tokenizer.pad_token_id or 0
    prefix_ids, prefix_mask = pad_right([s[:at] for s, at in zip(sequences, splits)], pad)
    suffix_ids, suffix_mask = pad_right([s[at:] for s, at in zip(sequences, splits)], pad)
    prefix, keyword = None, cache_keyword(model)
    if prefix_ids.shape[1]:
        # right padding needs no mask here: real tokens never attend to the padding after them; the
        # forward fills the cache it is given
        prefix = empty_cache(model)
        with torch.no_grad():
            model.base_model(input_ids=prefix_ids.to(device), use_cache=True, **{keyword: prefix})
    rows = [r for r in range(n) for _ in target_ids] + [n]
    cols = [len(sequences[r]) - splits[r] - len(target_ids) + j for r in range(n) for j in range(len(target_ids))]
    cols.append(len(sequences[n]) - splits[n] - 1)
    return RewriteBatch(
        ids=suffix_ids.to(device), mask=torch.cat([prefix_mask, suffix_mask], dim=1).to(device),
        positions=(torch.tensor(splits)[:, None] + torch.arange(suffix_ids.shape[1])).to(device), prefix=prefix,
        cache_keyword=keyword,
        rows=torch.tensor(rows, device=device), cols=torch.tensor(cols, device=device),
        gold=torch.tensor(target_ids * n, device=device))


def optimise_value(model, tokenizer, target: MlpOut, edit: Edit, templates: list[str],
                   settings: ValueSettings) -> tuple[torch.Tensor, dict]:
    """The offset `delta` to the projection's output at the subject that makes the target likely.

    Trained on a `RewriteBatch`; "<subject> is a" is scored against its original distribution (KL) so
    the subject keeps its kind. Adding `delta` to the MLP output of block L is the same as adding it to
    block L's output (the residual stream), so this serves ROME's value and MEMIT's target residual.
    """
    batch = rewrite_batch(model, tokenizer, edit, templates)
    width = target.weight.shape[1] if target.transposed else target.weight.shape[0]
    # on the edited layer's device (with several GPUs, not the inputs'): the hook adds it to that layer's output
    delta = torch.zeros(width, device=target.weight.device, dtype=torch.float32, requires_grad=True)
    original: list[torch.Tensor] = []

    def add_delta(_module, _inputs, output):  # position 0 of every row is its subject's last token
        if not original:
            original.append(output[0, 0].detach().float().clone())
        output = output.clone()
        output[:, 0] = output[:, 0] + delta.to(output.dtype)
        return output

    optimiser = torch.optim.Adam([delta], lr=settings.lr)
    kl_reference, steps, nll_value = None, 0, math.inf
    with Hooks() as hooks:
        hooks.after(target.module, add_delta)
        for steps in range(1, settings.steps + 1):  # noqa: B007 (the last step is reported)
            optimiser.zero_grad()
            logits = batch.logits(model)
            nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, batch.gold[:, None]).mean()
            kl_logprobs = torch.log_softmax(logits[-1:], dim=-1)
            if kl_reference is None:
                kl_reference = kl_logprobs.detach()
            kl_loss = F.kl_div(kl_logprobs, kl_reference, log_target=True, reduction="batchmean")
            decay = (delta.norm() ** 2 / original[0].norm() ** 2).to(nll.device)  # delta: the layer's device
            nll_value = float(nll.detach())  # the step's one host synchronisation: early stop needs the value
            if nll_value < settings.early_stop_nll:
                break
            (nll + settings.kl_factor * kl_loss + settings.weight_decay * decay).backward()
            optimiser.step()
            with torch.no_grad():  # the norm clamp without leaving the device (no comparison on the host)
                limit = settings.clamp_norm_factor * original[0].norm()
                norm = delta.norm()
                delta.mul_(torch.where(norm > limit, limit / norm, torch.ones_like(norm)))
    return delta.detach().cpu(), {"v_steps": steps, "target_nll": nll_value}
