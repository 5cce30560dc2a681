"""Suites: `builtin:<name>` (editgate/tasks/<name>.yaml), `lm-eval:<task,...>[:limit]`, or a YAML file in
the repository: a suite (`tasks:`, a list of task file paths and inline task mappings) or a single task.
`load_suite` prepares every task for a tokenizer; `check_suite` validates the same files, templates,
datasets and golds without a model or tokenizer, for `editgate validate`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from editgate.errors import InputError, Problem
from editgate.metrics.benchmarks.lm_eval import LmEvalTasks
from editgate.metrics.benchmarks.results import TaskResult
from editgate.metrics.benchmarks.sources import PACKAGED_TASKS, TaskDef, Where, inside, shown_path
from editgate.metrics.benchmarks.tasks import FORMAT_VERSION, Task, prepare
from editgate.metrics import SCORING_VERSION
from editgate.yamlio import describe, load_yaml, unknown_key

if TYPE_CHECKING:
    import torch

    from editgate.metrics.scoring import Forward

BUILTIN_SUITES = ("small", "medium")


@dataclass
class Suite:
    """Tasks prepared once (docs built and tokenized); `run` scores a model on all of them."""

    spec: str
    tasks: list[Task]
    batch_tokens: int = 2048
    pad_id: int = 0
    lm_eval: LmEvalTasks | None = None

    @property
    def names(self) -> list[str]:
        return self.lm_eval.names if self.lm_eval else [t.name for t in self.tasks]

    def run(self, model: torch.nn.Module, log: Callable[[str], None] | None = None,
            forward: Forward | None = None) -> dict[str, TaskResult]:
        """Every task's result; `forward` (editgate's own tasks): how a batch is run, e.g. from the
        prefix cache's states (the model's own pass by default)."""
        if self.lm_eval is not None:
            return self.lm_eval.run(model, log)
        results = {}
        for task in self.tasks:
            result = task.evaluate(model, self.batch_tokens, self.pad_id, forward)
            results[task.name] = result
            if log:
                se = f" ± {result.stderr:.3f}" if result.stderr is not None else ""
                log(f"benchmark {task.name}: {result.metric} {result.value:.3f}{se} "
                    f"(n={result.n}, {result.seconds:.1f}s)")
        return results

    def fingerprint(self) -> str:
        """A digest of everything that decides the figures (tasks, token ids, gold answers; for lm-eval its
        version and the bytes of the runner's task files and their data), for keying cached baselines."""
        h = hashlib.sha256(f"editgate-benchmarks-v{FORMAT_VERSION}-scoring-v{SCORING_VERSION}".encode())
        if self.lm_eval is not None:
            h.update(json.dumps([self.spec, self.lm_eval.digest]).encode())
        for task in self.tasks:
            h.update(json.dumps(task.digest_input()).encode())
        return h.hexdigest()[:16]


def load_suite(spec: str, tokenizer, root: Path | None = None, batch_tokens: int = 2048,
               lm_eval_include: str | Path | None = None) -> Suite:
    """A suite from `builtin:<name>`, `lm-eval:<task,...>[:limit]`, or a YAML file (a suite listing task
    files and inline tasks, or a single task). With `root`, every file read must lie inside it.
    `lm_eval_include`: the runner's directory of lm-eval task files (never the repository's)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if spec.startswith("lm-eval:"):
        return Suite(spec, [], batch_tokens, pad_id, LmEvalTasks.parse(spec, tokenizer, lm_eval_include, root))
    return Suite(spec, _build(spec, tokenizer, root), batch_tokens, pad_id)


def check_suite(spec: str, root: Path | None = None, lm_eval_include: str | Path | None = None) -> list[str]:
    """Validate a suite without a model or tokenizer (task files, templates, datasets, golds; lm-eval task
    names against its registry and the runner's include directory), for `editgate validate` and the gate's
    checks before loading the model. Returns the task names; raises InputError naming file:line."""
    if spec.startswith("lm-eval:"):
        return LmEvalTasks.parse(spec, None, lm_eval_include, root).names
    return [task.name for task in _build(spec, None, root)]


def _build(spec: str, tokenizer, root: Path | None) -> list[Task]:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_SUITES:
            raise InputError(Problem("<benchmarks.suite>", None, unknown_key(
                "builtin suite", spec, [f"builtin:{s}" for s in BUILTIN_SUITES])))
        path, shown, root = PACKAGED_TASKS / f"{name}.yaml", f"editgate/tasks/{name}.yaml", PACKAGED_TASKS
    else:
        path, shown = inside(spec, root, None, "<benchmarks.suite>", None), spec
    tasks = [prepare(defn, tokenizer) for defn in _read_suite(path, shown, root)]
    if not tasks:
        raise InputError(Problem(shown, None, "the suite has no tasks"))
    seen: dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise InputError(Problem(task.source, None, f"task name {task.name!r} is used twice "
                                                        f"(also in {seen[task.name]}); names must be unique"))
        seen[task.name] = task.source
    return tasks


def _read_suite(path: Path, shown: str, root: Path | None) -> list[TaskDef]:
    data = load_yaml(path, shown)
    where = Where(shown, data)
    if isinstance(data, dict) and ("task" in data or "include" in data):  # a single task file is a suite of one
        return [_included(TaskDef(data, where, path.parent, root))]
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
            task_path = inside(entry, root, path.parent, shown, Where(shown, entries), i)
            task_shown = shown_path(task_path, root)
            task_data = load_yaml(task_path, task_shown)
            defs.append(_included(TaskDef(task_data, Where(task_shown, task_data), task_path.parent, root)))
        elif isinstance(entry, dict):
            defs.append(_included(TaskDef(entry, Where(shown, entry), path.parent, root)))
        else:
            raise Where(shown, entries).error(i, f"tasks[{i}] must be a task file path or an inline task "
                                                  f"mapping, not {describe(entry)}")
    return defs


def _included(defn: TaskDef) -> TaskDef:
    """A task with `include: <task file>` is that file's task with this mapping's keys on top
    (lm-evaluation-harness's `include`, one level: an included file may not include another). Relative
    paths stay relative to the file that names them: the included file's, unless `dataset` is set here."""
    data, where = defn.data, defn.where
    if not isinstance(data, dict) or "include" not in data:
        return defn
    name = data["include"]
    if not isinstance(name, str) or not name.strip():
        raise where.error("include", f"include must be a task file path, not {describe(name)}")
    path = inside(name, defn.root, defn.base, where.file, where, "include")
    shown = shown_path(path, defn.root)
    base_data = load_yaml(path, shown)
    if not isinstance(base_data, dict):
        raise Where(shown, base_data).error(None, f"an included task must be a mapping, not {describe(base_data)}")
    if "include" in base_data:
        raise Where(shown, base_data).error("include", "an included task file may not include another")
    merged = {**base_data, **{k: v for k, v in data.items() if k != "include"}}
    base = defn.base if "dataset" in data else path.parent
    return TaskDef(merged, Where(where.file, data, Where(shown, base_data)), base, defn.root)
