"""Measurements: batched perplexity against Hugging Face's own loss, batching, corpora, edit metrics."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from editgate.corpora import ROLE_BUCKETS, load_texts, sample_texts
from editgate.errors import InputError
from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.edit_metrics import EditScorer
from editgate.answers import begins_with_answer
from editgate.metrics.generation import greedy_continuations
from editgate.metrics.perplexity import PerplexitySample, perplexity
from editgate.metrics.scoring import MAX_PADDING, batches_by_length, model_forward, score_sequences

from helpers import shared_file

# --- perplexity against an unbatched reference ---------------------------------------------------


def reference_perplexity(model, token_ids: list[list[int]]) -> tuple[float, float]:
    """(token-weighted, mean per-text) perplexity, one text at a time through HF's own loss."""
    total_nll, total_tokens, per_text = 0.0, 0, []
    with torch.no_grad():
        for ids in token_ids:
            x = torch.tensor([ids])
            loss = float(model(input_ids=x, labels=x).loss)
            total_nll += loss * (len(ids) - 1)
            total_tokens += len(ids) - 1
            per_text.append(math.exp(loss))
    return math.exp(total_nll / total_tokens), sum(per_text) / len(per_text)


def mixed_length_texts() -> list[str]:
    """Real texts of very different lengths: a few words up to several hundred tokens."""
    wiki = load_texts("builtin:wiki", "perplexity")
    long_ones = sorted(wiki[:200], key=len)[-3:]  # the longest of a fixed slice: truncated by max_tokens
    return ["Paris is the capital of France.", "Hi there", wiki[0][:40], wiki[1][:200], *long_ones,
            wiki[2], "The", wiki[3][:90]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_perplexity_matches_unbatched_hf_loss(arch, load_tiny):
    loaded = load_tiny(arch, layers=2)
    tok = loaded.tokenizer
    texts = mixed_length_texts()
    max_tokens = 96
    sample = PerplexitySample.from_texts(tok, texts, max_tokens=max_tokens, batch_tokens=300)

    full = [tok(t)["input_ids"] for t in texts]
    kept = [ids for ids in full if len(ids) >= 2]
    assert len(sample.token_ids) == len(kept) == len(texts) - 1  # "The" is one token: nothing to predict
    assert [len(ids) for ids in sample.token_ids] == [min(len(ids), max_tokens) for ids in kept]
    assert sample.token_ids == [ids[:max_tokens] for ids in kept]  # truncation keeps the beginning
    assert max(len(ids) for ids in full) > max_tokens  # truncation really happened
    lengths = [len(ids) for ids in sample.token_ids]
    assert max(lengths) > 10 * min(lengths)
    assert len(batches_by_length(lengths, sample.batch_tokens)) > 2  # several batches, with padding

    result = perplexity(loaded.model, sample)
    token_ppl, mean_ppl = reference_perplexity(loaded.model, sample.token_ids)
    assert result.token_perplexity == pytest.approx(token_ppl, rel=1e-4)
    assert result.mean_text_perplexity == pytest.approx(mean_ppl, rel=1e-4)
    assert result.text_tokens == [n - 1 for n in lengths] and result.tokens == sample.scored_tokens
    assert result.finite and result.seconds > 0
    # a random model over a 49k vocabulary is near-uniform: a sanity bound that catches off-by-one shifts
    assert 1000 < result.token_perplexity < 500_000

    # the figure does not depend on how texts are batched
    one_batch = PerplexitySample(sample.token_ids, max_tokens, 10**6, sample.pad_id)
    assert perplexity(loaded.model, one_batch).token_perplexity == pytest.approx(result.token_perplexity, rel=1e-5)


def test_perplexity_reports_nan_and_inf_instead_of_raising(load_tiny):
    loaded = load_tiny("llama", layers=2)
    sample = PerplexitySample.from_texts(loaded.tokenizer, ["One two three four five.", "Six seven eight."], 32)
    with torch.no_grad():
        loaded.model.lm_head.weight.fill_(float("nan"))
    result = perplexity(loaded.model, sample)
    assert math.isnan(result.token_perplexity) and not result.finite


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_scoring_only_the_answers_runs_the_head_on_their_positions_and_gives_the_full_passs_figures(arch, load_tiny):
    """Sequences scored from late positions (benchmark docs, edit queries): each batch's logits cover
    only its rows' scored positions, and every log-probability, argmax and one-token alternative is what
    the full pass over every position gives."""
    loaded = load_tiny(arch, layers=2)
    tok = loaded.tokenizer
    sequences = [tok(t)["input_ids"] for t in mixed_length_texts() if len(tok(t)["input_ids"]) >= 3]
    starts = [len(s) - 1 - (i % 3) for i, s in enumerate(sequences)]  # the last 1-3 tokens of each
    alternatives = [[5, 6, 7] if i % 2 else None for i in range(len(sequences))]
    widths: list[tuple[int, int]] = []  # (batch width, logit positions computed)

    def recorded(batch):
        logits = model_forward(loaded.model)(batch)
        widths.append((batch.ids.shape[1], logits.shape[1]))
        return logits

    def full(batch):
        return loaded.model(input_ids=batch.ids, attention_mask=batch.mask).logits

    trimmed = score_sequences(loaded.model, sequences, starts, 300, tok.pad_token_id, recorded, alternatives)
    reference = score_sequences(loaded.model, sequences, starts, 300, tok.pad_token_id, full, alternatives)
    assert len(widths) > 2 and all(kept < width for width, kept in widths)  # every batch ran a part of the head
    for a, b in zip(trimmed, reference):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
        assert torch.equal(a.argmax, b.argmax) and torch.equal(a.targets, b.targets)
        assert (a.alternatives is None) == (b.alternatives is None)
        if a.alternatives is not None:
            assert torch.allclose(a.alternatives, b.alternatives, atol=1e-5)


def test_a_model_whose_forward_does_not_take_logits_to_keep_is_scored_on_every_position(load_tiny):
    """A wrapper that post-processes logits by position (the memory method's) does not declare
    `logits_to_keep`: it is called without it and gets every position, and the scores are the same."""
    loaded = load_tiny("llama", layers=2)

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None, **kwargs):
            assert "logits_to_keep" not in kwargs
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    sequences = [loaded.tokenizer(t)["input_ids"] for t in mixed_length_texts()[:4]]
    starts = [max(1, len(s) - 2) for s in sequences]
    wrapped = score_sequences(Wrapper(loaded.model), sequences, starts, pad_id=loaded.tokenizer.pad_token_id)
    direct = score_sequences(loaded.model, sequences, starts, pad_id=loaded.tokenizer.pad_token_id)
    for a, b in zip(wrapped, direct):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and torch.equal(a.argmax, b.argmax)


@pytest.mark.slow
def test_perplexity_of_the_embedded_model_matches_hf_loss(all_threads):
    from pathlib import Path

    from editgate.models import load_model

    records = json.loads(shared_file("ME-PPL_50.json").read_text(encoding="utf-8"))
    texts = [r["Text"] for r in records[:20]]
    loaded = load_model("builtin:smollm2-135m", device="cpu", dtype="float32",
                        cache_dir=Path("~/.cache/editgate").expanduser(), log=lambda _m: None)
    sample = PerplexitySample.from_texts(loaded.tokenizer, texts, max_tokens=128, batch_tokens=1024)
    assert len(sample.token_ids) == 20
    result = perplexity(loaded.model, sample)
    token_ppl, mean_ppl = reference_perplexity(loaded.model, sample.token_ids)
    assert result.token_perplexity == pytest.approx(token_ppl, rel=1e-4)
    assert result.mean_text_perplexity == pytest.approx(mean_ppl, rel=1e-4)
    assert 5 < result.token_perplexity < 200  # a real small LM on real English


# --- batching --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_batches_by_length_respects_the_budget_and_covers_everything(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 3, 17, 64, 255, 256, 700, 2000]) + rng.randrange(5)
               for _ in range(rng.randrange(1, 80))]
    budget = rng.choice([1, 64, 256, 512, 2048])
    batches = batches_by_length(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    for batch in batches:
        assert batch
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1  # only a lone over-long sequence may exceed it
        padding = padded - sum(lengths[i] for i in batch)
        assert padding <= MAX_PADDING * padded or len(batch) == 1


def test_batches_by_length_edge_cases():
    assert batches_by_length([], 100) == []
    assert batches_by_length([5000], 100) == [[0]]
    assert batches_by_length([10] * 10, 100) == [list(range(10))]  # exactly at the budget: one batch
    assert len(batches_by_length([10] * 11, 100)) == 2
    assert batches_by_length([10, 10, 10, 20], 1000) == [[0, 1, 2], [3]]  # 20 would pad the batch by half


# --- corpora ----------------------------------------------------------------------------------------


def test_wiki_role_pools_are_disjoint():
    pools = {role: load_texts("builtin:wiki", role) for role in ROLE_BUCKETS}
    sizes = {role: len(texts) for role, texts in pools.items()}
    assert all(size > 1000 for size in sizes.values()), sizes
    sets = {role: set(texts) for role, texts in pools.items()}
    roles = list(sets)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            assert not sets[a] & sets[b], f"{a} and {b} share texts"
    assert load_texts("builtin:wiki", "stats") == pools["stats"]  # fixed order


def test_sample_texts_is_deterministic_per_seed():
    a = sample_texts("builtin:wiki", "perplexity", 20, seed=0)
    assert a == sample_texts("builtin:wiki", "perplexity", 20, seed=0)
    b = sample_texts("builtin:wiki", "perplexity", 20, seed=1)
    assert a != b and len(a) == len(b) == 20 == len(set(a))
    assert set(a) <= set(load_texts("builtin:wiki", "perplexity"))
    assert not set(sample_texts("builtin:wiki", "stats", 500, seed=0)) & set(a)


def test_corpus_files_load(tmp_path):
    records = [{"Corpus": "x", "Text": " first sentence"}, {"Corpus": "y", "Text": "second one"},
               {"Corpus": "z", "Text": "   "}]
    (tmp_path / "me.json").write_text(json.dumps(records))
    assert load_texts("me.json", "perplexity", tmp_path) == [" first sentence", "second one"]
    (tmp_path / "list.json").write_text(json.dumps(["a b", "c d"]))
    assert load_texts("list.json", "perplexity", tmp_path) == ["a b", "c d"]
    (tmp_path / "c.jsonl").write_text('{"text": "alpha"}\n\n{"content": "beta"}\n')
    assert load_texts("c.jsonl", "perplexity", tmp_path) == ["alpha", "beta"]
    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    assert load_texts("c.txt", "perplexity", tmp_path) == ["line one", "line two"]
    # a small corpus is used whole, in order
    assert sample_texts("c.txt", "perplexity", 10, seed=3, root=tmp_path) == ["line one", "line two"]


def test_shared_me_ppl_corpus_loads(tmp_path):
    source = shared_file("ME-PPL_50.json")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "me.json").write_bytes(source.read_bytes())
    texts = load_texts("data/me.json", "perplexity", tmp_path)
    assert len(texts) == 50 and texts[0] == json.loads(source.read_text())[0]["Text"]


def test_corpus_records_without_text_are_an_input_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "no text here"}]))
    with pytest.raises(InputError, match="text field"):
        load_texts("bad.json", "perplexity", tmp_path)


@pytest.mark.parametrize("spec", ["../outside.txt", "sub/../../outside.txt", "OUTSIDE_ABS", "link.txt"])
def test_corpus_path_escaping_the_repository_is_refused(spec, tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    (repo / "link.txt").symlink_to(outside)
    spec = str(outside) if spec == "OUTSIDE_ABS" else spec
    with pytest.raises(InputError, match="outside the repository"):
        load_texts(spec, "perplexity", repo)


def test_missing_corpus_file_and_unknown_builtin(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_texts("nope.json", "perplexity", tmp_path)
    with pytest.raises(InputError, match="builtin:wiki"):
        load_texts("builtin:books", "perplexity", tmp_path)


# --- edit metrics ----------------------------------------------------------------------------------


def greedy_single_token_target(model, tok, prompts):
    """(prompt, target) where the target is one token the model greedily continues the prompt with
    and which tokenizes back to itself after a leading space (as EditScorer encodes answers)."""
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        for token in torch.topk(logits, 1).indices.tolist():
            word = tok.decode([token])
            clean = tok(" " + word.strip(), add_special_tokens=False)["input_ids"] == [token]
            if word.startswith(" ") and word.strip() and clean:
                return prompt, word.strip()
    pytest.fail("no prompt whose greedy next token is a clean word")


def test_edit_scorer_on_the_unedited_model(load_tiny):
    loaded = load_tiny("llama", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [f"{s} is located in the city of" for s in
               ("The Eiffel Tower", "The Kremlin", "Big Ben", "The Colosseum", "The Louvre", "The Prado",
                "The Alhambra", "The Acropolis", "The Hermitage", "The Vatican")]
    prompt, greedy = greedy_single_token_target(model, tok, prompts)
    subject = prompt.removesuffix(" is located in the city of")
    edits = [
        Edit(id="own-answer", prompt="{} is located in the city of", subject=subject, target=greedy,
             ground_truth="Zanzibar Xylophone", paraphrases=(f"Where is {subject}? In",),
             locality=(LocalityCheck("The capital of Spain is", "Madrid"), LocalityCheck("Mount Fuji is in"))),
        Edit(id="other", prompt="{} was founded in", subject="Microsoft", target="Antarctica Quux"),
    ]
    scorer = EditScorer(model, tok, edits, batch_tokens=64)
    # the unstated locality answer was filled from the model's own greedy continuation
    assert all(c.answer for c in scorer.edits[0].locality)
    scores = scorer.score(model)
    assert len(scores) == 2
    for s in scores:
        for value in (s.efficacy, s.generalization, s.locality, s.efficacy_cf, s.generalization_cf):
            assert value is None or 0.0 <= value <= 1.0
    first, second = scores
    assert first.efficacy_tf == 1.0  # teacher-forced: the target token is the model's argmax
    # generated: what the model continues with; the target token may be the start of a longer word
    assert first.efficacy == float(begins_with_answer(first.generated, greedy))
    assert first.locality == first.locality_tf == 1.0  # nothing changed: same answers, same argmax
    assert first.efficacy_cf == 1.0  # the greedy token beats an unlikely two-word "old answer"
    assert first.generalization is not None and first.generalization_cf is not None
    assert second.generalization is None and second.locality is None and second.efficacy_cf is None
    assert second.efficacy < 1.0
    assert len(scorer.score(model, upto=1)) == 1

    # damage the model: the same scorer now sees locality and efficacy move
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    damaged = scorer.score(model)[0]
    assert damaged.locality_tf < 1.0
    assert damaged.locality < 1.0  # the generated answers to the locality prompts changed too


def test_generated_efficacy_counts_what_the_model_says_as_a_word(load_tiny):
    """The unedited model's own greedy first word is a target it says (efficacy 1); a target that is only
    the first token of a longer word is not said, though teacher forcing scores it 1."""
    loaded = load_tiny("llama", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    own_word = partial_word = None
    for subject in ("The Eiffel Tower", "The Kremlin", "Big Ben", "The Colosseum", "The Louvre", "The Prado",
                    "The Alhambra", "The Acropolis", "The Hermitage", "The Vatican", "Mount Fuji", "The Nile"):
        prompt = f"{subject} is located in the city of"
        ids = tok(prompt)["input_ids"]
        (continuation,) = greedy_continuations(model, tok, [ids], [8])
        text = tok.decode(continuation, skip_special_tokens=True)
        first = tok.decode(continuation[:1], skip_special_tokens=True).strip()
        words = text.split()
        if own_word is None and len(words) > 1 and words[0].isalpha() and begins_with_answer(text, words[0]):
            own_word = Edit(id="own", prompt="{} is located in the city of", subject=subject, target=words[0])
        if partial_word is None and first.isalpha() and words and words[0] != first:
            partial_word = Edit(id="part", prompt="{} is located in the city of", subject=subject, target=first)
    if own_word is None or partial_word is None:
        pytest.fail("no prompt with a whole first word, or none whose first token starts a longer word")
    own, part = EditScorer(model, tok, [own_word, partial_word]).score(model)
    assert own.efficacy == 1.0
    assert part.efficacy == 0.0 and part.efficacy_tf == 1.0 and part.generated.startswith(partial_word.target)


def test_edit_metrics_definition_is_stated():
    from editgate.metrics.edit_metrics import DEFINITION

    assert "EasyEdit" in DEFINITION and "CounterFact" in DEFINITION and "generation" in DEFINITION

