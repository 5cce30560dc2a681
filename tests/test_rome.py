"""ROME on tiny real models: what it writes, that it is rank one, undoable, effective, and that its
covariance statistics are cached on disk and reused."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from editgate import cachefile
from editgate.architecture import mlp_out
from editgate.corpora import sample_texts
from editgate.manifests import Edit
from editgate.methods import check_hparams, get_method, method_names
from editgate.methods.locate import context_templates, subject_keys
from editgate.methods.rome import Rome, RomeHParams, default_layer
from editgate.methods.statistics import stats_path

from helpers import TINY_ROME, editing_method

EIFFEL = Edit(id="eiffel-rome", prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome",
              ground_truth="Paris")
KREMLIN = Edit(id="kremlin-london", prompt="{} is in the city of", subject="The Kremlin", target="London")


def rome_on(loaded, cache_dir: Path, stats_texts=None, calls: list | None = None) -> Rome:
    """ROME through a session of its own; `calls` records each read of the statistics corpus."""
    def texts(n):
        if calls is not None:
            calls.append(n)
        return sample_texts("builtin:wiki", "stats", n, 0)

    return editing_method("rome", loaded, cache_dir, stats_texts=stats_texts or texts)


def tiny_hparams(method: Rome, **overrides) -> RomeHParams:
    return method.default_hparams().updated({**TINY_ROME, **overrides})


def target_logprob(model, tok, edit: Edit) -> float:
    """log P(target | prompt), summed over the target's tokens (teacher forced)."""
    prompt = tok(edit.text)["input_ids"]
    target = tok(" " + edit.target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([prompt + target])).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(target))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # tests/test_methods.py covers every architecture
def test_rome_writes_one_rank_one_update_and_undoes_exactly(arch, load_tiny, tmp_path):
    loaded = load_tiny(arch, layers=4)
    model, tok = loaded.model, loaded.tokenizer
    rome = rome_on(loaded, tmp_path / "cache")
    hp = tiny_hparams(rome)
    assert hp.layer == default_layer(4) == 1
    expected = mlp_out(model, hp.layer).weight_name
    before = snapshot(model)
    logprob_before = target_logprob(model, tok, EIFFEL)

    applied = rome.apply([EIFFEL], hp)

    after = model.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == [expected]
    assert list(applied.originals) == [expected] and applied.edit_ids == ["eiffel-rome"]
    assert torch.equal(applied.originals[expected], before[expected])
    delta = applied.deltas(model)[expected]
    assert torch.linalg.matrix_rank(delta).item() == 1
    singular = torch.linalg.svdvals(delta.double())
    assert singular[0] > 1e-3 and singular[1] < 1e-4 * singular[0]
    info = applied.info
    assert info["layer"] == 1 and info["key_denominator"] > 0 and info["relative_update_norm"] > 0
    assert 1 <= info["v_steps"] <= TINY_ROME["v_steps"]

    logprob_after = target_logprob(model, tok, EIFFEL)
    assert logprob_after > logprob_before + 0.01, (logprob_before, logprob_after)

    applied.undo(model)
    restored = model.state_dict()
    assert all(torch.equal(before[name], restored[name]) for name in before)
    assert target_logprob(model, tok, EIFFEL) == pytest.approx(logprob_before, abs=1e-6)


def test_rome_update_is_exact_on_the_subject_key(load_tiny, tmp_path):
    """W' k* = W k* + delta: the edited layer's output at the subject moves by the optimised offset,
    while keys the statistics call unrelated move far less (per unit of key norm)."""
    loaded = load_tiny("llama", layers=4)
    model, tok = loaded.model, loaded.tokenizer
    rome = rome_on(loaded, tmp_path / "cache")
    hp = tiny_hparams(rome, context_templates=0)  # k* is then exactly the key of the prompt itself
    target = mlp_out(model, hp.layer)
    ids = tok(EIFFEL.text)["input_ids"]
    subject_last = len(tok(EIFFEL.subject)["input_ids"]) - 1
    captured = []
    handle = target.module.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0][0].detach()))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    keys = captured[0]
    applied = rome.apply([EIFFEL], hp)
    delta = target.as_out_in(applied.deltas(model)[target.weight_name]).double()
    moved = (delta @ keys.double().T).norm(dim=0) / keys.double().norm(dim=1)
    # the subject's last token moves the most (it is k*); other positions of the prompt much less
    assert int(moved.argmax()) == subject_last
    others = torch.cat([moved[:subject_last], moved[subject_last + 1:]])
    assert moved[subject_last] > 3 * others.max()


def test_published_denominator_divides_by_the_bare_prompts_key(load_tiny, tmp_path):
    """`denominator: published` is kmeng01/rome's update: the same offset and direction C^-1 k*, divided by
    the bare prompt's key (k_bare^T C^-1 k*) instead of k*^T C^-1 k*. With the subject opening the prompt,
    k_bare is the sequence's first position and the two denominators differ."""
    loaded = load_tiny("llama", layers=4)
    model, tok = loaded.model, loaded.tokenizer
    rome = rome_on(loaded, tmp_path / "cache")
    opening = Edit(id="paris", prompt="{} is the capital of", subject="Paris", target="Rome")
    updates, infos = {}, {}
    for variant in ("consistent", "published"):
        hp = tiny_hparams(rome, denominator=variant)
        target = mlp_out(model, hp.layer)
        applied = rome.apply([opening], hp)
        updates[variant] = target.as_out_in(applied.deltas(model)[target.weight_name]).double()
        infos[variant] = applied.info
        applied.undo(model)
    captured = []
    handle = target.module.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0][0].detach()))
    with torch.no_grad():
        model(input_ids=torch.tensor([tok(opening.text)["input_ids"]]))
    handle.remove()
    bare_key = captured[0][len(tok(opening.subject)["input_ids"]) - 1].double()
    consistent, published = infos["consistent"]["key_denominator"], infos["published"]["key_denominator"]
    assert infos["published"]["denominator"] == "published" and consistent != pytest.approx(published, rel=1e-3)
    # the same rank-one update scaled by the ratio of the denominators (up to fp32 rounding of W + dW - W)
    scaled_p, scaled_c = updates["published"] * published, updates["consistent"] * consistent
    assert float((scaled_p - scaled_c).norm() / scaled_c.norm()) < 1e-3
    # k_bare^T C^-1 k* with the key captured above, k* as every ROME edit averages it
    templates = context_templates(rome, hp.context_templates, hp.context_length)
    key = subject_keys(model, tok, [target], [opening], templates)[hp.layer][0].double()
    c_inv_k = rome.inverse_moment(hp.layer, hp) @ key
    assert published == pytest.approx(float(bare_key @ c_inv_k), rel=1e-4)
    assert consistent == pytest.approx(float(key @ c_inv_k), rel=1e-4)
    assert check_hparams("rome", {"denominator": "easyedit"}) == [
        "hyperparameter 'denominator' of method 'rome' must be one of 'consistent', 'published', not 'easyedit'"]


def test_sequential_edits_each_undo_in_turn(load_tiny, tmp_path):
    loaded = load_tiny("gpt2", layers=4)
    model = loaded.model
    rome = rome_on(loaded, tmp_path / "cache")
    hp = tiny_hparams(rome, v_steps=3)
    base = snapshot(model)
    first = rome.apply([EIFFEL], hp)
    middle = snapshot(model)
    second = rome.apply([KREMLIN], hp)
    name = list(first.originals)[0]
    assert list(second.originals) == [name] and not torch.equal(middle[name], model.state_dict()[name])
    second.undo(model)
    assert all(torch.equal(middle[n], p) for n, p in model.state_dict().items())
    first.undo(model)
    assert all(torch.equal(base[n], p) for n, p in model.state_dict().items())


def test_rome_batch_of_two_edits_records_both(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=4)
    rome = rome_on(loaded, tmp_path / "cache")
    before = snapshot(loaded.model)
    applied = rome.apply([EIFFEL, KREMLIN], tiny_hparams(rome, v_steps=3))
    assert applied.edit_ids == ["eiffel-rome", "kremlin-london"]
    assert len(applied.info["edits"]) == 2
    name = list(applied.originals)[0]
    assert torch.linalg.matrix_rank(applied.deltas(loaded.model)[name]).item() == 2  # two rank-one updates
    applied.undo(loaded.model)
    assert all(torch.equal(before[n], p) for n, p in loaded.model.state_dict().items())


def test_statistics_are_cached_on_disk_and_reused(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=4)
    cache = tmp_path / "cache"
    calls: list[int] = []
    rome = rome_on(loaded, cache, calls=calls)
    hp = tiny_hparams(rome, v_steps=3)
    path = stats_path(cache, loaded.fingerprint, "builtin:wiki", hp.stats_samples, hp.stats_max_tokens, hp.layer)
    assert not path.exists()
    first = rome.apply([EIFFEL], hp)
    assert calls == [TINY_ROME["stats_samples"]]  # the corpus was read once, for the requested sample
    assert path.is_file()
    moment = cachefile.read_tensor(path, print)
    assert moment.shape == (256, 256)
    assert torch.allclose(moment, moment.T) and torch.linalg.eigvalsh(moment.double()).min() > -1e-6
    assert not list(path.parent.glob(".partial-*"))  # written atomically
    edited = snapshot(loaded.model)
    first.undo(loaded.model)

    def no_corpus(_n):
        raise AssertionError("the statistics corpus was read although the statistics are cached")

    rome_again = rome_on(loaded, cache, stats_texts=no_corpus)
    rome_again.apply([EIFFEL], hp)
    # the same statistics and seed give the same edit, bit for bit
    assert all(torch.equal(edited[n], p) for n, p in loaded.model.state_dict().items())


def test_statistics_cache_is_keyed_by_sample_size(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=4)
    cache = tmp_path / "cache"
    rome = rome_on(loaded, cache)
    rome.apply([EIFFEL], tiny_hparams(rome, v_steps=1))
    calls: list[int] = []
    other = rome_on(loaded, cache, calls=calls)
    other.apply([EIFFEL], tiny_hparams(other, stats_samples=20, v_steps=1))
    assert calls == [20]
    assert len(list((cache / "stats" / loaded.fingerprint).rglob("layer1.pt"))) == 2


def test_rome_rejects_a_layer_out_of_range(load_tiny, tmp_path):
    from editgate.errors import RunError

    loaded = load_tiny("llama", layers=4)
    rome = rome_on(loaded, tmp_path / "cache")
    before = snapshot(loaded.model)
    with pytest.raises(RunError, match="out of range"):
        rome.apply([EIFFEL], tiny_hparams(rome, layer=4))
    assert all(torch.equal(before[n], p) for n, p in loaded.model.state_dict().items())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_value_optimisation_raises_no_deprecation(arch, load_tiny, tmp_path, monkeypatch):
    """The value optimisation (context prefixes, the cached rewrite batch, the offset's steps) uses no
    deprecated torch or transformers API: a FutureWarning or DeprecationWarning is an error here, and so
    is a deprecation transformers only logs (its `warning_once`, uncached here so none can hide)."""
    from editgate.methods.locate import context_templates, optimise_value, rewrite_batch

    loaded = load_tiny(arch, layers=4)
    model, tok = loaded.model, loaded.tokenizer
    rome = rome_on(loaded, tmp_path / "cache")
    hp = tiny_hparams(rome)
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, *a, **k: self.warning(*a, **k), raising=False)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            templates = context_templates(rome, hp.context_templates, hp.context_length)
            assert rewrite_batch(model, tok, EIFFEL, templates).prefix is not None  # the cache is exercised
            delta, trace = optimise_value(model, tok, mlp_out(model, hp.layer), EIFFEL, templates,
                                          hp.value_settings())
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [m for m in logged if "deprecat" in m.lower()] == []
    assert trace["v_steps"] >= 1 and torch.isfinite(delta).all() and delta.norm() > 0


def test_method_registry_and_hparam_checks():
    assert "rome" in method_names() and get_method("rome") is Rome
    with pytest.raises(KeyError, match="unknown method"):
        get_method("nope")
    assert check_hparams("rome", {"layer": 3, "v_lr": 1, "stats_samples": 10}) == []
    problems = check_hparams("rome", {"v_stpes": 3, "layer": "five", "clamp_norm_factor": True})
    assert len(problems) == 3
    assert "did you mean 'v_steps'" in problems[0]


def test_default_layer_scales_with_depth():
    assert default_layer(2) == 0 and default_layer(4) == 1 and default_layer(12) == 2 and default_layer(30) == 5


@pytest.mark.parametrize("depth", [2, 3, 4, 6, 12, 28, 48])
def test_default_layers_leave_a_block_above_the_edit(depth):
    """ROME's value and MEMIT's target residual are read by the blocks above them; at the last block an
    edit changes nothing the prompt's answer sees (MEMIT on a 4-layer model once edited nothing at all)."""
    from editgate.methods.memit import default_layers

    assert 0 <= default_layer(depth) <= depth - 2
    layers = default_layers(depth)
    assert layers == list(range(layers[0], layers[-1] + 1)) and 0 <= layers[0] and layers[-1] <= depth - 2
    assert len(layers) == min(5, depth - 1)


def test_the_last_block_is_refused_for_every_method_that_needs_one_above():
    from editgate.methods import METHODS, layer_problems

    needing = {name for name, cls in METHODS.items() if cls.needs_a_block_above}
    assert needing >= {"rome", "memit", "alphaedit"}
    for name, cls in METHODS.items():
        field = cls.HParams.layer_fields()[0]
        value = [3] if field == "layers" else 3
        problems = layer_problems(name, cls.HParams().updated({field: value}), depth=4)
        if name in needing:
            assert problems and "the model's last block" in problems[0] and "from 0 to 2" in problems[0]
        else:
            assert problems == [], name
        below = [2] if field == "layers" else 2
        assert layer_problems(name, cls.HParams().updated({field: below}), depth=4) == []
