"""A benchmark task: its YAML format, preparing it (docs rendered and tokenized once) and scoring it.

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

Scoring follows lm-evaluation-harness: the context and each continuation are tokenized separately and
their ids concatenated (every choice shares the context's tokens); a choice's log-likelihood is the
sum over its tokens; `acc_norm` divides it by the choice's length in UTF-8 bytes; continuation accuracy
is greedy exact match (every target token is the argmax under teacher forcing, LAMBADA-style);
perplexity is token-weighted over the docs; standard errors are sqrt(p(1-p)/(n-1)). Everything is
scored in one batched pass per task through `score_sequences`. A multiple-choice doc whose choices are
one token each is one sequence: the context, scored once, gives every choice's log-probability at its
last position (the same figures as one sequence per choice, at a quarter of the cost for four choices).
Each doc's outcome is kept (`TaskResult.per_doc`) so that a checkpoint is compared with the baseline
doc by doc (results.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from editgate.metrics.benchmarks.datasets import load_docs
from editgate.metrics.benchmarks.results import PER_DOC_NLL, PER_DOC_TOKENS, TaskResult, accuracy_stderr
from editgate.metrics.benchmarks.sources import TaskDef, Where
from editgate.metrics.benchmarks.templates import Template
from editgate.yamlio import describe, unknown_key

if TYPE_CHECKING:
    import torch

    from editgate.metrics.scoring import Forward

# part of every suite fingerprint: bump when scoring or a cached result changes meaning
FORMAT_VERSION = 2  # 2: per-doc outcomes in every result (a cached baseline without them is measured again)

# output_type -> canonical name; lm-evaluation-harness's own names are accepted as aliases.
OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "continuation": "continuation",
                "loglikelihood": "continuation", "perplexity": "perplexity",
                "loglikelihood_rolling": "perplexity"}
METRICS = {"multiple_choice": ("acc", "acc_norm"), "continuation": ("acc", "perplexity"),
           "perplexity": ("perplexity",)}
TASK_KEYS = ("task", "dataset", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "gold",
             "limit", "metric", "target_delimiter", "seed", "max_tokens")
DEFAULT_MAX_TOKENS = 1024


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
    sequences: list[list[int]]  # one per (doc, continuation) in request order; one per doc with `alternatives`
    starts: list[int]  # where each sequence's scored continuation begins
    alternatives: list[list[int] | None] = field(default_factory=list)  # per sequence: one-token choices

    @property
    def n(self) -> int:
        return len(self.requests)

    def docs(self, start: int, stop: int) -> "Task":
        """The same task on docs [start, stop) only: scoring a suite in parts, to stop once they settle."""
        first = [0]  # where each doc's sequences begin
        for request in self.requests:
            one_pass = self.alternatives and self.alternatives[first[-1]] is not None
            first.append(first[-1] + (1 if one_pass or self.output_type != "multiple_choice"
                                      else len(request.continuations)))
        lo, hi = first[start], first[stop]
        return dataclasses.replace(self, requests=self.requests[start:stop], sequences=self.sequences[lo:hi],
                                   starts=self.starts[lo:hi], alternatives=self.alternatives[lo:hi])

    def evaluate(self, model: torch.nn.Module, batch_tokens: int, pad_id: int,
                 forward: Forward | None = None) -> TaskResult:
        from editgate.metrics.perplexity import safe_exp  # torch: imported only to score a model
        from editgate.metrics.scoring import score_sequences

        start = time.perf_counter()
        scored = score_sequences(model, self.sequences, self.starts, batch_tokens, pad_id, forward,
                                 alternatives=self.alternatives or None)
        values: dict[str, float] = {}
        stderrs: dict[str, float | None] = {}
        per_doc: dict[str, list] = {}
        if self.output_type == "multiple_choice":
            per_doc["acc"], per_doc["acc_norm"] = [], []
            i = 0
            for req in self.requests:
                if self.alternatives and self.alternatives[i] is not None:
                    lls = scored[i].alternatives.double().tolist()
                    i += 1
                else:
                    lls = [float(s.logprobs.double().sum()) for s in scored[i: i + len(req.continuations)]]
                    i += len(req.continuations)
                per_doc["acc"].append(int(_argmax(lls) == req.gold))
                norm = [ll / max(b, 1) for ll, b in zip(lls, req.choice_bytes)]
                per_doc["acc_norm"].append(int(_argmax(norm) == req.gold))
            for name in ("acc", "acc_norm"):
                values[name] = sum(per_doc[name]) / len(per_doc[name])
                stderrs[name] = accuracy_stderr(values[name], len(per_doc[name]))
        else:
            per_doc["acc"] = [int(bool(s.greedy_hits.all())) for s in scored]
            per_doc[PER_DOC_NLL] = [float(-s.logprobs.double().sum()) for s in scored]
            per_doc[PER_DOC_TOKENS] = [len(s.logprobs) for s in scored]
            values["perplexity"] = safe_exp(sum(per_doc[PER_DOC_NLL]) / sum(per_doc[PER_DOC_TOKENS]))
            stderrs["perplexity"] = None
            if self.output_type == "continuation":
                values["acc"] = sum(per_doc["acc"]) / len(per_doc["acc"])
                stderrs["acc"] = accuracy_stderr(values["acc"], len(per_doc["acc"]))
        keep = [k for m in self.metrics for k in ((PER_DOC_NLL, PER_DOC_TOKENS) if m == "perplexity" else (m,))]
        headline = self.metrics[0]
        return TaskResult(self.name, headline, values[headline], stderrs[headline], self.n,
                          time.perf_counter() - start,
                          {m: values[m] for m in self.metrics}, {m: stderrs[m] for m in self.metrics},
                          {k: per_doc[k] for k in keep})

    def digest_input(self) -> list:
        return [self.name, self.output_type, self.metrics, self.sequences, self.starts, self.alternatives,
                [r.gold for r in self.requests], [r.choice_bytes for r in self.requests]]


def _argmax(values: list[float]) -> int:
    """The first maximum; a NaN never wins (a collapsed model gets the doc wrong, not right)."""
    best, best_i = -math.inf, -1
    for i, v in enumerate(values):
        if not math.isnan(v) and (best_i < 0 or v > best):
            best, best_i = v, i
    return best_i


# --- preparing a task ----------------------------------------------------------------------------


def prepare(defn: TaskDef, tokenizer) -> Task:
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

    docs = load_docs(dataset, limit, seed, defn)
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
    sequences, starts, alternatives = _tokenize(requests, tokenizer, max_tokens, kind)
    if kind == "perplexity":  # a one-token text has nothing to predict
        keep = [j for j, s in enumerate(sequences) if len(s) >= 2]
        requests = [requests[j] for j in keep]
        sequences, starts = [sequences[j] for j in keep], [starts[j] for j in keep]
        alternatives = [alternatives[j] for j in keep]
        if not requests:
            raise where.error("dataset", f"dataset {dataset!r}: every text is shorter than two tokens")
    return Task(name, kind, metrics, where.file, requests, sequences, starts, alternatives)


def _request(context: str, continuations: list[str], gold: int, choice_bytes: list[int]) -> Request:
    """Trailing whitespace of the context moves to the continuations, as lm-evaluation-harness does."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuations = [context[-n_spaces:] + c for c in continuations]
        context = context[:-n_spaces]
    return Request(context, continuations, gold, choice_bytes)


def _tokenize(requests: list[Request], tokenizer, max_tokens: int, kind: str):
    """Context tokenized once per doc, each continuation separately, the ids concatenated; contexts are
    cut from the left (continuations from the right) to fit `max_tokens`. Returns the sequences, where
    each one's scored part starts, and per sequence the one-token choices it scores (None: none)."""
    sequences, starts, alternatives = [], [], []
    prefix = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    for req in requests:
        if kind == "perplexity":
            ids = tokenizer(req.continuations[0])["input_ids"][:max_tokens]
            sequences.append(ids)
            starts.append(1)
            alternatives.append(None)
            continue
        context = tokenizer(req.context)["input_ids"] if req.context else []
        if not context:  # nothing to condition on: the end-of-text token, as lm-eval does
            context = [prefix if prefix is not None else 0]
        conts = [tokenizer(cont, add_special_tokens=False)["input_ids"][: max_tokens - 1]
                 for cont in req.continuations]
        if kind == "multiple_choice" and all(len(c) == 1 for c in conts):  # one pass scores every choice
            ctx = context[-(max_tokens - 1):]
            sequences.append(ctx + conts[0])
            starts.append(len(ctx))
            alternatives.append([c[0] for c in conts])
            continue
        for cont_ids in conts:
            ctx = context[-(max_tokens - len(cont_ids)):]
            sequences.append(ctx + cont_ids)
            starts.append(len(ctx))
            alternatives.append(None)
    return sequences, starts, alternatives


def _choices(templates, doc: dict, i: int, where: Where) -> list[str]:
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


def _gold(doc: dict, gold_field: str, choices: list[str], i: int, where: Where) -> int:
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


def _required_text(data: dict, key: str, where: Where, allow_blank: bool = False) -> str:
    if key not in data:
        raise where.error(None, f"the task needs '{key}'")
    value = data[key]
    if not isinstance(value, str) or (not allow_blank and not value.strip()):
        raise where.error(key, f"{key} must be text, not {describe(value)}")
    return value


def _optional_int(data: dict, key: str, where: Where, default: int | None, minimum: int = 1) -> int | None:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(key, f"{key} must be a whole number of at least {minimum}, not {describe(value)}")
    return value


def _metrics(data: dict, kind: str, where: Where) -> list[str]:
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
