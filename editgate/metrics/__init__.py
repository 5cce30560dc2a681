"""Measurements of a model: perplexity on a corpus, and how well edits took (edit metrics)."""
