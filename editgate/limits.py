"""Bounds on every count a repository controls, so a pull request cannot exhaust the runner.

The bounds are far above any sensible setting (each says what it protects); a value beyond one is an
input error naming the file, the line and the bound, never a run that starts 100,000 threads.
"""

from __future__ import annotations

MAX_THREADS = 1024  # editgate.yaml's `threads`; a run uses at most the cores it may run on
MAX_SEED = 2**32 - 1  # numpy and torch generators take 32-bit seeds
MAX_STEPS = 10_000  # optimisation steps of one edit
MAX_TEXTS = 100_000  # texts of a sample (perplexity, statistics, benchmark docs)
MAX_TOKENS = 32_768  # tokens of one text
MAX_BATCH_TOKENS = 1_048_576  # tokens of one scored batch
MAX_BATCH_EDITS = 10_000  # edits applied as one update
MAX_LAYER = 10_000  # a layer index before the model is known (then: below its depth)
MAX_LAYERS_LISTED = 64  # layers one method edits at once
