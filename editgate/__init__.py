"""editgate: a continuous-integration gate for knowledge edits to language models."""

__version__ = "0.1.0"
