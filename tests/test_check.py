"""The cheap per-edit check: the prefix cache reproduces the full model after real edits on every
architecture, early stopping decides only what the whole sample would, and the gate reports how
each check was made."""

from __future__ import annotations

import math

import pytest
import torch

from editgate.corpora import sample_texts
from editgate.gate import CPU_SAMPLE_TOKENS, classify
from editgate.metrics.check import PerplexityCheck
from editgate.metrics.perplexity import CHUNKS, PerplexityResult, PerplexitySample, perplexity
from editgate.metrics.prefix import PrefixCache, lowest_written_layer
from editgate.metrics.scoring import Batch
from editgate.policy import PerplexityPolicy, Policy

from helpers import gate_policy
from test_collapse import MANIFEST, gate
from test_rome import EIFFEL, KREMLIN, rome_on, tiny_hparams

POLICY = Policy()


def check_for(loaded, texts: int = 40, **switches) -> tuple[PerplexityCheck, PerplexitySample]:
    sample = PerplexitySample.from_texts(loaded.tokenizer, sample_texts("builtin:wiki", "perplexity", texts, 0),
                                         64, 512)
    baseline = perplexity(loaded.model, sample)
    policy = PerplexityPolicy(**switches)
    return PerplexityCheck(sample, baseline, policy, lambda r: classify(r, POLICY)), sample


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_prefix_cache_reproduces_the_full_model_after_real_edits(arch, load_tiny, tmp_path):
    loaded = load_tiny(arch)
    model = loaded.model
    cached, sample = check_for(loaded, early_stop=False)
    rome = rome_on(loaded, tmp_path)
    hp = tiny_hparams(rome, layer=2, v_lr=2.0)
    applied = [rome.apply([EIFFEL], hp)]
    written = list(applied[0].originals)
    assert lowest_written_layer(model, written) == 2
    first = cached.run(model, written)  # builds the cache (full passes) and verifies it
    assert cached.prefix.verified, cached.prefix.problem
    applied.append(rome.apply([KREMLIN], hp))
    second = cached.run(model, written)  # runs blocks 2.. from the cached states
    full = perplexity(model, sample)
    assert first.from_layer == second.from_layer == 2 and not second.stopped_early
    assert second.perplexity == pytest.approx(full.token_perplexity, rel=1e-5)
    assert second.perplexity != first.perplexity  # the second edit is visible through the cache
    while applied:
        applied.pop().undo(model)
    assert cached.run(model, written).ratio == pytest.approx(1.0, abs=1e-5)


def test_an_edit_below_the_cached_block_rebuilds_the_cache(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    model = loaded.model
    check, sample = check_for(loaded, early_stop=False)
    rome = rome_on(loaded, tmp_path)
    high = rome.apply([EIFFEL], tiny_hparams(rome, layer=3, v_lr=2.0))
    check.run(model, list(high.originals))
    assert check.prefix.layer == 3
    low = rome.apply([KREMLIN], tiny_hparams(rome, layer=1, v_lr=2.0))
    result = check.run(model, [*high.originals, *low.originals])
    assert check.prefix.layer == 1 and result.from_layer == 1
    assert result.perplexity == pytest.approx(perplexity(model, sample).token_perplexity, rel=1e-5)


def test_lowest_written_layer_is_zero_outside_the_blocks(load_tiny):
    model = load_tiny("llama").model
    written = ["model.layers.3.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    assert lowest_written_layer(model, written) == 1
    assert lowest_written_layer(model, ["model.embed_tokens.weight"]) == 0
    assert lowest_written_layer(model, ["lm_head.weight", "model.layers.2.mlp.down_proj.weight"]) == 0


def test_a_model_the_cache_cannot_reproduce_turns_it_off(load_tiny):
    """A model that treats `inputs_embeds` differently from `input_ids` (here: positions spread twice
    as far apart when it is given embeddings) fails the verification on the first batch: the cache turns itself off and
    says why, and the answer comes from the full model."""
    loaded = load_tiny("llama")
    model = loaded.model
    original_forward = model.forward

    def shifting_forward(*args, inputs_embeds=None, **kwargs):
        if inputs_embeds is not None:
            kwargs["position_ids"] = 2 * torch.arange(inputs_embeds.shape[1])[None]
        return original_forward(*args, inputs_embeds=inputs_embeds, **kwargs)

    model.forward = shifting_forward
    try:
        cache = PrefixCache(model, 2)
        ids = torch.tensor([loaded.tokenizer("Paris is the capital of France.")["input_ids"]] * 2)
        logits = cache.forward(Batch(ids, torch.ones_like(ids), ids))
        assert cache.verified is False and "whole model" in cache.problem
        assert torch.equal(logits, model(input_ids=ids).logits)
        assert cache.states == {}
    finally:
        del model.forward


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_prefix_cache_is_exact_in_bfloat16(arch, tiny_model_dir, tmp_path):
    """The cached states enter the upper blocks as captured (nothing subtracted and added back), so the
    cache holds in a GPU's default dtype too; GPT-2's learned positions once made it turn itself off
    in bfloat16 (a 7e-3 round-off against a 1e-4 tolerance)."""
    from editgate.models import load_model

    loaded = load_model(str(tiny_model_dir(arch, 4)), device="cpu", dtype="bfloat16", cache_dir=tmp_path / "c",
                        log=lambda _m: None)
    ids = torch.tensor([loaded.tokenizer("Paris is the capital of France, and it lies on the Seine.")["input_ids"]] * 2)
    batch = Batch(ids, torch.ones_like(ids), ids)
    cache = PrefixCache(loaded.model, 2)
    full = cache.forward(batch)
    assert cache.verified, cache.problem
    assert torch.equal(cache.forward(batch), full)  # from the cached states: the same logits, bit for bit


# --- early stopping ---------------------------------------------------------------------------------


def synthetic(n: int, d_per_token: float, noise: float, seed: int = 0) -> tuple[PerplexityCheck, list, list]:
    """A check over n texts of 20 tokens whose NLL changed by d_per_token (+- noise) per token."""
    gen = torch.Generator().manual_seed(seed)
    base = [40.0] * n
    after = [40.0 + 20 * d_per_token + noise * float(torch.randn(1, generator=gen)) for _ in range(n)]
    sample = PerplexitySample([[1] * 21] * n, 32, 512, 0)
    check = PerplexityCheck(sample, PerplexityResult(math.exp(2.0), math.exp(2.0), base, [20] * n),
                            PerplexityPolicy(), lambda r: classify(r, POLICY))
    return check, after, [20] * n


def test_early_stop_decides_clear_cases_and_waits_on_borderline_ones():
    unchanged, nll, counts = synthetic(40, 0.0, 0.0)
    assert unchanged.decide(list(range(10)), nll, counts, 40) == (1.0, (1.0, 1.0))
    harmful, nll, counts = synthetic(40, math.log(3.0), 0.5)  # x3: between fail and collapse (10)
    ratio, (low, high) = harmful.decide(list(range(10)), nll, counts, 40)
    assert classify(ratio, POLICY) == classify(low, POLICY) == classify(high, POLICY) == "fail"
    borderline, nll, counts = synthetic(40, math.log(POLICY.perplexity.fail_ratio), 2.0)  # at fail_ratio, noisy
    assert borderline.decide(list(range(10)), nll, counts, 40) is None
    broken, nll, counts = synthetic(40, 0.0, 0.0)
    nll[3] = math.inf
    assert broken.decide(list(range(10)), nll, counts, 40)[0] == math.inf


def test_samples_split_into_random_disjoint_parts(tokenizer):
    texts = sample_texts("builtin:wiki", "perplexity", 40, 0)
    sample = PerplexitySample.from_texts(tokenizer, texts, 64)
    assert len(sample.chunks) == CHUNKS
    assert sorted(i for chunk in sample.chunks for i in chunk) == list(range(len(sample.token_ids)))
    assert sample.chunks != PerplexitySample.from_texts(tokenizer, texts, 64, seed=1).chunks
    few = PerplexitySample.from_texts(tokenizer, texts[:8], 64)
    assert few.chunks == [list(range(8))]  # too few texts for a standard error: one part


def test_early_stop_and_prefix_cache_keep_the_verdict(tiny_repo, tmp_path):
    """The gate on 40 check texts with both savings on and off: same statuses, same culprit; the
    no-op edits are decided after the first part of the sample, the culprit's check from the prefix."""
    docs = {}
    for name, switches in (("on", {"early_stop": "true"}), ("off", {"early_stop": "false", "prefix_cache": "false"})):
        policy = gate_policy(samples=40, max_tokens=48, warn_ratio=1.0, fail_ratio=1.0001, collapse_ratio=1000000.0,
                             **switches)
        repo = tiny_repo(name=name, manifests={"edits/2026-03-01-seq.yaml": MANIFEST}, policy=policy, trained=True)
        code, docs[name] = gate(repo, tmp_path / name)
        assert code == 1
    on, off = docs["on"], docs["off"]
    assert [e["status"] for e in on["edits"]] == [e["status"] for e in off["edits"]]
    assert on["culprit"]["id"] == off["culprit"]["id"] == "extreme"
    first = on["edits"][0]["check"]
    assert first["stopped_early"] and first["texts"] < first["of"]
    assert [e["ratio"] for e in on["edits"][:2]] == [1.0, 1.0]  # the cached path is bit-exact
    assert not any(e["check"]["stopped_early"] or e["check"]["from_layer"] for e in off["edits"])
    assert on["edits"][2]["check"]["from_layer"] >= 1


def test_a_gpu_sized_check_sample_on_the_cpu_names_the_cpu_policy(tiny_repo, monkeypatch):
    """The log says when a check sample is GPU-sized on a CPU run, and only then."""
    import editgate.gate
    from editgate.run import run_gate

    repo = tiny_repo(policy=gate_policy(samples=8, max_tokens=32))
    logs = {}
    for limit in (CPU_SAMPLE_TOKENS, 100):  # 8 texts of up to 32 tokens: under the first, over the second
        monkeypatch.setattr(editgate.gate, "CPU_SAMPLE_TOKENS", limit)
        lines: list[str] = []
        run_gate(repo, log=lines.append)
        logs[limit] = [line for line in lines if "builtin:cpu" in line]
    assert logs[CPU_SAMPLE_TOKENS] == []
    assert len(logs[100]) == 1 and "sized for a GPU" in logs[100][0] and "80 texts of up to 128 tokens" in logs[100][0]
