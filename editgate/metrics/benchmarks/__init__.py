"""The benchmark suite run at checkpoints: small, log-likelihood based, batched.

A suite is a list of tasks, each a dataset of docs rendered through `{{field}}` templates into
log-likelihood requests (multiple choice, continuation or perplexity), prepared once (rendered and
tokenized) and scored on the model before editing and at each checkpoint; `compare` turns the two
sets of figures into per-task drops for the policy's `max_drop`. A suite is named by `builtin:<name>`,
`lm-eval:<task,...>[:limit]`, or a YAML file in the repository.

Modules, in import order (none imports torch when loaded, so `editgate validate` stays light):

- `results`: TaskResult (with per-doc outcomes), TaskComparison, accuracy_stderr, paired_stderr, compare
  (doc by doc against the baseline where both hold per-doc outcomes; figures, no model).
- `sources`: where task input comes from: Where (file:line errors), TaskDef, paths kept inside the
  repository, the packaged tasks.
- `templates`: Template, the `{{field}}`-only substitution that task files are rendered with.
- `datasets`: a task's docs: JSON/JSONL files, `hf:` datasets, and the builtin:wiki tasks (cloze, entity
  recall, reading, describe).
- `tasks`: the task format, Request and Task, preparing a task (render, tokenize) and scoring it.
- `lm_eval`: the lm-evaluation-harness adapter for `lm-eval:` suites.
- `suite`: Suite, load_suite, check_suite (validation without a model), suite files (`include:`);
  builtin:small (the default) and builtin:medium (the same tasks on more docs).
"""

from editgate.metrics.benchmarks.datasets import (BUILTIN_DATASETS, first_sentence, wiki_cloze_docs, wiki_describe_docs,
                                                  wiki_entity_docs, wiki_reading_docs)
from editgate.metrics.benchmarks.results import TaskComparison, TaskResult, accuracy_stderr, compare, paired_stderr
from editgate.metrics.benchmarks.suite import BUILTIN_SUITES, Suite, check_suite, load_suite
from editgate.metrics.benchmarks.tasks import Request, Task
from editgate.metrics.benchmarks.templates import Template

__all__ = ["BUILTIN_DATASETS", "BUILTIN_SUITES", "Request", "Suite", "Task", "TaskComparison", "TaskResult",
           "Template", "accuracy_stderr", "check_suite", "compare", "first_sentence", "load_suite", "paired_stderr",
           "wiki_cloze_docs", "wiki_describe_docs", "wiki_entity_docs", "wiki_reading_docs"]
