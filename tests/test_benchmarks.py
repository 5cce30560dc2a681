"""The benchmark suite: builtin:small's data, scoring against unbatched references, standard errors,
comparison with a baseline, and task files as untrusted input (templates, paths, file:line errors)."""

from __future__ import annotations

import json
import math
import statistics
import textwrap

import pytest
import torch

from editgate.corpora import ROLE_BUCKETS, _bucket, load_texts, wiki_entries
from editgate.errors import InputError
from editgate.metrics.benchmarks import (TaskResult, accuracy_stderr, check_suite, compare, first_sentence,
                                         load_suite, wiki_cloze_docs, wiki_describe_docs)
from editgate.metrics.perplexity import PerplexitySample, perplexity


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


def test_builtin_small_is_deterministic(small_suite, tokenizer):
    again = load_suite("builtin:small", tokenizer)
    assert small_suite.names == ["wiki_cloze", "wiki_describe"]
    for a, b in zip(small_suite.tasks, again.tasks):
        assert a.requests == b.requests and a.sequences == b.sequences and a.starts == b.starts
        assert a.source.startswith("editgate/tasks/")
    assert [t.n for t in small_suite.tasks] == [120, 80]
    assert small_suite.fingerprint() == again.fingerprint()
    # the generators themselves: same seed, same docs; another seed, another draw
    assert wiki_describe_docs(7, 20) == wiki_describe_docs(7, 20) != wiki_describe_docs(8, 20)
    assert wiki_cloze_docs(7, 20) == wiki_cloze_docs(7, 20) != wiki_cloze_docs(8, 20)
    assert wiki_cloze_docs(7, 20)[:5] == wiki_cloze_docs(7, 5)  # a smaller limit is a prefix


def test_builtin_small_comes_from_the_benchmark_pool_only(small_suite):
    titles = {doc["title"] for doc in wiki_cloze_docs()} | {doc["title"] for doc in wiki_describe_docs()}
    assert titles and all(_bucket(t) in ROLE_BUCKETS["benchmark"] for t in titles)
    contexts = [r.context for task in small_suite.tasks if task.name == "wiki_cloze" for r in task.requests]
    assert len(contexts) == 120
    for role in ("perplexity", "stats"):
        pool = load_texts("builtin:wiki", role)
        assert not any(c in text for text in pool for c in contexts), f"a cloze sentence is in the {role} pool"
    # and the distractor descriptions too come from benchmark-pool articles
    benchmark_descriptions = {e["description"].strip() for e in wiki_entries("benchmark")}
    assert all(c in benchmark_descriptions for doc in wiki_describe_docs(limit=150) for c in doc["choices"])


def test_wiki_describe_has_four_distinct_choices_with_the_gold_among_them(small_suite):
    task = next(t for t in small_suite.tasks if t.name == "wiki_describe")
    docs = wiki_describe_docs(limit=80)
    assert len(task.requests) == 80
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


def test_builtin_tasks_run_on_a_tiny_model(load_tiny, tmp_path, tokenizer):
    write(tmp_path / "suite.yaml", """\
        tasks:
          - {task: cloze, dataset: "builtin:wiki-cloze", output_type: continuation,
             doc_to_text: "{{context}}", doc_to_target: "{{target}}", limit: 6}
          - {task: describe, dataset: "builtin:wiki-describe", output_type: multiple_choice,
             doc_to_text: "Title: {{title}}\\nDescription:", doc_to_choice: "{{choices}}", gold: gold, limit: 6}
        """)
    suite = load_suite("suite.yaml", tokenizer, root=tmp_path)
    logs = []
    results = suite.run(load_tiny("llama", layers=2).model, log=logs.append)
    assert list(results) == ["cloze", "describe"] and len(logs) == 2
    cloze, describe = results["cloze"], results["describe"]
    assert cloze.metric == "acc" and set(cloze.metrics) == {"acc", "perplexity"} and cloze.n == 6
    assert cloze.metrics["perplexity"] > 1000  # a random model over a 49k vocabulary
    assert describe.metric == "acc" and set(describe.metrics) == {"acc", "acc_norm"} and describe.n == 6
    assert all(0 <= r.value <= 1 and r.seconds > 0 for r in results.values())
    restored = {k: TaskResult.from_dict(json.loads(json.dumps(v.to_dict()))) for k, v in results.items()}
    assert restored == results  # results survive a JSON cache


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
    assert check_suite("builtin:small") == ["wiki_cloze", "wiki_describe"]
    assert error("suite: [a]\n", "s.yaml").startswith("s.yaml:1: a suite file needs a 'tasks:' list")
    write(tmp_path / "bad.jsonl", '{"q": "a"}\n{"q": \n')
    assert "bad.jsonl:2: invalid JSON" in error(TASK.format(text='"{{q}}"').replace("d.json", "bad.jsonl"))


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
