"""The benchmark suite run at checkpoints: small, log-likelihood based, batched.

Tasks are YAML in a subset of lm-evaluation-harness's task format:

```yaml
task: my_task                        # name
dataset: data/my_task.jsonl          # JSON/JSONL file, hf:<dataset>[:<config>]:<split>, or builtin:wiki-*
output_type: multiple_choice         # multiple_choice | continuation | perplexity
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"         # a list field, or a YAML list of templates
gold: label                          # field holding the gold choice: an index or the choice's text
doc_to_target: "{{answer}}"          # continuation: the text that must follow
limit: 200                           # the first N docs
metric: [acc, acc_norm]              # the first is the task's headline figure
```

Templates are `{{field}}` substitutions and nothing else: task files arrive in pull requests, so there is
no Jinja, no expressions, no attribute access; anything else between braces is rejected.

Scoring follows lm-evaluation-harness: the context and each continuation are tokenized separately and
their ids concatenated (every choice shares the context's tokens); a choice's log-likelihood is the
sum over its tokens; `acc_norm` divides it by the choice's length in UTF-8 bytes; continuation accuracy
is greedy exact match (every target token is the argmax under teacher forcing, LAMBADA-style);
perplexity is token-weighted over the docs; standard errors are sqrt(p(1-p)/(n-1)). Everything is
scored in one batched pass per task through `score_sequences`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from editgate.errors import InputError, Problem, RunError
from editgate.metrics.perplexity import safe_exp
from editgate.metrics.scoring import score_sequences
from editgate.paths import PathError, load_hf_dataset, named_file, parse_hf
from editgate.yamlio import describe, line_of, load_records, load_yaml, unknown_key

PACKAGED_TASKS = Path(__file__).resolve().parent.parent / "tasks"
BUILTIN_SUITES = ("small",)
BUILTIN_DATASETS = ("builtin:wiki-cloze", "builtin:wiki-describe")
FORMAT_VERSION = 1  # part of every fingerprint: bump when scoring changes meaning

# output_type -> canonical name; lm-evaluation-harness's own names are accepted as aliases.
OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "continuation": "continuation",
                "loglikelihood": "continuation", "perplexity": "perplexity",
                "loglikelihood_rolling": "perplexity"}
METRICS = {"multiple_choice": ("acc", "acc_norm"), "continuation": ("acc", "perplexity"),
           "perplexity": ("perplexity",)}
TASK_KEYS = ("task", "dataset", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "gold",
             "limit", "metric", "target_delimiter", "seed", "max_tokens")
DEFAULT_MAX_TOKENS = 1024


# --- results -------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    """One task's headline figure (`metric`, the first the task lists) and every other it computed."""

    name: str
    metric: str
    value: float
    stderr: float | None  # None where no standard error is defined (perplexity)
    n: int  # docs scored
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    stderrs: dict[str, float | None] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "perplexity"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskResult":
        return cls(**{k: data[k] for k in ("name", "metric", "value", "stderr", "n", "seconds")},
                   metrics=dict(data.get("metrics", {})), stderrs=dict(data.get("stderrs", {})))


@dataclass
class TaskComparison:
    """A task before and after editing. `drop` is base - now for accuracies, and the relative increase
    now/base - 1 for perplexity; both are compared with the policy's `max_drop`."""

    task: str
    metric: str
    base: float
    now: float
    drop: float
    stderr: float | None  # of the difference, sqrt(se_base^2 + se_now^2)
    within_noise: bool  # drop <= 2 standard errors of the difference
    failed: bool  # drop > max_drop (or the figure is no longer a number)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_stderr(p: float, n: int) -> float:
    """lm-evaluation-harness's standard error of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1))."""
    if n < 2:
        return math.nan
    return math.sqrt(p * (1 - p) / (n - 1))


def compare(base: dict[str, TaskResult], now: dict[str, TaskResult], max_drop: float) -> list[TaskComparison]:
    """Each task's drop from the baseline; `failed` when it exceeds `max_drop`, `within_noise` when it is
    no larger than two standard errors of the difference. Both dicts must hold the same tasks."""
    if set(base) != set(now):
        raise ValueError(f"baseline tasks {sorted(base)} differ from current tasks {sorted(now)}")
    out = []
    for name, b in base.items():
        n = now[name]
        if b.metric != n.metric:
            raise ValueError(f"task {name}: baseline metric {b.metric} differs from {n.metric}")
        if b.higher_is_better:
            drop = b.value - n.value
        else:
            drop = n.value / b.value - 1 if b.value > 0 else math.inf
        se = None
        if b.stderr is not None and n.stderr is not None and math.isfinite(b.stderr) and math.isfinite(n.stderr):
            se = math.sqrt(b.stderr ** 2 + n.stderr ** 2)
        broken = not math.isfinite(n.value) or math.isnan(drop)
        within_noise = se is not None and not broken and drop <= 2 * se + 1e-12
        failed = broken or drop > max_drop + 1e-9  # 0.90 - 0.85 is 0.05000000000000004, not a failure
        out.append(TaskComparison(name, b.metric, b.value, n.value, drop, se, within_noise, failed))
    return out


# --- templates -----------------------------------------------------------------------------------

_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_MARKUP = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")


class Template:
    """`{{field}}` replaced by str(doc[field]); any other `{{`, `{%` or `{#` is refused when loading.

    Lookup is a plain dict subscript on the doc, so no attribute, item or call can ever run."""

    def __init__(self, text: str, where: "_Where", key: str):
        self.text, self.where, self.key = text, where, key
        rest = _FIELD.sub("", text)
        bad = _MARKUP.search(rest)
        if bad:
            raise where.error(key, f"{key}: only {{{{field}}}} substitutions are allowed (no expressions, "
                                   f"filters, dots or Jinja blocks); found {_snippet(rest, bad.start())!r}")
        self.fields = tuple(_FIELD.findall(text))
        dunder = [f for f in self.fields if f.startswith("__")]
        if dunder:
            raise where.error(key, f"{key}: field names may not start with '__' ({dunder[0]!r})")
        self.whole_field = self.fields[0] if _FIELD.fullmatch(text.strip()) else None

    def value(self, doc: dict, index: int) -> Any:
        """The raw field when the template is exactly one `{{field}}` (a list for doc_to_choice)."""
        if self.whole_field is not None:
            return self._lookup(doc, self.whole_field, index)
        return self.render(doc, index)

    def render(self, doc: dict, index: int) -> str:
        def one(match: re.Match) -> str:
            value = self._lookup(doc, match.group(1), index)
            if isinstance(value, (dict, list, tuple)) or value is None:
                raise self.where.error(self.key, f"{self.key}: doc {index}: field {match.group(1)!r} is "
                                                 f"{describe(value)}, not text")
            return str(value)

        return _FIELD.sub(one, self.text)

    def _lookup(self, doc: dict, name: str, index: int) -> Any:
        if not isinstance(doc, dict):
            raise self.where.error(self.key, f"doc {index} is {describe(doc)}, not a record with fields")
        if name not in doc:
            fields = ", ".join(sorted(map(str, doc))[:12])
            raise self.where.error(self.key, f"{self.key}: doc {index} has no field {name!r} (fields: {fields})")
        return doc[name]


def _snippet(text: str, at: int) -> str:
    return text[max(0, at - 10): at + 20]


@dataclass
class _Where:
    """A task's source (file shown to the user) and its mapping, for file:line errors."""

    file: str
    data: Any

    def error(self, key: str | None, message: str) -> InputError:
        return InputError(Problem(self.file, line_of(self.data, key), message))


# --- task definitions ----------------------------------------------------------------------------


@dataclass
class Request:
    """One doc, rendered: a context and its continuations (choices, the target, or the text itself)."""

    context: str
    continuations: list[str]
    gold: int = 0
    choice_bytes: list[int] = field(default_factory=list)


@dataclass
class Task:
    """A task with its docs rendered and tokenized once; `evaluate` scores a model on it."""

    name: str
    output_type: str
    metrics: list[str]
    source: str
    requests: list[Request]
    sequences: list[list[int]]  # one per (doc, continuation), in request order
    starts: list[int]  # where each sequence's scored continuation begins

    @property
    def n(self) -> int:
        return len(self.requests)

    def evaluate(self, model: torch.nn.Module, batch_tokens: int, pad_id: int) -> TaskResult:
        start = time.perf_counter()
        scored = score_sequences(model, self.sequences, self.starts, batch_tokens, pad_id)
        values: dict[str, float] = {}
        stderrs: dict[str, float | None] = {}
        if self.output_type == "multiple_choice":
            acc, acc_norm, i = [], [], 0
            for req in self.requests:
                lls = [float(s.logprobs.double().sum()) for s in scored[i: i + len(req.continuations)]]
                i += len(req.continuations)
                acc.append(_argmax(lls) == req.gold)
                acc_norm.append(_argmax([ll / max(b, 1) for ll, b in zip(lls, req.choice_bytes)]) == req.gold)
            for name, hits in (("acc", acc), ("acc_norm", acc_norm)):
                values[name] = sum(hits) / len(hits)
                stderrs[name] = accuracy_stderr(values[name], len(hits))
        else:
            hits = [bool(s.greedy_hits.all()) for s in scored]
            nll = sum(float(-s.logprobs.double().sum()) for s in scored)
            tokens = sum(len(s.logprobs) for s in scored)
            values["perplexity"] = safe_exp(nll / tokens)
            stderrs["perplexity"] = None
            if self.output_type == "continuation":
                values["acc"] = sum(hits) / len(hits)
                stderrs["acc"] = accuracy_stderr(values["acc"], len(hits))
        headline = self.metrics[0]
        return TaskResult(self.name, headline, values[headline], stderrs[headline], self.n,
                          time.perf_counter() - start,
                          {m: values[m] for m in self.metrics}, {m: stderrs[m] for m in self.metrics})

    def digest_input(self) -> list:
        return [self.name, self.output_type, self.metrics, self.sequences, self.starts,
                [r.gold for r in self.requests], [r.choice_bytes for r in self.requests]]


def _argmax(values: list[float]) -> int:
    """The first maximum; a NaN never wins (a collapsed model gets the doc wrong, not right)."""
    best, best_i = -math.inf, -1
    for i, v in enumerate(values):
        if not math.isnan(v) and (best_i < 0 or v > best):
            best, best_i = v, i
    return best_i


# --- suites --------------------------------------------------------------------------------------


@dataclass
class Suite:
    """Tasks prepared once (docs built and tokenized); `run` scores a model on all of them."""

    spec: str
    tasks: list[Task]
    batch_tokens: int = 2048
    pad_id: int = 0
    lm_eval: "_LmEvalTasks | None" = None

    @property
    def names(self) -> list[str]:
        return self.lm_eval.names if self.lm_eval else [t.name for t in self.tasks]

    def run(self, model: torch.nn.Module, log: Callable[[str], None] | None = None) -> dict[str, TaskResult]:
        if self.lm_eval is not None:
            return self.lm_eval.run(model, log)
        results = {}
        for task in self.tasks:
            result = task.evaluate(model, self.batch_tokens, self.pad_id)
            results[task.name] = result
            if log:
                se = f" ± {result.stderr:.3f}" if result.stderr is not None else ""
                log(f"benchmark {task.name}: {result.metric} {result.value:.3f}{se} "
                    f"(n={result.n}, {result.seconds:.1f}s)")
        return results

    def fingerprint(self) -> str:
        """A digest of everything that decides the figures (tasks, token ids, gold answers), for
        keying cached baselines."""
        h = hashlib.sha256(f"editgate-benchmarks-v{FORMAT_VERSION}".encode())
        if self.lm_eval is not None:
            h.update(json.dumps([self.spec, self.lm_eval.version()]).encode())
        for task in self.tasks:
            h.update(json.dumps(task.digest_input()).encode())
        return h.hexdigest()[:16]


def load_suite(spec: str, tokenizer, root: Path | None = None, batch_tokens: int = 2048) -> Suite:
    """A suite from `builtin:<name>`, `lm-eval:<task,...>[:limit]`, or a YAML file (a suite listing task
    files and inline tasks, or a single task). With `root`, every file read must lie inside it."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if spec.startswith("lm-eval:"):
        return Suite(spec, [], batch_tokens, pad_id, _LmEvalTasks.parse(spec, tokenizer))
    return Suite(spec, _build(spec, tokenizer, root), batch_tokens, pad_id)


def check_suite(spec: str, root: Path | None = None) -> list[str]:
    """Validate a suite without a model or tokenizer (task files, templates, datasets, golds), for
    `editgate validate` and the gate's checks before loading the model. Returns the task names;
    raises InputError naming file:line."""
    if spec.startswith("lm-eval:"):
        return _LmEvalTasks.parse(spec, None).names
    return [task.name for task in _build(spec, None, root)]


def _build(spec: str, tokenizer, root: Path | None) -> list["Task"]:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_SUITES:
            raise InputError(Problem("<benchmarks.suite>", None, unknown_key(
                "builtin suite", spec, [f"builtin:{s}" for s in BUILTIN_SUITES])))
        path, shown, root = PACKAGED_TASKS / f"{name}.yaml", f"editgate/tasks/{name}.yaml", PACKAGED_TASKS
    else:
        path, shown = _inside(spec, root, None, "<benchmarks.suite>", None), spec
    tasks = [_prepare(defn, tokenizer) for defn in _read_suite(path, shown, root)]
    if not tasks:
        raise InputError(Problem(shown, None, "the suite has no tasks"))
    seen: dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise InputError(Problem(task.source, None, f"task name {task.name!r} is used twice "
                                                        f"(also in {seen[task.name]}); names must be unique"))
        seen[task.name] = task.source
    return tasks


def _inside(relative: str, root: Path | None, base: Path | None, shown: str, where: _Where | None,
            key: str | None = None) -> Path:
    """`relative` resolved against `base` (else `root`), kept inside `root` (editgate/paths.py)."""
    try:
        return named_file(root, relative, base=base)
    except PathError as error:
        raise (where.error(key, str(error)) if where else InputError(Problem(shown, None, str(error)))) from None


@dataclass
class _TaskDef:
    data: Any
    where: _Where
    base: Path  # the directory relative paths start from
    root: Path | None


def _read_suite(path: Path, shown: str, root: Path | None) -> list[_TaskDef]:
    data = load_yaml(path, shown)
    where = _Where(shown, data)
    if isinstance(data, dict) and "task" in data:  # a single task file is a suite of one
        return [_TaskDef(data, where, path.parent, root)]
    if not isinstance(data, dict) or "tasks" not in data:
        raise where.error(None, "a suite file needs a 'tasks:' list (task files or inline tasks), "
                                "or is a single task with a 'task:' name")
    extra = [k for k in data if k != "tasks"]
    if extra:
        raise where.error(extra[0], unknown_key("suite key", extra[0], ["tasks"]))
    entries = data["tasks"]
    if not isinstance(entries, list):
        raise where.error("tasks", f"tasks: must be a list, not {describe(entries)}")
    defs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            task_path = _inside(entry, root, path.parent, shown, _Where(shown, entries), i)
            task_shown = _shown_path(task_path, root)
            task_data = load_yaml(task_path, task_shown)
            defs.append(_TaskDef(task_data, _Where(task_shown, task_data), task_path.parent, root))
        elif isinstance(entry, dict):
            defs.append(_TaskDef(entry, _Where(shown, entry), path.parent, root))
        else:
            raise _Where(shown, entries).error(i, f"tasks[{i}] must be a task file path or an inline task "
                                                  f"mapping, not {describe(entry)}")
    return defs


def _shown_path(path: Path, root: Path | None) -> str:
    """A task file as the user knows it: relative to the repository (or the package's tasks)."""
    if root is not None:
        try:
            relative = path.relative_to(root.resolve()).as_posix()
            return relative if root.resolve() != PACKAGED_TASKS else f"editgate/tasks/{relative}"
        except ValueError:
            pass
    return str(path)


# --- preparing a task ----------------------------------------------------------------------------


def _prepare(defn: _TaskDef, tokenizer) -> Task:
    data, where = defn.data, defn.where
    if not isinstance(data, dict):
        raise where.error(None, f"a task must be a mapping, not {describe(data)}")
    for key in data:
        if key not in TASK_KEYS:
            raise where.error(key, unknown_key("task key", key, TASK_KEYS))
    name = _required_text(data, "task", where)
    dataset = _required_text(data, "dataset", where)
    kind = _required_text(data, "output_type", where)
    if kind not in OUTPUT_TYPES:
        raise where.error("output_type", unknown_key("output_type", kind, OUTPUT_TYPES))
    kind = OUTPUT_TYPES[kind]
    limit = _optional_int(data, "limit", where, None)
    seed = _optional_int(data, "seed", where, 1234, minimum=0)
    max_tokens = _optional_int(data, "max_tokens", where, DEFAULT_MAX_TOKENS, minimum=2)
    delimiter = data.get("target_delimiter", " ")
    if not isinstance(delimiter, str):
        raise where.error("target_delimiter", f"target_delimiter must be text, not {describe(delimiter)}")
    metrics = _metrics(data, kind, where)

    templates = {}
    for key in ("doc_to_text", "doc_to_target"):
        if key in data:
            templates[key] = Template(_required_text(data, key, where, allow_blank=True), where, key)
    choice_templates: list[Template] | Template | None = None
    if "doc_to_choice" in data:
        raw = data["doc_to_choice"]
        if isinstance(raw, list) and raw and all(isinstance(c, str) for c in raw):
            choice_templates = [Template(c, where, "doc_to_choice") for c in raw]
        elif isinstance(raw, str):
            choice_templates = Template(raw, where, "doc_to_choice")
        else:
            raise where.error("doc_to_choice", "doc_to_choice must be a template naming a list field "
                                               "(\"{{choices}}\") or a list of templates")
    gold_field = data.get("gold")
    if gold_field is not None and not isinstance(gold_field, str):
        raise where.error("gold", f"gold must be the name of a field, not {describe(gold_field)}")

    needs = {"multiple_choice": ("doc_to_text", "doc_to_choice", "gold"),
             "continuation": ("doc_to_text", "doc_to_target"), "perplexity": ()}[kind]
    for key in needs:
        if key not in data:
            raise where.error(None, f"task {name!r}: output_type {kind} needs {key}")
    if kind == "perplexity" and not templates:
        raise where.error(None, f"task {name!r}: output_type perplexity needs doc_to_text (the text to score)")

    docs = _docs(dataset, limit, seed, defn)
    if not docs:
        raise where.error("dataset", f"dataset {dataset!r} has no docs")
    requests = []
    for i, doc in enumerate(docs):
        if kind == "multiple_choice":
            context = templates["doc_to_text"].render(doc, i)
            choices = _choices(choice_templates, doc, i, where)
            gold = _gold(doc, gold_field, choices, i, where)
            requests.append(_request(context, [delimiter + c for c in choices], gold,
                                     [len(c.encode("utf-8")) for c in choices]))
        elif kind == "continuation":
            context = templates["doc_to_text"].render(doc, i)
            target = templates["doc_to_target"].render(doc, i)
            if not target.strip():
                raise where.error("doc_to_target", f"doc_to_target: doc {i} renders an empty target")
            requests.append(_request(context, [delimiter + target], 0, []))
        else:
            text = templates.get("doc_to_text", templates.get("doc_to_target")).render(doc, i)
            requests.append(Request("", [text]))
    if tokenizer is None:  # check_suite: validated, not tokenized
        return Task(name, kind, metrics, where.file, requests, [], [])
    sequences, starts = _tokenize(requests, tokenizer, max_tokens, kind)
    if kind == "perplexity":  # a one-token text has nothing to predict
        keep = [j for j, s in enumerate(sequences) if len(s) >= 2]
        requests = [requests[j] for j in keep]
        sequences, starts = [sequences[j] for j in keep], [starts[j] for j in keep]
        if not requests:
            raise where.error("dataset", f"dataset {dataset!r}: every text is shorter than two tokens")
    return Task(name, kind, metrics, where.file, requests, sequences, starts)


def _request(context: str, continuations: list[str], gold: int, choice_bytes: list[int]) -> Request:
    """Trailing whitespace of the context moves to the continuations, as lm-evaluation-harness does."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuations = [context[-n_spaces:] + c for c in continuations]
        context = context[:-n_spaces]
    return Request(context, continuations, gold, choice_bytes)


def _tokenize(requests: list[Request], tokenizer, max_tokens: int, kind: str) -> tuple[list[list[int]], list[int]]:
    """Context tokenized once per doc, each continuation separately, the ids concatenated; contexts are
    cut from the left (continuations from the right) to fit `max_tokens`."""
    sequences, starts = [], []
    prefix = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    for req in requests:
        if kind == "perplexity":
            ids = tokenizer(req.continuations[0])["input_ids"][:max_tokens]
            sequences.append(ids)
            starts.append(1)
            continue
        context = tokenizer(req.context)["input_ids"] if req.context else []
        if not context:  # nothing to condition on: the end-of-text token, as lm-eval does
            context = [prefix if prefix is not None else 0]
        for cont in req.continuations:
            cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"][: max_tokens - 1]
            ctx = context[-(max_tokens - len(cont_ids)):]
            sequences.append(ctx + cont_ids)
            starts.append(len(ctx))
    return sequences, starts


def _choices(templates, doc: dict, i: int, where: _Where) -> list[str]:
    if isinstance(templates, list):
        choices = [t.render(doc, i) for t in templates]
    else:
        value = templates.value(doc, i)
        if isinstance(value, str) and templates.whole_field is None:
            raise where.error("doc_to_choice", "doc_to_choice must name a list field (\"{{choices}}\") "
                                               "or be a list of templates")
        if not isinstance(value, list) or not all(isinstance(c, (str, int, float)) for c in value):
            raise where.error("doc_to_choice", f"doc_to_choice: doc {i}: field {templates.whole_field!r} "
                                               f"must be a list of texts, not {describe(value)}")
        choices = [str(c) for c in value]
    if len(choices) < 2:
        raise where.error("doc_to_choice", f"doc_to_choice: doc {i} has {len(choices)} choice(s); "
                                           "multiple choice needs at least 2")
    return choices


def _gold(doc: dict, gold_field: str, choices: list[str], i: int, where: _Where) -> int:
    if gold_field not in doc:
        raise where.error("gold", f"gold: doc {i} has no field {gold_field!r}")
    value = doc[gold_field]
    if isinstance(value, str) and value.strip().isdigit() and value not in choices:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return value
        raise where.error("gold", f"gold: doc {i}: index {value} is out of range for {len(choices)} choices")
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    raise where.error("gold", f"gold: doc {i}: {value!r} is neither a choice index nor one of the choices")


def _required_text(data: dict, key: str, where: _Where, allow_blank: bool = False) -> str:
    if key not in data:
        raise where.error(None, f"the task needs '{key}'")
    value = data[key]
    if not isinstance(value, str) or (not allow_blank and not value.strip()):
        raise where.error(key, f"{key} must be text, not {describe(value)}")
    return value


def _optional_int(data: dict, key: str, where: _Where, default: int | None, minimum: int = 1) -> int | None:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(key, f"{key} must be a whole number of at least {minimum}, not {describe(value)}")
    return value


def _metrics(data: dict, kind: str, where: _Where) -> list[str]:
    raw = data.get("metric", list(METRICS[kind]))
    if isinstance(raw, str):
        raw = [raw]
    names = []
    for item in raw if isinstance(raw, list) else [raw]:
        name = item.get("metric") if isinstance(item, dict) else item  # lm-eval writes [{metric: acc}]
        if not isinstance(name, str) or name not in METRICS[kind]:
            allowed = METRICS[kind]
            shown = repr(name) if isinstance(name, str) else describe(name)
            raise where.error("metric", f"metric {shown} is not available for output_type {kind}; "
                                        f"allowed: {', '.join(allowed)}")
        if name not in names:
            names.append(name)
    if not names:
        raise where.error("metric", "metric must name at least one metric")
    return names


# --- datasets ------------------------------------------------------------------------------------


def _docs(dataset: str, limit: int | None, seed: int, defn: _TaskDef) -> list[dict]:
    where = defn.where
    if dataset.startswith("builtin:"):
        if dataset == "builtin:wiki-cloze":
            docs = wiki_cloze_docs(seed, limit)
        elif dataset == "builtin:wiki-describe":
            docs = wiki_describe_docs(seed, limit)
        else:
            raise where.error("dataset", unknown_key("builtin dataset", dataset, BUILTIN_DATASETS))
    elif dataset.startswith("hf:"):
        docs = _hf_docs(dataset, limit, where)
    else:
        docs = _file_docs(_inside(dataset, defn.root, defn.base, where.file, where, "dataset"), defn.root)
    return docs[:limit] if limit is not None else docs


def _file_docs(path: Path, root: Path | None) -> list[dict]:
    """JSON (a list of records, or {"docs": [...]}) or JSONL (one record a line), read like YAML: bounded."""
    return [record for record, _ in load_records(path, _shown_path(path, root))]


def _hf_docs(spec: str, limit: int | None, where: _Where) -> list[dict]:
    """`hf:<dataset>[:<config>]:<split>` from the local datasets cache."""
    try:
        parsed = parse_hf(spec)
    except PathError as error:
        raise where.error("dataset", f"dataset {error}") from None
    try:
        data = load_hf_dataset(parsed)
    except Exception as exc:  # datasets raises many types for "not available offline"
        raise RunError(f"dataset {spec!r} could not be loaded (offline, only cached datasets work): {exc}") from exc
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]


# --- builtin:wiki tasks --------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"\.(?=\s+[\"'(\[]?[A-Z0-9]|\s*$)")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "ft", "no", "vs", "ca", "c", "inc", "ltd",
                  "co", "gen", "col", "lt", "sgt", "rev", "prof", "hon", "approx", "est", "b", "d", "fl"}
_LAST_WORD = re.compile(r"(.*\S)\s+([A-Za-z]{4,})\.", re.S)


@lru_cache(maxsize=1)
def _benchmark_articles() -> tuple[dict, ...]:
    """The builtin:wiki benchmark pool: disjoint from the perplexity and statistics pools by title hash."""
    from editgate.corpora import wiki_entries

    return tuple(wiki_entries("benchmark"))


def first_sentence(text: str) -> str | None:
    """The text up to the first full stop that ends a sentence (not an initial or abbreviation)."""
    for match in _SENTENCE_END.finditer(text):
        before = text[: match.start()].split()
        word = before[-1].lstrip("(\"'[") if before else ""
        if len(word) <= 1 or "." in word or word.lower() in _ABBREVIATIONS:
            continue
        return text[: match.end()]
    return None


def wiki_cloze_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """LAMBADA-style: the last word of a summary's first sentence, given the rest of the sentence.

    Summaries whose first sentence ends with a word of at least four letters and has 6-60 words, in an
    order shuffled by `seed`. Fields: title, context, target (the word, without its space)."""
    docs = []
    for article in _benchmark_articles():
        sentence = first_sentence(article.get("extract", "").strip())
        match = _LAST_WORD.fullmatch(sentence) if sentence else None
        if match and 6 <= len(sentence.split()) <= 60:
            docs.append({"title": article["title"], "context": match.group(1), "target": match.group(2)})
    random.Random(seed).shuffle(docs)
    return docs[:limit] if limit is not None else docs


def wiki_describe_docs(seed: int = 1234, limit: int | None = None) -> list[dict]:
    """Which of four descriptions fits the title: the article's own `description` and three drawn by
    `seed` from other articles whose descriptions differ (from it and each other, ignoring case) and do
    not mention the title. Fields: title, description, choices, gold (index)."""
    pool = [a for a in _benchmark_articles() if str(a.get("description", "")).strip()]
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    docs = []
    for index in order[:limit] if limit is not None else order:
        article = pool[index]
        title, true = article["title"], article["description"].strip()
        seen = {true.lower()}
        distractors: list[str] = []
        for _ in range(100_000):
            if len(distractors) == 3:
                break
            other = pool[rng.randrange(len(pool))]["description"].strip()
            if other.lower() in seen or title.lower() in other.lower():
                continue
            seen.add(other.lower())
            distractors.append(other)
        if len(distractors) < 3:
            raise RunError(f"builtin:wiki-describe: too few distinct descriptions for {title!r}")
        gold = rng.randrange(4)
        choices = distractors[:gold] + [true] + distractors[gold:]
        docs.append({"title": title, "description": true, "choices": choices, "gold": gold})
    return docs


# --- lm-evaluation-harness -----------------------------------------------------------------------


@dataclass
class _LmEvalTasks:
    """`lm-eval:<task,...>[:limit]`: lm-evaluation-harness tasks on the in-memory (edited) model.

    lm-eval is optional and not installed in editgate's own CI, so this path is not covered by tests."""

    names: list[str]
    limit: int | None
    tokenizer: Any

    @classmethod
    def parse(cls, spec: str, tokenizer) -> "_LmEvalTasks":
        body = spec.removeprefix("lm-eval:")
        tasks, _, limit = body.partition(":")
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names or (limit and not limit.isdigit()):
            raise InputError(Problem("<benchmarks.suite>", None, f"{spec!r}: write lm-eval:<task>[,<task>...]"
                                                                 "[:<limit>], e.g. lm-eval:arc_easy,piqa:200"))
        if importlib.util.find_spec("lm_eval") is None:
            raise InputError(Problem("<benchmarks.suite>", None,
                                     f"{spec!r} needs lm-evaluation-harness: install lm-eval (pip install lm-eval), "
                                     "or use builtin:small"))
        return cls(names, int(limit) if limit else None, tokenizer)

    def version(self) -> str:
        from importlib.metadata import version

        return version("lm_eval")

    def run(self, model, log) -> dict[str, TaskResult]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        start = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=8)
        out = simple_evaluate(model=lm, tasks=list(self.names), limit=self.limit, log_samples=False)
        seconds = time.perf_counter() - start
        results = {}
        for name, figures in out["results"].items():
            metric = next((m for m in ("acc", "acc_norm", "exact_match", "word_perplexity")
                           if f"{m},none" in figures), None)
            if metric is None:
                continue
            stderr = figures.get(f"{metric}_stderr,none")
            n = out.get("n-samples", {}).get(name, {}).get("effective", 0)
            value = float(figures[f"{metric},none"])
            results[name] = TaskResult(name, "perplexity" if metric == "word_perplexity" else metric, value,
                                       float(stderr) if isinstance(stderr, (int, float)) else None, int(n),
                                       seconds / max(len(self.names), 1))
            if log:
                log(f"benchmark {name} (lm-eval): {metric} {value:.3f}")
        return results
