"""The prefix cache across runs and at checkpoints: states stored by one run give a later run the same
figures without running the unedited blocks, benchmarks and edit queries scored from the edited block
equal the full pass, and the store stays within its bound."""

from __future__ import annotations

import os
import time

import pytest
import torch

from editgate.architecture import block_list
from editgate.corpora import sample_texts
from editgate.gate import classify
from editgate.hooks import Hooks
from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.benchmarks import load_suite
from editgate.metrics.check import PerplexityCheck
from editgate.metrics.edit_metrics import EditScorer
from editgate.metrics.perplexity import PerplexitySample, perplexity
from editgate.metrics.prefix import PrefixForwards, PrefixStore
from editgate.policy import PerplexityPolicy, Policy

from test_rome import EIFFEL, KREMLIN, rome_on, tiny_hparams

SETTINGS = {"dtype": "torch.float32", "threads": 1}


def edited(loaded, tmp_path, layer: int = 2) -> list[str]:
    """Two real ROME edits at `layer`; the parameters they wrote."""
    rome = rome_on(loaded, tmp_path)
    hp = tiny_hparams(rome, layer=layer, v_lr=2.0)
    written = set()
    for edit in (EIFFEL, KREMLIN):
        written |= set(rome.apply([edit], hp).originals)
    return sorted(written)


def lower_block_calls(model) -> tuple[Hooks, list]:
    hooks = Hooks()
    calls: list = []
    hooks.before(block_list(model)[1][0], lambda *_args: calls.append(1))
    return hooks, calls


def a_check(loaded, store: PrefixStore | None) -> tuple[PerplexityCheck, PerplexitySample]:
    sample = PerplexitySample.from_texts(loaded.tokenizer, sample_texts("builtin:wiki", "perplexity", 24, 0), 64, 256)
    policy = Policy()
    check = PerplexityCheck(sample, perplexity(loaded.model, sample), PerplexityPolicy(early_stop=False),
                            lambda r: classify(r, policy), store=store)
    return check, sample


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_later_run_checks_from_the_stored_states_without_the_unedited_blocks(arch, load_tiny, tmp_path):
    loaded = load_tiny(arch)
    written = edited(loaded, tmp_path)
    first, sample = a_check(loaded, PrefixStore(tmp_path / "cache", "model", SETTINGS))
    stored = first.run(loaded.model, written)  # computes the states, verifies them, stores them
    assert first.prefix.verified and list((tmp_path / "cache" / "prefix" / "model").glob("*.pt"))

    later, _ = a_check(loaded, PrefixStore(tmp_path / "cache", "model", SETTINGS))  # another run
    hooks, calls = lower_block_calls(loaded.model)
    with hooks:
        again = later.run(loaded.model, written)
    assert calls == []  # block 0 never ran: every batch came from the store
    assert again.from_layer == 2 and again.ratio == stored.ratio and again.perplexity == stored.perplexity
    assert again.perplexity == pytest.approx(perplexity(loaded.model, sample).token_perplexity, rel=1e-5)

    other = PrefixStore(tmp_path / "cache", "model", {**SETTINGS, "threads": 2})  # other arithmetic: no hit
    hooks, calls = lower_block_calls(loaded.model)
    with hooks:
        a_check(loaded, other)[0].run(loaded.model, written)
    assert calls


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_checkpoint_scoring_from_the_edited_block_equals_the_full_pass(arch, load_tiny, tokenizer, tmp_path):
    """Benchmarks and teacher-forced edit queries through the prefix cache (fresh, then from the store),
    the output head trimmed as on the model's own pass: every per-doc outcome and log-probability of
    the model's own pass."""
    loaded = load_tiny(arch)
    model = loaded.model
    edits = [Edit(id="eiffel", prompt="The {} is in", subject="Eiffel Tower", target="Rome", ground_truth="Paris",
                  paraphrases=("Where is the {}? In",), locality=(LocalityCheck("The Louvre is in", "Paris"),))]
    scorer = EditScorer(model, tokenizer, edits)
    suite = load_suite("builtin:small", tokenizer)
    written = edited(loaded, tmp_path)
    full = suite.run(model), scorer._score_upto(model, 1)
    for run in range(2):  # the second from the states the first stored
        prefixes = PrefixForwards(True, PrefixStore(tmp_path / "cache", "model", SETTINGS))
        forward, layer = prefixes.forward(model, written)
        assert layer == 2
        hooks, calls = lower_block_calls(model)
        with hooks:
            cached = suite.run(model, forward=forward), scorer._score_upto(model, 1, forward)
        assert bool(calls) == (run == 0)
        for name, result in full[0].items():
            assert cached[0][name].per_doc == result.per_doc, name
            assert cached[0][name].value == result.value
        for a, b in zip(full[1], cached[1]):
            assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and torch.equal(a.argmax, b.argmax)


def test_nothing_written_or_a_wrapped_model_runs_the_whole_model(load_tiny):
    loaded = load_tiny("llama")
    prefixes = PrefixForwards(True, None)
    assert prefixes.forward(loaded.model, []) == (None, 0)
    assert prefixes.forward(loaded.model, ["model.embed_tokens.weight"]) == (None, 0)
    assert PrefixForwards(False, None).forward(loaded.model, ["model.layers.2.mlp.down_proj.weight"]) == (None, 0)


def test_the_store_stays_within_its_bound_pruning_other_runs_oldest_first(tmp_path):
    states = torch.zeros(64, 64)  # 16 KiB
    bound = 7 * states.numel() * states.element_size() // 2  # three entries (and their headers), not four
    earlier = PrefixStore(tmp_path, "model", SETTINGS, max_bytes=bound)
    for key in ("old", "older", "used"):
        earlier.put(key, 2, states)
    paths = {key: earlier._path(key, 2) for key in ("old", "older", "used")}
    for age, key in ((300, "old"), (200, "older"), (100, "used")):
        stamp = time.time() - age
        os.utime(paths[key], (stamp, stamp))
    told: list[str] = []
    now = PrefixStore(tmp_path, "model", SETTINGS, max_bytes=bound, log=told.append)
    assert torch.equal(now.get("used", 2), states)  # a read makes it recently used
    now.put("new", 2, states)
    assert not paths["old"].exists() and paths["older"].exists() and paths["used"].exists()
    now.put("newer", 2, states)  # room made from the older run's entries only
    assert not paths["older"].exists() and paths["used"].exists()
    now.put("newest", 2, states)  # the rest is this run's: nothing pruned, nothing stored, said once
    now.put("more", 2, states)
    assert now.get("newest", 2) is None and now.get("new", 2) is not None
    assert len(told) == 1 and "not stored" in told[0]


def test_no_cache_reads_nothing_but_still_stores(tmp_path):
    states = torch.ones(4, 8)
    PrefixStore(tmp_path, "model", SETTINGS).put("k", 3, states)
    fresh = PrefixStore(tmp_path, "model", SETTINGS, read=False)
    assert fresh.get("k", 3) is None
    assert torch.equal(PrefixStore(tmp_path, "model", SETTINGS).get("k", 3), states)
    assert PrefixStore(tmp_path, "model", SETTINGS).get("k", 4) is None  # another block: another entry


def test_a_store_that_cannot_be_written_costs_time_never_the_run(tmp_path):
    (tmp_path / "prefix").write_text("a file where the store's directory should be")
    told: list[str] = []
    store = PrefixStore(tmp_path, "model", SETTINGS, log=told.append)
    store.put("k", 2, torch.ones(2, 2))
    store.put("k2", 2, torch.ones(2, 2))
    assert store.get("k", 2) is None
    assert told[0].startswith("prefix states not stored") and sum("not stored" in m for m in told) == 1
