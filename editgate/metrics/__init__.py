"""Measurements of a model: perplexity on a corpus, and how well edits took (edit metrics)."""

# part of the cache key of every cached score (baselines, stored states): a figure scored by another
# path may differ in the last bits, and compared doc by doc that can flip a near tie. Here, not in
# scoring.py, so that validation (which reads suites through suite.py) never imports torch.
# 2: scoring runs the output head only from a batch's first scored position (scoring.py); generation
# batches have no padding bound (generation.py)
SCORING_VERSION = 2
