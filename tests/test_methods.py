"""Every parametric method edits every supported architecture, changes only its own weights, raises
the target's probability, and is undone bit for bit (weights and method state)."""

from __future__ import annotations

import pytest
import torch

from editgate.architecture import mlp_out
from editgate.errors import RunError
from editgate.manifests import Edit
from editgate.methods import HPARAMS, METHODS, check_hparams, get_method, method_names

from helpers import ARCHITECTURES, INTERMEDIATE, editing_method

TINY = {
    "rome": {"stats_samples": 40, "v_steps": 8, "context_templates": 2, "context_length": 4},
    "memit": {"layers": [1, 2], "stats_samples": 40, "v_steps": 8, "context_templates": 2, "context_length": 4},
    "alphaedit": {"layers": [1, 2], "stats_samples": 40, "v_steps": 8, "context_templates": 2,
                  "context_length": 4},
    "ft": {"layers": [1], "steps": 8, "lr": 1e-2, "norm_constraint": 1e-2},
}
EIFFEL = Edit("eiffel", "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
KREMLIN = Edit("kremlin", "{} is located in the city of", "The Kremlin", "London", "Moscow")


def target_logprob(model, tokenizer, edit: Edit) -> float:
    prompt = tokenizer(edit.text)["input_ids"]
    target = tokenizer(" " + edit.target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logprobs[len(prompt) - 1 + j, t] for j, t in enumerate(target)))


def test_registry_lists_the_four_parametric_methods():
    assert {"rome", "memit", "alphaedit", "ft"} <= set(METHODS)
    assert all(cls.description for cls in METHODS.values())


def test_the_registry_and_each_implementation_agree():
    """Validation reads the registry's hyperparameters without importing an implementation; each
    implementation must declare the same name and the very same dataclass."""
    assert method_names() == sorted(HPARAMS) == sorted(METHODS)
    for name in method_names():
        assert get_method(name).name == name
        assert get_method(name).HParams is HPARAMS[name]


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit", "ft"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_method_edits_and_undoes_exactly(method, arch, load_tiny, tmp_path):
    loaded = load_tiny(arch)
    model, tok = loaded.model, loaded.tokenizer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    editor = editing_method(method, loaded, tmp_path / "cache")
    hparams = editor.default_hparams().updated(TINY[method])
    logprob_before = target_logprob(model, tok, EIFFEL)

    applied = [editor.apply([EIFFEL], hparams), editor.apply([KREMLIN], hparams)]

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the edit changed no weight"
    assert changed <= set(applied[0].originals) | set(applied[1].originals)
    assert all(".mlp." in n or "mlp" in n for n in changed), changed
    assert target_logprob(model, tok, EIFFEL) > logprob_before
    deltas = applied[1].deltas(model)
    assert all(d.abs().sum() > 0 for d in deltas.values())

    for edit in reversed(applied):
        edit.undo(model)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} not restored bit for bit"


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit", "ft"])
def test_every_parametric_method_reports_its_relative_update_norm(method, load_tiny, tmp_path):
    """The gate's risk flag reads `relative_update_norm` (|dW| / |W|) from every method that writes weights."""
    loaded = load_tiny("llama")
    editor = editing_method(method, loaded, tmp_path / "cache")
    applied = editor.apply([EIFFEL], editor.default_hparams().updated(TINY[method]))
    reported = applied.info["relative_update_norm"]
    measured = {name: float(delta.norm() / applied.originals[name].norm())
                for name, delta in applied.deltas(loaded.model).items()}
    values = list(reported.values()) if isinstance(reported, dict) else [reported]
    assert sorted(values) == pytest.approx(sorted(measured.values()), rel=1e-3)


def test_rome_update_has_rank_one(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    editor = editing_method("rome", loaded, tmp_path / "cache")
    applied = editor.apply([EIFFEL], editor.default_hparams().updated(TINY["rome"]))
    (delta,) = applied.deltas(loaded.model).values()
    assert int(torch.linalg.matrix_rank(delta)) == 1


def test_alphaedit_remembers_earlier_keys_and_forgets_them_on_undo(load_tiny, tmp_path):
    loaded = load_tiny("gpt2")
    editor = editing_method("alphaedit", loaded, tmp_path / "cache")
    hparams = editor.default_hparams().updated(TINY["alphaedit"])
    first = editor.apply([EIFFEL], hparams)
    after_first = {k: v.clone() for k, v in editor.previous_keys.items()}
    second = editor.apply([KREMLIN], hparams)
    assert all(not torch.equal(editor.previous_keys[k], after_first[k]) for k in after_first)
    second.undo(loaded.model)
    assert all(torch.equal(editor.previous_keys[k], after_first[k]) for k in after_first)
    first.undo(loaded.model)
    assert all(float(v.abs().sum()) == 0 for v in editor.previous_keys.values())


def test_memit_batch_of_two_edits_moves_both(load_tiny, tmp_path):
    loaded = load_tiny("qwen2")
    model, tok = loaded.model, loaded.tokenizer
    editor = editing_method("memit", loaded, tmp_path / "cache")
    before = [target_logprob(model, tok, e) for e in (EIFFEL, KREMLIN)]
    editor.apply([EIFFEL, KREMLIN], editor.default_hparams().updated(TINY["memit"]))
    after = [target_logprob(model, tok, e) for e in (EIFFEL, KREMLIN)]
    assert after[0] > before[0] and after[1] > before[1]


def test_out_of_range_layer_is_reported_before_anything_changes(load_tiny, tmp_path):
    loaded = load_tiny("gpt_neox")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    editor = editing_method("memit", loaded, tmp_path / "cache")
    with pytest.raises(RunError, match="out of range"):
        editor.apply([EIFFEL], editor.default_hparams().updated({**TINY["memit"], "layers": [1, 9]}))
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_memit_lambda_scales_with_the_key_width(load_tiny, tmp_path):
    """MEMIT's lambda 15,000 was set for GPT-J's 16,384-wide keys; a narrower model gets it scaled so
    an edit writes the same share of its residual (see editgate/methods/memit.py)."""
    loaded = load_tiny("llama")
    editor = editing_method("memit", loaded, tmp_path / "cache")
    assert editor.default_hparams().mom2_update_weight == pytest.approx(15000 * INTERMEDIATE / 16384)
    chosen = editor.default_hparams().updated({"mom2_update_weight": 20000.0})
    assert editor.with_model_defaults(chosen).mom2_update_weight == 20000.0  # an explicit value stays


def test_mlp_out_reports_unsupported_architecture_clearly():
    class NoBlocks(torch.nn.Module):
        config = type("C", (), {"num_hidden_layers": 2, "hidden_size": 4})()

    with pytest.raises(RunError, match="no list of 2 transformer blocks"):
        mlp_out(NoBlocks(), 0)


def test_hyperparameter_typos_and_types_are_reported():
    assert "did you mean 'v_lr'" in check_hparams("rome", {"v_rl": 0.1})[0]
    assert "must be" in check_hparams("memit", {"layers": "3-7"})[0]
    assert check_hparams("ft", {"lr": 1, "layers": [3]}) == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_at_matches_the_full_forward_pass(arch, load_tiny):
    from editgate.methods.locate import logits_at, pad_batch

    loaded = load_tiny(arch)
    ids, mask = pad_batch([[5, 6, 7, 8, 9], [10, 11, 12]], 0, "cpu")
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([1, 4, 2])
    with torch.no_grad():
        full = loaded.model(input_ids=ids, attention_mask=mask).logits[rows, cols].float()
        picked = logits_at(loaded.model, ids, mask, rows, cols)
    torch.testing.assert_close(picked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rewrite_batch_with_cached_prefixes_equals_the_whole_sequences(arch, load_tiny):
    """The value optimisation runs only the tokens from the subject on, over a key-value cache of the
    context before it; its logits must equal those of the whole sequences with the offset added at the
    subject's last token, for templates of different lengths, one of them empty."""
    from editgate.methods.locate import fill, pad_batch, rewrite_batch, subject_last_index

    loaded = load_tiny(arch)
    model, tok = loaded.model, loaded.tokenizer
    edit = Edit(id="e", prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome Italy")
    templates = ["{}", "Because the day was long. {}", "I think. {}"]
    target = mlp_out(model, 1)
    delta = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    batch = rewrite_batch(model, tok, edit, templates)  # caches the prefixes without the offset
    at = [0] * batch.ids.shape[0]  # in the batch every row starts at its subject's last token
    hook = target.module.register_forward_hook(
        lambda _m, _i, out: out + delta * (torch.arange(out.shape[1])[None, :, None]
                                           == torch.tensor(at)[:, None, None]))
    try:
        with torch.no_grad():
            cached = batch.logits(model)
        goal = tok(" Rome Italy", add_special_tokens=False)["input_ids"]
        sequences, rows, cols = [], [], []
        for r, (template, prompt) in enumerate([(t, edit.prompt) for t in templates] + [("{}", "{} is a")]):
            text, end = fill(template, prompt, edit.subject)
            ids = tok(text)["input_ids"]
            at.append(subject_last_index(tok, text, end))
            if r < len(templates):
                rows += [r] * len(goal)
                cols += [len(ids) - 1 + j for j in range(len(goal))]
                ids = ids + goal[:-1]
            sequences.append(ids)
        at[:] = at[batch.ids.shape[0]:]
        rows.append(len(templates))
        cols.append(len(sequences[-1]) - 1)
        ids, mask = pad_batch(sequences, tok.pad_token_id or 0, "cpu")
        with torch.no_grad():
            whole = model(input_ids=ids, attention_mask=mask).logits[torch.tensor(rows), torch.tensor(cols)].float()
    finally:
        hook.remove()
    assert batch.prefix is not None and batch.ids.shape[1] < ids.shape[1]
    torch.testing.assert_close(cached, whole, rtol=1e-4, atol=1e-4)
    assert batch.gold.tolist() == goal * len(templates)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_context_prefixes_are_reproducible_and_the_key_value_cache_changes_nothing(arch, load_tiny):
    """The prefixes ROME-style methods average over: seeded, and the same tokens as a full forward pass
    per token with the same random draws (the generation reuses the key-value cache)."""
    import torch.nn.functional as F

    from editgate.methods.locate import CONTEXT_SEEDS, TOP_K, sample_prefixes

    loaded = load_tiny(arch)
    model, tok = loaded.model, loaded.tokenizer
    prefixes = sample_prefixes(model, tok, 3, 6, seed=0)
    assert prefixes == sample_prefixes(model, tok, 3, 6, seed=0)
    assert prefixes != sample_prefixes(model, tok, 3, 6, seed=1)

    generator = torch.Generator().manual_seed(0)
    expected = []
    for i in range(3):
        ids = tok(CONTEXT_SEEDS[i], return_tensors="pt").input_ids
        draws = torch.rand(6, generator=generator)
        for position in range(6):
            with torch.no_grad():
                top = torch.topk(model(input_ids=ids).logits[0, -1].float(), TOP_K)
            below = int((F.softmax(top.values, -1).cumsum(-1) < draws[position]).sum().clamp(max=TOP_K - 1))
            ids = torch.cat([ids, top.indices[below].view(1, 1)], dim=1)
        expected.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    assert prefixes == expected
