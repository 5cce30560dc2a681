"""Edit success as the model generates it: the answer matching a reviewer expects, and batched greedy
generation that gives every prompt exactly the tokens it gets alone (every architecture, the memory
method's wrapped model too)."""

from __future__ import annotations

import pytest

from editgate.answers import begins_with_answer, normalise_answer
from editgate.metrics.generation import greedy_continuations

from helpers import ARCHITECTURES


@pytest.mark.parametrize("generated, answer, took", [
    (" Rome, the capital of Italy", "Rome", True),
    ("  rome", "Rome", True),  # case and leading whitespace
    (" ROME.", "Rome.", True),  # the answer's trailing punctuation is not required of the model
    (" New   York City", "New York", True),  # runs of whitespace
    (" Romania", "Rome", False),  # a word boundary: Romania does not say Rome
    (" Romeo", "Rome", False),
    (" Paris", "Rome", False),
    (" the city of Rome", "Rome", False),  # the continuation must begin with the answer
    (" U.S. Army", "U.S.", True),
    (" ｒｏｍｅ", "Rome", True),  # NFKC: full-width letters are the letters
    ("", "Rome", False),
    (" anything", "  ", False),  # an empty answer is never matched
])
def test_an_answer_is_matched_as_a_reader_would(generated, answer, took):
    assert begins_with_answer(generated, answer) is took


def test_normalisation_keeps_the_words():
    assert normalise_answer("  The\tEiffel \n Tower ") == "the eiffel tower"


PROMPTS = ["The Eiffel Tower is located in the city of", "Paris", "A violin has four strings tuned in perfect",
           "The 1998 season of the league had twelve teams and ended in"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_generation_equals_one_prompt_at_a_time(arch, load_tiny):
    loaded = load_tiny(arch)
    tok = loaded.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    budgets = [5, 3, 6, 4]
    batched = greedy_continuations(loaded.model, tok, prompts, budgets)
    alone = [greedy_continuations(loaded.model, tok, [p], [n])[0] for p, n in zip(prompts, budgets)]
    assert batched == alone
    assert [len(c) for c in batched] == budgets or tok.eos_token_id in sum(alone, [])
    assert len({len(p) for p in prompts}) > 1  # the batch really was padded


def test_batched_generation_through_the_memory_model_equals_one_at_a_time(load_tiny, tmp_path):
    from editgate.manifests import Edit

    from helpers import editing_method

    loaded = load_tiny("llama")
    method = editing_method("memory", loaded, tmp_path / "cache")
    edit = Edit("eiffel-rome", "{} is located in the city of", "The Eiffel Tower", "Rome")
    applied = method.apply([edit], method.default_hparams().updated({"encoder": "base", "centre_texts": 20,
                                                                      "threshold": 0.5}))
    tok = loaded.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    batched = greedy_continuations(applied.model, tok, prompts, [4] * len(prompts))
    alone = [greedy_continuations(applied.model, tok, [p], [4])[0] for p in prompts]
    assert batched == alone
