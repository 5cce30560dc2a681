"""The lm-evaluation-harness adapter: `lm-eval:<task,...>[:limit]` suites, scored by lm-eval itself on the
in-memory (edited) model.

A repository may only *name* tasks. lm-eval task YAMLs can run code (`!function` imports the Python beside
them, `{{ }}` strings go through a non-sandboxed Jinja, `process_docs`, `custom_dataset`, a task `class`),
so a name is looked up in lm-eval's own registry and in the include directory the runner's owner gives
(`--lm-eval-include DIR` / EDITGATE_LM_EVAL_INCLUDE), never read as a path (lm-eval's TaskManager would
load an unregistered name as a YAML file), and that directory may not lie inside the gated repository.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from editgate.config import LM_EVAL_INCLUDE_ENV
from editgate.errors import InputError, Problem, RunError
from editgate.limits import MAX_TEXTS
from editgate.metrics.benchmarks.results import LOWER_IS_BETTER, TaskResult
from editgate.yamlio import did_you_mean

MAX_TASKS = 64  # names in one `lm-eval:` suite
BATCH_SIZE = 8  # HFLM's batch; 1 for a wrapper such as the memory method's (see _batch_size)
BOOTSTRAP_ITERS = 1000  # resamples for metrics without a closed-form stderr (lm-eval's CLI: 100,000)
# lm-eval's own defaults, passed explicitly: a task's figure is the one `lm-eval run` gives
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
INCLUDE_FLAG = "--lm-eval-include"
_WHERE = "<benchmarks.suite>"


@dataclass
class LmEvalTasks:
    """The tasks of an `lm-eval:` suite, resolved against lm-eval's registry and the runner's include dir."""

    names: list[str]
    limit: int | None
    tokenizer: Any
    include: Path | None = None  # the runner's include directory (absolute), or None
    digest: str = ""  # lm-eval's version, the include directory's files and the data its tasks name
    manager: Any = field(default=None, repr=False)  # lm_eval.tasks.TaskManager

    @classmethod
    def parse(cls, spec: str, tokenizer, include: str | Path | None = None,
              root: Path | None = None) -> "LmEvalTasks":
        """Check the spec and resolve every name before any model is loaded; InputError (exit 2) otherwise.
        `root`: the gated repository, which the include directory must not lie in."""
        body = spec.removeprefix("lm-eval:")
        tasks, _, limit = body.partition(":")
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names or (limit and not limit.isdigit()):
            raise InputError(Problem(_WHERE, None, f"{spec!r}: write lm-eval:<task>[,<task>...]"
                                                   "[:<limit>], e.g. lm-eval:arc_easy,piqa:200"))
        if len(names) > MAX_TASKS:
            raise InputError(Problem(_WHERE, None, f"{spec[:60]!r}...: at most {MAX_TASKS} lm-eval tasks"))
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InputError(Problem(_WHERE, None, f"{spec!r}: task {twice!r} is named twice"))
        if limit and not 1 <= int(limit) <= MAX_TEXTS:
            raise InputError(Problem(_WHERE, None, f"{spec!r}: the limit must be from 1 to {MAX_TEXTS:,} docs"))
        if importlib.util.find_spec("lm_eval") is None:
            raise InputError(Problem(_WHERE, None,
                                     f"{spec!r} needs lm-evaluation-harness: install lm-eval (pip install lm-eval), "
                                     "or use builtin:small"))
        directory = _include_dir(include, root)
        stamp = _files_digest(directory) if directory is not None else ""
        manager = _task_manager(directory, names, stamp)
        _check_names(names, manager, directory)
        from importlib.metadata import version

        digest = hashlib.sha256(json.dumps([version("lm_eval"), stamp, _data_digest(manager, directory),
                                            BATCH_SIZE, BOOTSTRAP_ITERS, SEEDS]).encode()).hexdigest()
        return cls(names, int(limit) if limit else None, tokenizer, directory, digest, manager)

    def run(self, model, log: Callable[[str], None] | None) -> dict[str, TaskResult]:
        """Each named task in its own `simple_evaluate` (so its seconds are its own, and its figure does not
        depend on the other tasks), lm-eval's seeds fixed and the caller's random state kept."""
        from lm_eval import simple_evaluate

        lm = _hflm(model, copy.deepcopy(self.tokenizer))  # HFLM may set a pad token, flips padding_side
        results: dict[str, TaskResult] = {}
        for name in self.names:
            start = time.perf_counter()
            with _quiet_lm_eval(), _own_random_state():
                out = simple_evaluate(model=lm, tasks=[name], task_manager=self.manager, limit=self.limit,
                                      log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS, **SEEDS)
            for task, result in figures(out, time.perf_counter() - start).items():
                if task in results:
                    raise InputError(Problem(_WHERE, None, f"lm-eval task {task!r} is part of two of the named "
                                                           f"tasks ({name!r} and an earlier one); name it once"))
                results[task] = result
                if log:
                    se = f" ± {result.stderr:.3f}" if result.stderr is not None else ""
                    log(f"benchmark {task} (lm-eval): {result.metric} {result.value:.3f}{se} "
                        f"(n={result.n}, {result.seconds:.1f}s)")
        return results


def figures(out: dict, seconds: float) -> dict[str, TaskResult]:
    """editgate's figures from one `simple_evaluate` result: per task (and group with an aggregate) the
    first metric its config lists (filter `none` first), its stderr, the docs scored, and `seconds` shared
    out among the leaf tasks by their docs (a group, whose figure is theirs, gets the whole)."""
    counts = {name: int(n.get("effective", 0)) for name, n in (out.get("n-samples") or {}).items()}
    total = sum(counts.values()) or 1
    results = {}
    for name, values in out["results"].items():
        keys = [k for k in values if _is_metric(k) and _number(values[k])]
        if not keys and name not in counts:
            continue  # a group without an aggregate: its tasks have their own figures
        key = _headline(keys, _listed_metrics(out, name), (out.get("higher_is_better") or {}).get(name, {}))
        if key is None:
            raise InputError(Problem(_WHERE, None, (
                f"lm-eval task {name!r} reports no figure editgate can gate (a higher-is-better metric, or "
                f"{', '.join(sorted(LOWER_IS_BETTER))}); name another task")))
        n = counts[name] if name in counts else sum(counts.get(t, 0) for t in _leaves(out, name))
        share = seconds * counts[name] / total if name in counts else seconds
        stderrs = {_label(k): _stderr(values, k) for k in keys}
        lower = key.partition(",")[0] in LOWER_IS_BETTER  # compared as a ratio, so no stderr of a difference
        results[name] = TaskResult(name, _label(key), float(values[key]), None if lower else stderrs[_label(key)],
                                   n, share, {_label(k): float(values[k]) for k in keys}, stderrs)
    return results


def _is_metric(key: str) -> bool:
    metric, comma, _ = key.partition(",")
    return bool(comma) and not metric.endswith("_stderr")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label(key: str) -> str:
    metric, _, filtered = key.partition(",")
    return metric if filtered == "none" else f"{metric} ({filtered})"


def _stderr(values: dict, key: str) -> float | None:
    metric, _, filtered = key.partition(",")
    value = values.get(f"{metric}_stderr,{filtered}")
    return float(value) if _number(value) else None  # lm-eval writes "N/A" where it has none


def _listed_metrics(out: dict, name: str) -> list[str]:
    config = (out.get("configs") or {}).get(name) or {}
    return [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]


def _headline(keys: list[str], listed: list[str], higher: dict) -> str | None:
    """The `metric,filter` key to gate on: the task's first listed metric that editgate can compare (higher
    is better, or a perplexity-like figure compared as a ratio), filter `none` before others."""
    def metric(key: str) -> str:
        return key.partition(",")[0]

    usable = [k for k in keys if higher.get(metric(k), True) or metric(k) in LOWER_IS_BETTER]
    order = {m: i for i, m in reversed(list(enumerate(listed)))}
    usable.sort(key=lambda k: (order.get(metric(k), len(listed)), k.partition(",")[2] != "none"))
    return usable[0] if usable else None


def _leaves(out: dict, group: str) -> list[str]:
    children = (out.get("group_subtasks") or {}).get(group, [])
    return [leaf for child in children for leaf in (_leaves(out, child) if child in out.get("group_subtasks", {})
                                                    else [child])]


# --- resolving names ---------------------------------------------------------------------------------


def _include_dir(include: str | Path | None, root: Path | None) -> Path | None:
    """The runner's include directory, checked: a directory, outside the gated repository."""
    if include is None or str(include) == "":
        return None
    where = f"{INCLUDE_FLAG} / {LM_EVAL_INCLUDE_ENV}"
    directory = Path(include).expanduser().resolve()
    if not directory.is_dir():
        raise InputError(Problem(where, None, f"{str(include)!r} is not a directory"))
    if root is not None:
        top = Path(root).resolve()
        if directory == top or top in directory.parents:
            raise InputError(Problem(where, None, f"{str(include)!r} lies inside the gated repository, whose "
                                                  "files a pull request controls, and lm-eval task files can run "
                                                  "code; keep the runner's task files outside the checkout"))
    return directory


_MANAGERS: dict[tuple, Any] = {}


def _task_manager(directory: Path | None, names: list[str], stamp: str):
    """A TaskManager, built once per process and include directory state. lm-eval's own index (thousands
    of YAML files, seconds) is left out when every name is a task of the include directory."""
    from lm_eval.tasks import TaskManager

    def build(defaults: bool):
        key = (str(directory), stamp, defaults)
        if key not in _MANAGERS:
            with _quiet_lm_eval():
                _MANAGERS[key] = TaskManager(include_path=str(directory) if directory else None,
                                             include_defaults=defaults)
        return _MANAGERS[key]

    if directory is not None:
        own = build(False)
        if all(_is_task(own.task_index.get(name)) for name in names):
            return own
    return build(True)


def _is_task(entry) -> bool:
    return entry is not None and getattr(entry.kind, "name", "") in ("TASK", "PY_TASK")


def _check_names(names: list[str], manager, directory: Path | None) -> None:
    """Every name must be registered: lm-eval would otherwise read it as a path to a task YAML."""
    known = manager.task_index
    problems = []
    for name in names:
        if name in known:
            continue
        where = (f" nor in {directory} (lm-eval skips a task file there it cannot parse)" if directory
                 else " and no include directory is given")
        problems.append(Problem(_WHERE, None, (
            f"lm-eval task {name!r} is not in lm-eval's registry{where}{did_you_mean(name, manager.all_tasks)}. "
            "Name a task "
            "`lm-eval ls tasks` lists; a task of your own is a YAML file in a directory the runner's owner gives "
            f"with {INCLUDE_FLAG} DIR or {LM_EVAL_INCLUDE_ENV}=DIR (task files in the repository are never read: "
            "they can run code)")))
    if problems:
        raise InputError(problems)


# --- what the figures depend on ------------------------------------------------------------------------


def _files_digest(directory: Path) -> str:
    """Every file under the include directory, by relative path and bytes (task YAMLs, Python, data)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.relative_to(directory).as_posix().encode() + b"\0")
        h.update(_sha256(path).encode())
    return h.hexdigest()


def _data_digest(manager, directory: Path | None) -> str:
    """The bytes of local data that the include directory's tasks name outside it (`dataset_kwargs:
    data_files:`, a local `dataset_path`); inside it, _files_digest has them. A relative path would be read
    from the working directory (in CI the checkout), so it is refused."""
    if directory is None:
        return ""
    h = hashlib.sha256()
    for name, entry in sorted(manager.task_index.items()):
        path = getattr(entry, "yaml_path", None)
        cfg = getattr(entry, "cfg", None)
        if path is None or not isinstance(cfg, dict) or directory not in Path(path).resolve().parents:
            continue
        kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
        named = _file_names(kwargs.get("data_files"))
        dataset = cfg.get("dataset_path")
        if isinstance(dataset, str) and dataset.startswith((".", "/", "~")):
            named.append(dataset)
        for item in named:
            if "://" in item:
                continue
            local = Path(item).expanduser()
            if not local.is_absolute():
                raise InputError(Problem(str(path), None, (
                    f"lm-eval task {name!r} names the relative path {item!r}: lm-eval reads it from the working "
                    "directory, in CI the gated checkout; give an absolute path")))
            files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else \
                sorted(Path(p) for p in _glob(local))
            for file in files:
                h.update(str(file).encode() + b"\0" + _sha256(file).encode())
    return h.hexdigest()


def _file_names(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return [f for item in data_files for f in _file_names(item)]
    if isinstance(data_files, dict):
        return [f for value in data_files.values() for f in _file_names(value)]
    return []


def _glob(path: Path) -> list[str]:
    import glob

    return [p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- running lm-eval ----------------------------------------------------------------------------------


def _batch_size(model) -> int:
    """1 for a wrapper (the memory method's): HFLM passes no attention mask, so padding would be routed
    as part of a row; a plain transformers model scores each row as if alone at any batch size."""
    from transformers import PreTrainedModel

    return BATCH_SIZE if isinstance(model, PreTrainedModel) else 1


def _hflm(model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    try:
        with _quiet_lm_eval():
            return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=_batch_size(model))
    except Exception as error:
        raise RunError(f"lm-evaluation-harness cannot evaluate this model ({type(model).__name__}): "
                       f"{type(error).__name__}: {error}; use builtin:small or a suite file instead") from error


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval's advice, progress bars, prints and environment probes kept out of the gate's output and
    time: its log at errors only (failures arrive as exceptions), its stdout and stderr (tqdm) dropped, so
    editgate's progress lines stay readable and stdout stays the verdict's; bootstrap resamples in this
    process (not a pool of every core); no `pip list`/`nvidia-smi`/`git describe` per call (the results'
    environment info, which editgate does not use)."""
    logger = logging.getLogger("lm_eval")
    multiproc, logger_level = os.environ.get("DISABLE_MULTIPROC"), logger.level
    logger.setLevel(logging.ERROR)
    os.environ["DISABLE_MULTIPROC"] = "1"
    patched = []
    evaluator = sys.modules.get("lm_eval.evaluator")
    for attr, stub in (("add_env_info", lambda storage: None), ("get_git_commit_hash", lambda: None)):
        if evaluator is not None and hasattr(evaluator, attr):
            patched.append((attr, getattr(evaluator, attr)))
            setattr(evaluator, attr, stub)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for attr, original in patched:
            setattr(evaluator, attr, original)
        logger.setLevel(logger_level)
        if multiproc is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = multiproc


@contextlib.contextmanager
def _own_random_state() -> Iterator[None]:
    """simple_evaluate seeds Python's, numpy's and torch's global generators; the caller's are restored, so
    a run does not depend on whether the baseline came from the cache."""
    import numpy as np
    import torch

    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
