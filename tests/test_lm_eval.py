"""`lm-eval:` suites: a real lm-evaluation-harness task (its own YAML format, `dataset_path: json` over a
local JSONL file) gated on a tiny model and scored in memory by lm-eval, equal to what
`lm_eval.simple_evaluate` gives on the same model; and the repository never supplying lm-eval task files
(they can run code): names resolve only in lm-eval's registry and the runner's include directory.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from editgate.errors import InputError, RunError
from editgate.metrics.benchmarks import load_suite

from helpers import GOOD_EDIT, LENIENT_PERPLEXITY, messages, read_json, run_cli, write

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[test]')")

TASK = "editgate_capitals"
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
            ("Chile", "Santiago"), ("Greece", "Athens")]
QUESTIONS = ["The capital of {} is", "{}'s capital city is", "The seat of government of {} is in"]


def write_task(directory: Path, data: Path, name: str = TASK, extra: str = "") -> Path:
    """An lm-eval multiple-choice task over `data`, in lm-eval's own YAML format (a Jinja `{{ }}` template,
    `dataset_path: json`); its datasets cache beside it, not in ~/.cache."""
    return write(directory / f"{name}.yaml", textwrap.dedent(f"""\
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
          cache_dir: {directory.parent / "hf-datasets"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
          - metric: acc_norm
            aggregation: mean
            higher_is_better: true
        """) + extra)


def write_docs(path: Path, count: int = len(CAPITALS) * len(QUESTIONS)) -> Path:
    rng = random.Random(0)
    rows = []
    for question in QUESTIONS:
        for country, capital in CAPITALS:
            choices = rng.sample([c for _, c in CAPITALS if c != capital], 3) + [capital]
            rng.shuffle(choices)
            rows.append({"question": question.format(country), "choices": choices, "answer": choices.index(capital)})
    return write(path, "".join(json.dumps(row) + "\n" for row in rows[:count]))


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory) -> Path:
    """The runner's include directory (outside any repository): one task, its data beside it."""
    directory = tmp_path_factory.mktemp("runner") / "lm-eval-tasks"
    write_task(directory, write_docs(directory / "capitals.jsonl"))
    return directory


def lm_eval_policy(suite: str) -> str:
    lines = ["perplexity:", "  corpus: builtin:wiki", *(f"  {k}: {v}" for k, v in LENIENT_PERPLEXITY.items()),
             "benchmarks:", f"  suite: {suite}", "  run_at: end", "  max_drop: 1.0",
             "edits:", "  min_efficacy: 0.0", "  min_generalization: 0.0", "  min_locality: 0.0"]
    return "\n".join(lines) + "\n"


ONE_EDIT = {"edits/a.yaml": "edits:\n" + GOOD_EDIT.format(id="eiffel-rome")}


def direct(model, tokenizer, include: Path, limit: int | None = None) -> dict:
    """lm-eval's own figures for the task on `model`, with the settings the adapter documents."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=[TASK],
                          task_manager=TaskManager(include_path=str(include), include_defaults=False),
                          limit=limit, log_samples=False, bootstrap_iters=1000)
    return out["results"][TASK]


def test_the_gate_scores_a_real_lm_eval_task_on_the_edited_model(tiny_repo, include_dir, tmp_path):
    """Through the CLI: the task named in the policy, found in --lm-eval-include, scored before and after
    the edit; report.json's figures are exactly lm-eval's on the unedited and on the edited model."""
    import editgate
    from editgate.config import load_config
    from editgate.models import load_model

    repo = tiny_repo(policy=lm_eval_policy(f"lm-eval:{TASK}"), manifests=ONE_EDIT)
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--lm-eval-include", str(include_dir))
    assert result.exit_code == 0, result.output
    assert f"benchmark {TASK} (lm-eval): acc" in result.stderr
    doc = read_json(out / "report.json")
    baseline = doc["benchmarks"]["baseline"][TASK]
    (point,) = doc["benchmarks"]["checkpoints"]
    (comparison,) = [c for c in point["benchmarks"] if c["task"] == TASK]
    assert (baseline["metric"], baseline["n"], comparison["metric"]) == ("acc", 36, "acc")
    assert baseline["seconds"] > 0

    cache = tmp_path / "cache"
    base = load_model(load_config(repo).model_spec(), device="cpu", dtype="float32", cache_dir=cache,
                      log=lambda _m: None)
    unedited = direct(base.model, base.tokenizer, include_dir)
    assert baseline["value"] == unedited["acc,none"] == comparison["base"]
    assert baseline["stderr"] == unedited["acc_stderr,none"]
    assert baseline["metrics"] == {"acc": unedited["acc,none"], "acc_norm": unedited["acc_norm,none"]}

    session = editgate.load_result(out, cache_dir=cache, log=lambda _m: None)
    assert any(not torch.equal(p, q) for p, q in zip(session.model.parameters(), base.model.parameters()))
    edited = direct(session.model, session.loaded.tokenizer, include_dir)
    assert comparison["now"] == edited["acc,none"]
    assert comparison["drop"] == pytest.approx(unedited["acc,none"] - edited["acc,none"])


def test_the_include_directory_also_comes_from_the_environment(tiny_repo, include_dir, monkeypatch):
    """EDITGATE_LM_EVAL_INCLUDE is the flag's twin (as EDITGATE_TRUST_REMOTE_CODE is --trust-remote-code)."""
    from editgate.config import Config

    repo = tiny_repo(policy=lm_eval_policy(f"lm-eval:{TASK}:5"), manifests=ONE_EDIT)
    monkeypatch.delenv("EDITGATE_LM_EVAL_INCLUDE", raising=False)
    assert Config(root=repo).lm_eval_include is None  # then the task is unknown (the next test)
    monkeypatch.setenv("EDITGATE_LM_EVAL_INCLUDE", str(include_dir))
    result = run_cli("validate", str(repo))
    assert result.exit_code == 0, result.output


def test_an_unknown_task_is_invalid_input_before_the_model_loads(tiny_repo, include_dir, tmp_path):
    repo = tiny_repo(policy=lm_eval_policy("lm-eval:editgate_capitalz"), manifests=ONE_EDIT)
    out = tmp_path / "out"
    result = run_cli("run", "--repo", str(repo), "--out", str(out), "--lm-eval-include", str(include_dir))
    assert result.exit_code == 2, result.output
    assert "loading" not in result.stderr  # found before the model was loaded
    text = result.output
    assert "'editgate_capitalz'" in text and f"did you mean '{TASK}'" in text
    assert "--lm-eval-include" in text and "EDITGATE_LM_EVAL_INCLUDE" in text and "lm-eval ls tasks" in text
    assert read_json(out / "report.json")["verdict"] == "invalid"


EVIL_YAML = """\
task: evil_task
dataset_path: json
dataset_kwargs: {data_files: {test: tasks/evil.jsonl}}
test_split: test
output_type: multiple_choice
process_docs: !function evil.process_docs
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""


@pytest.fixture
def evil_repo(tiny_repo, tmp_path):
    """A repository shipping an lm-eval task whose `!function` imports Python that leaves a marker file."""
    marker = tmp_path / "code-ran"
    repo = tiny_repo(policy=lm_eval_policy("lm-eval:evil_task"), manifests=ONE_EDIT)
    write(repo / "tasks" / "evil.yaml", EVIL_YAML)
    write(repo / "tasks" / "evil.py", f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                      "def process_docs(dataset):\n    return dataset\n")
    write_docs(repo / "tasks" / "evil.jsonl", 4)
    return repo, marker


def test_lm_eval_would_run_the_repositorys_function_tag(evil_repo):
    """The positive control: handed the file, lm-eval imports the Python beside it."""
    from lm_eval.tasks import TaskManager

    repo, marker = evil_repo
    with pytest.raises(Exception):  # noqa: B017 - whatever follows the import (the data path) may fail
        TaskManager(include_defaults=False).load([str(repo / "tasks" / "evil.yaml")])
    assert marker.exists()


def test_the_repository_cannot_make_lm_eval_read_its_task_files(evil_repo, include_dir, tmp_path, monkeypatch):
    """Neither the policy nor editgate.yaml nor a path as a task name reaches the repository's task YAML, and
    its `!function` never runs; an include directory inside the repository is refused too."""
    repo, marker = evil_repo
    monkeypatch.chdir(repo)  # where lm-eval would resolve a relative path
    policy = repo / "policies" / "default.yaml"

    def invalid(*args: str, env: dict | None = None) -> str:
        result = run_cli(*args, env=env)
        assert result.exit_code == 2, result.output
        return result.output

    for suite in ("lm-eval:tasks/evil.yaml", f"lm-eval:{repo / 'tasks' / 'evil.yaml'}", "lm-eval:evil_task"):
        policy.write_text(lm_eval_policy(suite))
        assert "is not in lm-eval's registry" in invalid("run", "--repo", str(repo), "--out", str(tmp_path / "out"),
                                          "--lm-eval-include", str(include_dir))
    runner = ("--lm-eval-include", str(include_dir))  # lm-eval's registry is then indexed once for the module
    policy.write_text(lm_eval_policy("tasks/evil.yaml"))  # as editgate's own suite format: a safe loader
    assert "!function" in invalid("validate", str(repo), *runner)
    policy.write_text(lm_eval_policy("lm-eval:evil_task").replace("  run_at:", "  lm_eval_include: tasks\n  run_at:"))
    assert "lm_eval_include" in invalid("validate", str(repo), *runner)
    policy.write_text(lm_eval_policy("lm-eval:evil_task"))
    config = repo / "editgate.yaml"
    config.write_text(config.read_text() + "lm_eval_include: tasks\n")
    assert "only the runner's owner" in invalid("validate", str(repo), *runner)
    config.write_text(config.read_text().replace("lm_eval_include: tasks\n", ""))
    assert "inside the gated repository" in invalid("run", "--repo", str(repo), "--out", str(tmp_path / "out"),
                                                    "--lm-eval-include", str(repo / "tasks"))
    assert "inside the gated repository" in invalid("validate", str(repo),
                                                    env={"EDITGATE_LM_EVAL_INCLUDE": str(repo / "tasks")})
    assert not marker.exists()


def test_the_fingerprint_follows_the_include_directorys_bytes(tokenizer, tmp_path):
    """Cached baselines are keyed by the task files and the data they name (also outside the directory)."""
    tasks, data = tmp_path / "tasks", write_docs(tmp_path / "data" / "capitals.jsonl")
    write_task(tasks, data)

    def fingerprint() -> str:
        return load_suite(f"lm-eval:{TASK}", tokenizer, lm_eval_include=tasks).fingerprint()

    first = fingerprint()
    assert fingerprint() == first
    assert load_suite(f"lm-eval:{TASK}:5", tokenizer, lm_eval_include=tasks).fingerprint() != first
    original = data.read_bytes()
    data.write_bytes(original.replace(b"Paris", b"Lyon"))
    assert fingerprint() not in (first,)
    data.write_bytes(original)
    assert fingerprint() == first
    write(tasks / f"{TASK}.yaml", (tasks / f"{TASK}.yaml").read_text() + "num_fewshot: 0\n")
    assert fingerprint() != first
    write_task(tasks, Path("capitals.jsonl"), name="relative_data")  # read from the working directory
    with pytest.raises(InputError) as excinfo:
        fingerprint()
    assert "relative path 'capitals.jsonl'" in messages(excinfo)[0]


def test_a_run_is_deterministic_and_leaves_the_callers_state(load_tiny, include_dir, capsys):
    """lm-eval's seeds fixed and the global generators restored; the tokenizer untouched (HFLM may set a pad
    token on the one it gets); nothing on stdout; `limit` scores the first docs only."""
    loaded = load_tiny("llama")
    suite = load_suite(f"lm-eval:{TASK}:5", loaded.tokenizer, lm_eval_include=include_dir)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    pad, size = loaded.tokenizer.pad_token, len(loaded.tokenizer)
    first = suite.run(loaded.model)[TASK]
    second = suite.run(loaded.model)[TASK]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()
    assert (loaded.tokenizer.pad_token, len(loaded.tokenizer)) == (pad, size)
    assert capsys.readouterr().out == ""
    assert first.n == 5 and (first.value, first.stderr, first.metrics) == (second.value, second.stderr, second.metrics)
    assert first.value == direct(loaded.model, loaded.tokenizer, include_dir, limit=5)["acc,none"]


def test_a_model_hflm_cannot_take_is_a_clear_run_error(tokenizer, include_dir):
    suite = load_suite(f"lm-eval:{TASK}", tokenizer, lm_eval_include=include_dir)
    with pytest.raises(RunError, match="lm-evaluation-harness cannot evaluate this model"):
        suite.run(torch.nn.Linear(2, 2))


def test_the_memory_methods_wrapper_is_scored_row_by_row(load_tiny, include_dir, tmp_path):
    """HFLM passes no attention mask, so the memory router would see padding: a wrapper is scored at batch 1,
    and then equals lm-eval's figure at batch 1."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from editgate.manifests import Edit
    from editgate.methods.memory import MemoryHParams

    from helpers import editing_method

    loaded = load_tiny("llama")
    edit = Edit("eiffel-rome", "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    wrapped = editing_method("memory", loaded, tmp_path / "cache").apply(
        [edit], MemoryHParams(encoder="base", centre_texts=20, threshold=0.9)).model
    result = load_suite(f"lm-eval:{TASK}:8", loaded.tokenizer, lm_eval_include=include_dir).run(wrapped)[TASK]
    out = simple_evaluate(model=HFLM(pretrained=wrapped, tokenizer=loaded.tokenizer, batch_size=1), tasks=[TASK],
                          task_manager=TaskManager(include_path=str(include_dir), include_defaults=False), limit=8,
                          log_samples=False, bootstrap_iters=1000)
    assert (result.n, result.value) == (8, out["results"][TASK]["acc,none"])
    assert wrapped.rows > 0  # the rows went through the router


def test_the_headline_is_the_tasks_first_metric_it_can_gate():
    """From a `simple_evaluate` result: the first listed metric (filter `none` first, else the first filter),
    a lower-is-better figure only if editgate compares it as a ratio (then without stderr), "N/A" stderrs as
    None, a group's docs summed, and the seconds shared out among the leaf tasks by their docs."""
    from editgate.metrics.benchmarks.lm_eval import figures

    out = {
        "results": {
            "gsm": {"alias": "gsm", "exact_match,strict-match": 0.2, "exact_match_stderr,strict-match": 0.05,
                    "exact_match,flexible-extract": 0.3, "exact_match_stderr,flexible-extract": "N/A"},
            "lambada": {"perplexity,none": 30.0, "perplexity_stderr,none": 2.0, "acc,none": 0.4,
                        "acc_stderr,none": 0.02},
            "mt": {"ter,none": 50.0, "ter_stderr,none": 1.0, "bleu,none": 20.0, "bleu_stderr,none": 1.5},
            "group": {"alias": "group", "acc,none": 0.5, "acc_stderr,none": 0.01},
            "sub": {"acc,none": 0.5, "acc_stderr,none": 0.01},
            "plain_group": {"alias": "plain_group"},
        },
        "configs": {"gsm": {"metric_list": [{"metric": "exact_match"}]},
                    "lambada": {"metric_list": [{"metric": "perplexity"}, {"metric": "acc"}]},
                    "mt": {"metric_list": [{"metric": "ter"}, {"metric": "bleu"}]},
                    "sub": {"metric_list": [{"metric": "acc"}]}},
        "higher_is_better": {"gsm": {"exact_match": True}, "lambada": {"perplexity": False, "acc": True},
                             "mt": {"ter": False, "bleu": True}, "sub": {"acc": True}},
        "n-samples": {"gsm": {"effective": 10}, "lambada": {"effective": 20}, "mt": {"effective": 30},
                      "sub": {"effective": 40}},
        "group_subtasks": {"group": ["sub"], "plain_group": ["sub"]},
    }
    got = figures(out, 10.0)
    assert set(got) == {"gsm", "lambada", "mt", "group", "sub"}
    assert (got["gsm"].metric, got["gsm"].value, got["gsm"].stderr) == ("exact_match (strict-match)", 0.2, 0.05)
    assert got["gsm"].stderrs == {"exact_match (strict-match)": 0.05, "exact_match (flexible-extract)": None}
    lambada = got["lambada"]
    assert (lambada.metric, lambada.stderr, lambada.higher_is_better) == ("perplexity", None, False)
    assert got["mt"].metric == "bleu"  # TER is lower-is-better and not a ratio editgate compares
    assert (got["group"].n, got["group"].seconds) == (40, 10.0)
    assert [got[t].seconds for t in ("gsm", "lambada", "mt", "sub")] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match="no figure editgate can gate"):
        figures({"results": {"mt": {"ter,none": 50.0}}, "higher_is_better": {"mt": {"ter": False}},
                 "n-samples": {"mt": {"effective": 3}}}, 1.0)
