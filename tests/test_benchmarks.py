"""The benchmark suite: builtin:small's and builtin:medium's data, scoring against unbatched references,
standard errors (paired and unpaired), comparison with a baseline, cached baselines without per-doc
outcomes, and task files as untrusted input (templates, paths, file:line errors, `include:`)."""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from pathlib import Path

import pytest
import torch

from editgate.corpora import ROLE_BUCKETS, _bucket, load_texts, wiki_entries
from editgate.errors import InputError
from editgate.metrics.benchmarks import (TaskResult, accuracy_stderr, check_suite, compare, first_sentence,
                                         load_suite, wiki_cloze_docs, wiki_describe_docs, wiki_entity_docs,
                                         wiki_reading_docs)
from editgate.metrics.benchmarks.datasets import sentences
from editgate.metrics.benchmarks.results import paired_stderr, perplexity_change
from editgate.metrics.perplexity import PerplexitySample, perplexity
from editgate.metrics.scoring import score_sequences


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text) if isinstance(text, str) else json.dumps(text), encoding="utf-8")
    return path


def reference_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Summed log p(continuation | context), and whether every continuation token is the argmax: one
    sequence at a time, no padding, no batching."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    rows = logprobs[len(context) - 1: len(context) + len(continuation) - 1]
    target = torch.tensor(continuation)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


# --- builtin:small -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_suite(tokenizer):
    return load_suite("builtin:small", tokenizer)


TASKS = ["wiki_cloze", "wiki_entity", "wiki_reading", "wiki_describe"]
GENERATORS = [wiki_cloze_docs, wiki_entity_docs, wiki_reading_docs, wiki_describe_docs]


def test_builtin_small_is_deterministic(small_suite, tokenizer):
    again = load_suite("builtin:small", tokenizer)
    assert small_suite.names == TASKS
    for a, b in zip(small_suite.tasks, again.tasks):
        assert a.requests == b.requests and a.sequences == b.sequences and a.starts == b.starts
        assert a.alternatives == b.alternatives
        assert a.source.startswith("editgate/tasks/")
    assert [t.n for t in small_suite.tasks] == [200, 200, 40, 60]
    assert small_suite.fingerprint() == again.fingerprint()
    # the generators themselves: same seed, same docs; another seed, another draw; a smaller limit a prefix
    for generate in GENERATORS:
        assert generate(7, 20) == generate(7, 20) != generate(8, 20), generate.__name__
        assert generate(7, 20)[:5] == generate(7, 5), generate.__name__


def test_builtin_medium_is_small_on_more_docs(small_suite, tokenizer):
    medium = load_suite("builtin:medium", tokenizer)
    assert medium.names == small_suite.names and check_suite("builtin:medium") == TASKS
    for big, small in zip(medium.tasks, small_suite.tasks):
        assert big.n >= 3 * small.n  # the ground truth: at least three times the docs
        assert big.requests[: small.n] == small.requests  # ... beginning with small's, scored alike
        assert big.output_type == small.output_type and big.metrics == small.metrics
        assert big.source == "editgate/tasks/medium.yaml"
    assert medium.fingerprint() != small_suite.fingerprint()


def test_builtin_small_comes_from_the_benchmark_pool_only(small_suite):
    titles = {doc["title"] for generate in GENERATORS for doc in generate()}
    assert titles and all(_bucket(t) in ROLE_BUCKETS["benchmark"] for t in titles)
    contexts = [r.context for task in small_suite.tasks if task.name == "wiki_cloze" for r in task.requests]
    assert len(contexts) == 200
    for role in ("perplexity", "stats"):
        pool = load_texts("builtin:wiki", role)
        assert not any(c in text for text in pool for c in contexts), f"a cloze sentence is in the {role} pool"
    # and the distractor descriptions too come from benchmark-pool articles
    benchmark_descriptions = {e["description"].strip() for e in wiki_entries("benchmark")}
    assert all(c in benchmark_descriptions for doc in wiki_describe_docs(limit=150) for c in doc["choices"])


def test_wiki_describe_has_four_distinct_choices_with_the_gold_among_them(small_suite):
    task = next(t for t in small_suite.tasks if t.name == "wiki_describe")
    docs = wiki_describe_docs(limit=60)
    assert len(task.requests) == 60
    golds = []
    for doc, req in zip(docs, task.requests):
        assert len(doc["choices"]) == 4 == len(req.continuations)
        assert len({c.lower() for c in doc["choices"]}) == 4
        assert doc["choices"][doc["gold"]] == doc["description"] and req.gold == doc["gold"]
        assert req.context == f"Title: {doc['title']}\nDescription:"
        assert req.continuations == [" " + c for c in doc["choices"]]
        assert req.choice_bytes == [len(c.encode()) for c in doc["choices"]]
        golds.append(doc["gold"])
    assert set(golds) == {0, 1, 2, 3}  # the gold's position is drawn, not fixed
    # shared contexts: the four sequences of a doc begin with the same context ids
    seqs, starts = task.sequences[:4], task.starts[:4]
    assert len(set(starts)) == 1 and len({tuple(s[: starts[0]]) for s in seqs}) == 1


def test_wiki_cloze_docs_are_first_sentences_without_their_last_word():
    extracts = {e["title"]: e["extract"] for e in wiki_entries("benchmark")}
    for doc in wiki_cloze_docs(limit=150):
        assert doc["target"].isalpha() and len(doc["target"]) >= 4
        assert first_sentence(extracts[doc["title"]].strip()) == f"{doc['context']} {doc['target']}."
    assert first_sentence("J. R. R. Tolkien was an English writer. He wrote books.") == \
        "J. R. R. Tolkien was an English writer."
    assert first_sentence("St. Louis is a city in the U.S. state of Missouri. It is big.") == \
        "St. Louis is a city in the U.S. state of Missouri."


def test_wiki_entity_docs_cut_a_first_sentence_before_a_name_it_has_not_mentioned():
    extracts = {e["title"]: e["extract"] for e in wiki_entries("benchmark")}
    docs = wiki_entity_docs(limit=300)
    assert len(docs) == 300 and len({d["title"] for d in docs}) == 300  # one doc per summary
    for doc in docs:
        target, context = doc["target"], doc["context"]
        assert target[0].isupper() and target[1:].islower() and target.isalpha() and len(target) >= 3
        sentence = " ".join(first_sentence(extracts[doc["title"]].strip()).split())  # spaces as the context has
        assert sentence.startswith(f"{context} {target}")
        assert len(context.split()) >= 3 and context.split()[-1].islower()
        assert target.lower() not in context.lower()  # recalled, not copied from the sentence
        assert target.lower() not in {w.lower().strip(",.()") for w in doc["title"].split()}
    assert len(wiki_entity_docs()) > 900  # enough for builtin:medium's 600


def test_wiki_reading_docs_ask_for_a_passage_word_among_four_of_its_words():
    docs = wiki_reading_docs(limit=300)
    assert len(docs) == 300
    golds = []
    for doc in docs:
        passage, choices, answer = doc["passage"], doc["choices"], doc["answer"]
        parts = sentences(passage)
        assert len(parts) >= 2 and 20 <= len(passage.split()) <= 40
        assert len(set(choices)) == 4 and choices[doc["gold"]] == answer
        words = [w.strip(".,;:!?\"'()[]") for w in passage.split()]
        assert all(c in words and c.isalpha() and c.islower() for c in choices)  # every choice is from the passage
        assert [w.lower() for w in words].count(answer) == 1  # and the answer is said once
        # the prefix is the start of a later sentence, up to the answer (its third word or later)
        later = [p for p in parts[1:] if p.startswith(doc["prefix"] + " " + answer)]
        assert later and len(doc["prefix"].split()) >= 2
        golds.append(doc["gold"])
    assert set(golds) == {0, 1, 2, 3}
    assert len(wiki_reading_docs()) > 600


def wiki_suite(root: Path, tokenizer, limit: int, packaged: tuple[str, ...]):
    """Cloze and describe written inline and the packaged task files named, `limit` docs each, loaded as a
    repository's suite (the packaged task files copied in)."""
    import shutil

    from editgate.metrics.benchmarks.sources import PACKAGED_TASKS

    includes = "".join(f"  - {{include: editgate_tasks/{name}.yaml, limit: {limit}}}\n" for name in packaged)
    (root / "suite.yaml").write_text(textwrap.dedent(f"""\
        tasks:
          - {{task: cloze, dataset: "builtin:wiki-cloze", output_type: continuation,
             doc_to_text: "{{{{context}}}}", doc_to_target: "{{{{target}}}}", limit: {limit}}}
          - {{task: describe, dataset: "builtin:wiki-describe", output_type: multiple_choice,
             doc_to_text: "Title: {{{{title}}}}\\nDescription:", doc_to_choice: "{{{{choices}}}}", gold: gold,
             limit: {limit}}}
        """) + includes, encoding="utf-8")
    shutil.copytree(PACKAGED_TASKS, root / "editgate_tasks")  # the packaged task files, as a repository's
    return load_suite("suite.yaml", tokenizer, root=root)


def test_builtin_tasks_run_on_a_tiny_model(load_tiny, tmp_path, tokenizer):
    suite = wiki_suite(tmp_path, tokenizer, 6, ("wiki_entity", "wiki_reading"))
    logs = []
    results = suite.run(load_tiny("llama", layers=2).model, log=logs.append)
    assert list(results) == ["cloze", "describe", "wiki_entity", "wiki_reading"] and len(logs) == 4
    cloze, describe = results["cloze"], results["describe"]
    assert cloze.metric == "acc" and set(cloze.metrics) == {"acc", "perplexity"} and cloze.n == 6
    assert cloze.metrics["perplexity"] > 1000  # a random model over a 49k vocabulary
    assert describe.metric == "acc" and set(describe.metrics) == {"acc", "acc_norm"} and describe.n == 6
    assert results["wiki_entity"].metric == "acc" and results["wiki_reading"].metric == "acc"
    assert all(0 <= r.value <= 1 and r.seconds > 0 and r.n == 6 for r in results.values())
    # per-doc outcomes: 0/1 per accuracy, NLL and tokens for perplexity, whose figures they give again
    for r in results.values():
        for metric in r.metrics:
            if metric == "perplexity":
                assert math.exp(sum(r.per_doc["nll"]) / sum(r.per_doc["tokens"])) == pytest.approx(r.metrics[metric])
            else:
                assert set(r.per_doc[metric]) <= {0, 1} and sum(r.per_doc[metric]) / 6 == r.metrics[metric]
    assert "per_doc" not in cloze.to_dict()  # the report's figures leave the arrays out
    restored = {k: TaskResult.from_dict(json.loads(json.dumps(v.to_dict(per_doc=True)))) for k, v in results.items()}
    assert restored == results and restored["cloze"].per_doc == cloze.per_doc  # results survive a JSON cache
    assert TaskResult.from_dict(cloze.to_dict()).per_doc == {}


def test_a_task_scored_in_parts_gives_each_docs_outcome_as_scored_whole(load_tiny, tmp_path, tokenizer):
    """Task.docs(start, stop): the parts' per-doc outcomes, end to end, are the whole task's (multiple
    choice with one-token choices in one pass, with longer choices one sequence each, and continuation)."""
    suite = wiki_suite(tmp_path, tokenizer, 7, ("wiki_reading",))
    model = load_tiny("llama", layers=2).model
    for task in suite.tasks:
        whole = task.evaluate(model, suite.batch_tokens, suite.pad_id)
        parts = [task.docs(a, b).evaluate(model, suite.batch_tokens, suite.pad_id) for a, b in ((0, 3), (3, 4), (4, 7))]
        assert [p.n for p in parts] == [3, 1, 3]
        for metric, outcomes in whole.per_doc.items():
            assert sum((p.per_doc[metric] for p in parts), []) == pytest.approx(outcomes, rel=1e-5), (task.name, metric)


def test_one_token_choices_are_scored_in_one_pass_like_separate_sequences(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    contexts = ["The capital of France is", "Water boils at", "A long time ago in a galaxy far far away there"]
    words = [" the", " a", " water", " city", " house"]
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    docs = [{"q": c, "options": words[i: i + 3] + [" multi-token-choice"][: i % 2], "label": 0}
            for i, c in enumerate(contexts)]
    write(tmp_path / "d.json", docs)
    write(tmp_path / "t.yaml", 'task: t\ndataset: d.json\noutput_type: multiple_choice\ndoc_to_text: "{{q}}"\n'
                               'doc_to_choice: "{{options}}"\ngold: label\ntarget_delimiter: ""\n')
    task = load_suite("t.yaml", tok, root=tmp_path, batch_tokens=32).tasks[0]
    # docs 0 and 2 have one-token choices only: one sequence each; doc 1 has a longer one: four
    assert len(task.sequences) == 1 + 4 + 1
    assert [a is not None for a in task.alternatives] == [True] + [False] * 4 + [True]
    scored = score_sequences(model, task.sequences, task.starts, 32, tok.pad_token_id, alternatives=task.alternatives)
    for doc, seq in ((docs[0], scored[0]), (docs[2], scored[5])):
        ctx = tok(doc["q"])["input_ids"]
        expected = [reference_logprob(model, ctx, tok(w, add_special_tokens=False)["input_ids"])[0]
                    for w in doc["options"]]
        assert seq.alternatives.tolist() == pytest.approx(expected, abs=1e-4)
        assert len(seq.logprobs) == 1 and float(seq.logprobs[0]) == pytest.approx(expected[0], abs=1e-4)


# --- scoring against references ------------------------------------------------------------------


def candidate_tokens(model, tokenizer, context: str, k: int) -> list[int]:
    """The model's k most likely next tokens (in order) that survive decode -> encode unchanged."""
    ids = tokenizer(context)["input_ids"]
    with torch.no_grad():
        order = model(input_ids=torch.tensor([ids])).logits[0, -1].argsort(descending=True).tolist()
    out = []
    for token in order:
        text = tokenizer.decode([token])
        if text.strip() and tokenizer(text, add_special_tokens=False)["input_ids"] == [token]:
            out.append(token)
            if len(out) == k:
                return out
    raise AssertionError("no round-tripping tokens")


def test_multiple_choice_picks_the_models_own_most_likely_continuation(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    contexts = ["The capital of France is", "My favourite colour is", "Water boils at", "Once upon a time"]
    docs = []
    for i, context in enumerate(contexts):
        ranked = candidate_tokens(model, tok, context, 40)
        best, others = ranked[0], [ranked[10], ranked[20], ranked[39]]
        choices = [tok.decode([t]) for t in others]
        choices.insert(i % 4, tok.decode([best]))
        docs.append({"q": context, "options": choices, "label": i % 4})
    write(tmp_path / "data" / "mc.json", docs)
    write(tmp_path / "mc.yaml", """\
        task: own_choice
        dataset: data/mc.json
        output_type: multiple_choice
        doc_to_text: "{{q}}"
        doc_to_choice: "{{options}}"
        target_delimiter: ""
        gold: label
        metric: [acc, acc_norm]
        """)
    result = load_suite("mc.yaml", tok, root=tmp_path).run(model)["own_choice"]
    assert result.value == 1.0 and result.metrics["acc"] == 1.0 and result.stderr == 0.0 and result.n == 4

    # acc_norm: the same choice log-likelihoods divided by byte length, from an unbatched reference
    hits = []
    for doc in docs:
        ctx = tok(doc["q"])["input_ids"]
        lls = [reference_logprob(model, ctx, tok(c, add_special_tokens=False)["input_ids"])[0]
               for c in doc["options"]]
        norm = [ll / len(c.encode()) for ll, c in zip(lls, doc["options"])]
        hits.append(norm.index(max(norm)) == doc["label"])
    assert result.metrics["acc_norm"] == pytest.approx(sum(hits) / len(hits))
    assert result.stderrs["acc_norm"] == pytest.approx(accuracy_stderr(sum(hits) / len(hits), 4))


def test_multiple_choice_matches_unbatched_reference_with_literal_choices_and_text_gold(load_tiny, tmp_path):
    loaded = load_tiny("gpt2", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    docs = [{"premise": p, "answer": a} for p, a in [
        ("The cat sat on the", "mat"), ("Rain falls from the", "sky"), ("He opened the", "door"),
        ("A long, long sentence about many different things that keeps going and going until", "mat"),
        ("Two plus two is", "four"), ("The sun rises in the", "sky"), ("She drank a glass of", "water")]]
    write(tmp_path / "mc.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n")
    choices = ["mat", "sky", "door", "four", "water and some bread"]
    write(tmp_path / "t.yaml", f"""\
        task: literal
        dataset: mc.jsonl
        output_type: multiple_choice
        doc_to_text: "Q: {{{{premise}}}} "
        doc_to_choice: {json.dumps(choices)}
        target_delimiter: ""
        gold: answer
        limit: 6
        """)
    suite = load_suite("t.yaml", tok, root=tmp_path, batch_tokens=64)  # several padded batches
    result = suite.run(model)["literal"]
    acc, acc_norm = [], []
    for doc in docs[:6]:
        # the context's trailing space moves to the continuation (" mat"), as in lm-evaluation-harness
        ctx = tok("Q: " + doc["premise"])["input_ids"]
        lls = [reference_logprob(model, ctx, tok(" " + c, add_special_tokens=False)["input_ids"])[0]
               for c in choices]
        norm = [ll / len(c.encode()) for ll, c in zip(lls, choices)]
        acc.append(lls.index(max(lls)) == choices.index(doc["answer"]))
        acc_norm.append(norm.index(max(norm)) == choices.index(doc["answer"]))
    assert result.n == 6
    assert result.metrics == {"acc": pytest.approx(sum(acc) / 6), "acc_norm": pytest.approx(sum(acc_norm) / 6)}


def test_continuation_accuracy_is_greedy_exact_match(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=2)
    model, tok = loaded.model, loaded.tokenizer
    docs = []
    for context in ["The capital of France is", "My favourite colour is", "Water boils at"]:
        best = candidate_tokens(model, tok, context, 5)
        docs.append({"text": context, "word": tok.decode([best[0]]), "greedy": True})  # the argmax
        docs.append({"text": context, "word": tok.decode([best[4]]), "greedy": False})  # 5th best
    write(tmp_path / "c.json", {"docs": docs})
    write(tmp_path / "c.yaml", """\
        task: greedy
        dataset: c.json
        output_type: continuation
        doc_to_text: "{{text}}"
        doc_to_target: "{{word}}"
        target_delimiter: ""
        metric: [acc, perplexity]
        """)
    result = load_suite("c.yaml", tok, root=tmp_path).run(model)["greedy"]
    assert result.value == 0.5 and result.n == 6
    nll, tokens = 0.0, 0
    for doc in docs:
        ll, greedy = reference_logprob(model, tok(doc["text"])["input_ids"],
                                       tok(doc["word"], add_special_tokens=False)["input_ids"])
        assert greedy == doc["greedy"]
        nll, tokens = nll - ll, tokens + 1
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_perplexity_task_matches_the_perplexity_check(load_tiny, tmp_path):
    loaded = load_tiny("llama", layers=2)
    texts = load_texts("builtin:wiki", "benchmark")[:5] + ["Short one."]
    write(tmp_path / "p.json", [{"body": t} for t in texts])
    write(tmp_path / "p.yaml", """\
        task: ppl
        dataset: p.json
        output_type: loglikelihood_rolling
        doc_to_text: "{{body}}"
        max_tokens: 64
        """)
    result = load_suite("p.yaml", loaded.tokenizer, root=tmp_path).run(loaded.model)["ppl"]
    expected = perplexity(loaded.model, PerplexitySample.from_texts(loaded.tokenizer, texts, max_tokens=64))
    assert result.metric == "perplexity" and result.stderr is None and result.n == 6
    assert result.value == pytest.approx(expected.token_perplexity, rel=1e-5)


# --- standard errors and comparison --------------------------------------------------------------


def test_stderr_is_lm_evals_sample_standard_error():
    for hits in ([1, 0, 1, 1, 0, 1, 1, 1], [1] * 3 + [0] * 97, [0, 1]):
        p, n = sum(hits) / len(hits), len(hits)
        assert accuracy_stderr(p, n) == pytest.approx(statistics.stdev(hits) / math.sqrt(n))
        assert accuracy_stderr(p, n) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert accuracy_stderr(0.5, 101) == pytest.approx(0.05)
    assert accuracy_stderr(1.0, 50) == 0.0 and math.isnan(accuracy_stderr(1.0, 1))


def acc(name, value, n=200):
    return TaskResult(name, "acc", value, accuracy_stderr(value, n), n, 1.0)


def test_compare_flags_real_drops_and_marks_noise():
    base = {"a": acc("a", 0.80, 2000), "b": acc("b", 0.60), "c": acc("c", 0.90), "d": acc("d", 0.50)}
    now = {"a": acc("a", 0.70, 2000), "b": acc("b", 0.58), "c": acc("c", 0.85), "d": acc("d", 0.55)}
    out = {c.task: c for c in compare(base, now, max_drop=0.05)}
    assert list(out) == ["a", "b", "c", "d"]
    a, b, c, d = out["a"], out["b"], out["c"], out["d"]
    assert a.drop == pytest.approx(0.10) and a.failed and not a.within_noise  # big sample: a real drop
    assert a.stderr == pytest.approx(math.sqrt(base["a"].stderr ** 2 + now["a"].stderr ** 2))
    assert b.drop == pytest.approx(0.02) and not b.failed and b.within_noise  # small drop: noise
    assert c.drop == pytest.approx(0.05) and not c.failed  # exactly max_drop (0.9 - 0.85 in floats) passes
    assert d.drop == pytest.approx(-0.05) and not d.failed and d.within_noise  # improvements never fail
    # a drop over max_drop that n=200 cannot tell from noise: failed, and reported as within noise
    e = compare({"e": acc("e", 0.60)}, {"e": acc("e", 0.52)}, 0.05)[0]
    assert e.failed and e.within_noise and e.stderr > 0.04


def test_compare_perplexity_tasks_and_broken_figures():
    def ppl(value):
        return TaskResult("p", "perplexity", value, None, 10, 1.0)

    up = compare({"p": ppl(20.0)}, {"p": ppl(22.0)}, 0.05)[0]
    assert up.drop == pytest.approx(0.10) and up.failed and not up.within_noise and up.stderr is None
    assert not compare({"p": ppl(20.0)}, {"p": ppl(20.5)}, 0.05)[0].failed
    assert compare({"p": ppl(20.0)}, {"p": ppl(math.nan)}, 0.05)[0].failed
    assert compare({"p": ppl(20.0)}, {"p": ppl(math.inf)}, 0.05)[0].failed
    with pytest.raises(ValueError, match="differ"):
        compare({"p": ppl(20.0)}, {}, 0.05)


def test_paired_stderr_on_known_vectors():
    base, now = [1, 1, 0, 1, 0], [1, 0, 0, 1, 1]  # differences 0, 1, 0, 0, -1: mean 0, variance 0.5
    assert paired_stderr(base, now) == pytest.approx(math.sqrt(0.5 / 5))
    diffs = [1] * 5 + [0] * 95  # five docs lost, none gained
    assert paired_stderr([1] * 60 + [0] * 40, [0] * 5 + [1] * 55 + [0] * 40) == pytest.approx(
        statistics.stdev(diffs) / math.sqrt(100))
    assert paired_stderr([1, 0, 1], [1, 0, 1]) == 0.0  # nothing changed: no doubt about the difference
    assert math.isnan(paired_stderr([1], [0])) and math.isnan(paired_stderr([1, math.nan], [0, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        paired_stderr([1, 0], [1])
    # perplexity: nll 2, 4 -> 3, 5 over 1 and 2 tokens: D = 2/3 per token; residuals 1/3, -1/3
    drop, se = perplexity_change([2.0, 4.0], [3.0, 5.0], [1, 2])
    assert drop == pytest.approx(math.exp(8 / 3) / math.exp(6 / 3) - 1)  # the token-weighted ratio - 1
    assert se == pytest.approx(math.exp(2 / 3) * math.sqrt(2 * 2 / 9) / 3)
    assert perplexity_change([2.0, 4.0], [2.0, 4.0], [1, 2]) == (0.0, 0.0)
    assert math.isnan(perplexity_change([2.0, 4.0], [math.nan, 4.0], [1, 2])[1])


def doc_result(name, hits, metric="acc"):
    value = sum(hits) / len(hits)
    return TaskResult(name, metric, value, accuracy_stderr(value, len(hits)), len(hits), 1.0,
                      per_doc={metric: list(hits)})


def test_compare_pairs_docs_when_both_sides_hold_them():
    base = doc_result("t", [1] * 60 + [0] * 40)
    now = doc_result("t", [0] * 5 + [1] * 55 + [0] * 40)  # five docs lost: 0.60 -> 0.55
    paired = compare({"t": base}, {"t": now}, 0.05)[0]
    unpaired_se = math.sqrt(accuracy_stderr(0.6, 100) ** 2 + accuracy_stderr(0.55, 100) ** 2)
    assert paired.paired and paired.n == 100 and (paired.lost, paired.gained) == (5, 0)
    assert paired.drop == pytest.approx(0.05) and not paired.failed
    assert paired.stderr == pytest.approx(paired_stderr(base.per_doc["acc"], now.per_doc["acc"]))
    assert paired.stderr_unpaired == pytest.approx(unpaired_se) and paired.stderr < unpaired_se / 3
    assert not paired.within_noise  # five losses and no gain is no noise, though n=100 cannot tell apart
    # the same figures without per-doc outcomes (an lm-eval task, or docs that do not line up)
    for b, n in ((TaskResult.from_dict(base.to_dict()), now),
                 (base, doc_result("t", [1] * 55 + [0] * 44))):
        unpaired = compare({"t": b}, {"t": n}, 0.05)[0]
        assert not unpaired.paired and unpaired.lost is None and unpaired.within_noise
        assert unpaired.stderr == unpaired.stderr_unpaired == pytest.approx(
            math.sqrt(b.stderr ** 2 + n.stderr ** 2))
    # every doc flipped, as many each way: no drop, but more doubt than the unpaired figure admits
    swapped = compare({"t": doc_result("t", [1, 0] * 50)}, {"t": doc_result("t", [0, 1] * 50)}, 0.05)[0]
    assert swapped.drop == 0 and swapped.within_noise
    assert swapped.stderr == pytest.approx(math.sqrt(100 / 99) / 10) and swapped.stderr > swapped.stderr_unpaired
    assert (swapped.lost, swapped.gained) == (50, 50)
    # report figures: every comparison field, never the per-doc arrays
    assert set(paired.to_dict()) == {"task", "metric", "base", "now", "drop", "stderr", "within_noise", "failed",
                                     "paired", "stderr_unpaired", "n", "lost", "gained"}


def test_compare_pairs_perplexity_by_its_per_doc_log_likelihoods():
    def ppl(nll, tokens):
        return TaskResult("p", "perplexity", math.exp(sum(nll) / sum(tokens)), None, len(nll), 1.0,
                          per_doc={"nll": nll, "tokens": tokens})

    tokens = [10, 20, 30, 40]
    base = ppl([20.0, 45.0, 60.0, 90.0], tokens)
    now = ppl([21.0, 46.0, 63.0, 93.0], tokens)
    c = compare({"p": base}, {"p": now}, 0.05)[0]
    drop, se = perplexity_change(base.per_doc["nll"], now.per_doc["nll"], tokens)
    assert c.paired and c.drop == pytest.approx(drop) == pytest.approx(math.exp(8 / 100) - 1)
    assert c.stderr == pytest.approx(se) and 0 < c.stderr < c.drop / 2 and not c.within_noise and c.failed
    assert c.stderr_unpaired is None and c.lost is None


def test_a_cached_baseline_without_per_doc_outcomes_is_measured_again(tiny_repo, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from editgate import cachefile
    from editgate.cli import main
    from editgate.metrics.benchmarks import suite as suite_module

    suite_file = write(tmp_path / "suite.yaml", """\
        tasks:
          - {task: cloze, dataset: "builtin:wiki-cloze", output_type: continuation,
             doc_to_text: "{{context}}", doc_to_target: "{{target}}", limit: 8}
          - {task: reading, dataset: "builtin:wiki-reading", output_type: multiple_choice,
             doc_to_text: "{{passage}}\\n{{prefix}}", doc_to_choice: "{{choices}}", gold: gold, limit: 8}
        """)
    policy = ("perplexity: {corpus: builtin:wiki, samples: 4, max_tokens: 32, warn_ratio: 5.0, fail_ratio: 10.0,"
              " collapse_ratio: 100.0}\n"
              "benchmarks: {suite: suite.yaml, run_at: end}\n"
              "edits: {min_efficacy: 0.0, min_generalization: 0.0, min_locality: 0.0}\n")
    repo = tiny_repo(policy=policy)
    (repo / "suite.yaml").write_text(suite_file.read_text())

    def run(out: str) -> dict:
        result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(tmp_path / out), "--quiet"])
        assert result.exit_code in (0, 1), result.output
        return json.loads((tmp_path / out / "report.json").read_text())

    first = run("first")
    entries = list((tmp_path / "cache" / "baselines").glob("*/benchmarks-*.json"))
    assert len(entries) == 1 and "benchmarks" not in first["cached"]
    stored = cachefile.read_json(entries[0], print)
    assert all(len(r["per_doc"]["acc"]) == 8 for r in stored.values())
    assert all("per_doc" not in r for r in first["benchmarks"]["baseline"].values())  # kept out of the report
    point = first["benchmarks"]["checkpoints"][-1]["benchmarks"]
    assert all(c["paired"] and c["n"] == 8 and c["stderr_unpaired"] is not None for c in point)

    # an entry as editgate wrote it before per-doc outcomes (same key): not trusted, measured and rewritten
    cachefile.write_json(entries[0], {k: {f: v for f, v in r.items() if f != "per_doc"} for k, r in stored.items()})
    second = run("second")
    assert "benchmarks" not in second["cached"] and "perplexity" in second["cached"]

    def figures(results: dict) -> dict:
        return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in results.items()}

    assert figures(cachefile.read_json(entries[0], print)) == figures(stored)  # rewritten, per-doc outcomes included
    assert figures(second["benchmarks"]["baseline"]) == figures(first["benchmarks"]["baseline"])
    assert "benchmarks" in run("third")["cached"]  # and the rewritten entry is used

    # entries of an older benchmark format are not even found: the format is part of the suite's key
    monkeypatch.setattr(suite_module, "FORMAT_VERSION", suite_module.FORMAT_VERSION - 1)
    assert "benchmarks" not in run("older")["cached"]
    assert len(list((tmp_path / "cache" / "baselines").glob("*/benchmarks-*.json"))) == 2


# --- task files are untrusted input --------------------------------------------------------------

TASK = """\
task: t
dataset: d.json
output_type: multiple_choice
doc_to_text: {text}
doc_to_choice: "{{{{choices}}}}"
gold: gold
"""


@pytest.mark.parametrize("template", ['"{{__class__}}"', '"{{ x.y }}"', '"{{ q.__class__.__mro__ }}"',
                                      '"{{ q | upper }}"', '"{% for a in b %}x{% endfor %}"',
                                      '"{{ self.__init__.__globals__ }}"', '"{{ q() }}"', '"{{q}'
                                      '}}}"', '"{# c #}"'])
def test_template_injection_is_rejected_with_its_line(template, tmp_path, tokenizer):
    write(tmp_path / "d.json", [{"q": "hi", "x": {"y": 1}, "choices": ["a", "b"], "gold": 0}])
    write(tmp_path / "t.yaml", TASK.format(text=template))
    with pytest.raises(InputError) as err:
        load_suite("t.yaml", tokenizer, root=tmp_path)
    assert str(err.value).startswith("t.yaml:4: doc_to_text:")


def test_templates_substitute_fields_once_and_leave_other_text_literal(tmp_path, tokenizer):
    docs = [{"q": "{{__class__}} {0} {q}", "choices": ["a", "b"], "gold": 1}]
    write(tmp_path / "d.json", docs)
    write(tmp_path / "t.yaml", TASK.format(text='"{0} {q} %s {{ q }}|{{q}}"'))
    request = load_suite("t.yaml", tokenizer, root=tmp_path).tasks[0].requests[0]
    # a doc's value is never expanded again, and single braces or % are plain text
    assert request.context == "{0} {q} %s {{__class__}} {0} {q}|{{__class__}} {0} {q}"
    assert request.gold == 1 and request.continuations == [" a", " b"]


def test_malformed_task_files_give_file_and_line(tmp_path, tokenizer):
    write(tmp_path / "d.json", [{"q": "hi", "choices": ["a", "b"], "gold": 0}])

    def error(text: str, name: str = "t.yaml") -> str:
        write(tmp_path / name, text)
        with pytest.raises(InputError) as err:
            load_suite(name, tokenizer, root=tmp_path)
        return str(err.value)

    assert error("task: t\ndataset: d.json\n  output_type: [\n").startswith("t.yaml:3: invalid YAML")
    assert error(TASK.format(text='"{{q}}"') + "doc_to_txt: x\n").startswith(
        "t.yaml:7: unknown task key 'doc_to_txt' (did you mean 'doc_to_text'?)")
    assert error(TASK.format(text='"{{q}}"') + "metric: [acc, perplexity]\n").startswith(
        "t.yaml:7: metric 'perplexity' is not available for output_type multiple_choice")
    assert error(TASK.format(text='"{{q}}"') + "limit: 0\n").startswith("t.yaml:7: limit must be")
    assert error(TASK.format(text='"{{q}}"').replace("multiple_choice", "multiple_choise")).startswith(
        "t.yaml:3: unknown output_type 'multiple_choise' (did you mean 'multiple_choice'?)")
    assert error(TASK.format(text='"{{missing}}"')).startswith("t.yaml:4: doc_to_text: doc 0 has no field 'missing'")
    assert error(TASK.format(text='"{{q}}"').replace("gold: gold", "gold: q")).startswith(
        "t.yaml:6: gold: doc 0: 'hi' is neither")
    assert error(TASK.format(text='"{{q}}"').replace("d.json", "../d.json")).startswith(
        "t.yaml:2: '../d.json' is outside the repository")
    assert error(TASK.format(text='"{{q}}"').replace("d.json", "nope.json")).startswith(
        "t.yaml:2: 'nope.json' does not exist")
    assert "needs doc_to_choice" in error(TASK.format(text='"{{q}}"').replace('doc_to_choice: "{{choices}}"\n', ""))
    # a suite's entries: a missing task file names the suite's line; a bad inline task its own line
    write(tmp_path / "t_ok.yaml", TASK.format(text='"{{q}}"'))
    assert error("tasks:\n  - t_ok.yaml\n  - missing.yaml\n", "s.yaml").startswith(
        "s.yaml:3: 'missing.yaml' does not exist")
    assert error("tasks:\n  - task: x\n    dataset: d.json\n    output_type: perplexity\n    doc_to_text: 5\n",
                 "s.yaml").startswith("s.yaml:5: doc_to_text must be text")
    write(tmp_path / "m.yaml", TASK.format(text='"{{missing}}"'))
    with pytest.raises(InputError, match="m.yaml:4: doc_to_text: doc 0 has no field 'missing'"):
        check_suite("m.yaml", tmp_path)  # validation without a model or tokenizer finds the same problems
    assert check_suite("t_ok.yaml", tmp_path) == ["t"]
    assert check_suite("builtin:small") == TASKS
    assert error("suite: [a]\n", "s.yaml").startswith("s.yaml:1: a suite file needs a 'tasks:' list")
    write(tmp_path / "bad.jsonl", '{"q": "a"}\n{"q": \n')
    assert "bad.jsonl:2: invalid JSON" in error(TASK.format(text='"{{q}}"').replace("d.json", "bad.jsonl"))


def test_include_takes_a_task_file_and_overrides_its_keys(tmp_path, tokenizer):
    write(tmp_path / "d.json", [{"q": "hi", "choices": ["a", "b"], "gold": 0}] * 3)
    write(tmp_path / "tasks" / "base.yaml", TASK.format(text='"{{q}}"').replace("d.json", "../d.json"))
    write(tmp_path / "s.yaml",
          "tasks:\n  - {include: tasks/base.yaml, limit: 2}\n  - {include: tasks/base.yaml, task: u}\n")
    suite = load_suite("s.yaml", tokenizer, root=tmp_path)  # the included file's dataset path is its own
    assert suite.names == ["t", "u"] and [t.n for t in suite.tasks] == [2, 3]

    def error(text: str) -> str:
        write(tmp_path / "s.yaml", text)
        with pytest.raises(InputError) as err:
            load_suite("s.yaml", tokenizer, root=tmp_path)
        return str(err.value)

    # a problem in an included key names the included file's line; in an overriding key, the suite's
    write(tmp_path / "tasks" / "bad.yaml", TASK.format(text='"{{missing}}"').replace("d.json", "../d.json"))
    assert error("tasks:\n  - include: tasks/bad.yaml\n").startswith(
        "tasks/bad.yaml:4: doc_to_text: doc 0 has no field 'missing'")
    assert error("tasks:\n  - include: tasks/base.yaml\n    limit: 0\n").startswith("s.yaml:3: limit must be")
    write(tmp_path / "tasks" / "nested.yaml", "include: base.yaml\n")
    assert error("tasks:\n  - include: tasks/nested.yaml\n").startswith(
        "tasks/nested.yaml:1: an included task file may not include another")
    assert error("tasks:\n  - include: ../outside.yaml\n").startswith(
        "s.yaml:2: '../outside.yaml' is outside the repository")
    assert error("tasks:\n  - include: [a]\n").startswith("s.yaml:2: include must be a task file path")


def test_duplicate_names_unknown_builtins_and_suite_paths(tmp_path, tokenizer):
    write(tmp_path / "d.json", [{"q": "hi there", "choices": ["a", "b"], "gold": 0}])
    write(tmp_path / "tasks" / "t.yaml", TASK.format(text='"{{q}}"').replace("d.json", "../d.json"))
    write(tmp_path / "s.yaml", "tasks:\n  - tasks/t.yaml\n  - tasks/t.yaml\n")
    with pytest.raises(InputError, match="task name 't' is used twice"):
        load_suite("s.yaml", tokenizer, root=tmp_path)
    write(tmp_path / "s.yaml", "tasks:\n  - tasks/t.yaml\n")
    suite = load_suite("s.yaml", tokenizer, root=tmp_path)
    assert suite.names == ["t"] and suite.tasks[0].source == "tasks/t.yaml"
    with pytest.raises(InputError, match="outside the repository"):
        load_suite("../s.yaml", tokenizer, root=tmp_path / "tasks")
    with pytest.raises(InputError, match="unknown builtin suite 'builtin:large'"):
        load_suite("builtin:large", tokenizer)


def test_lm_eval_suites_need_lm_eval(tokenizer, monkeypatch):
    import importlib.util

    from editgate.metrics.benchmarks import lm_eval as adapter

    find_spec = importlib.util.find_spec  # lm-eval is in the test extra: hide it to exercise the message
    monkeypatch.setattr(adapter.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval"
                        else find_spec(name, *a))
    with pytest.raises(InputError, match="install lm-eval"):
        load_suite("lm-eval:hellaswag,arc_easy", tokenizer)
    with pytest.raises(InputError, match="lm-eval:<task>"):
        load_suite("lm-eval:", tokenizer)
