"""The memory method's hyperparameters, their value checks, and the small text helpers every module of
the method shares (an edit as a sentence, routing-key fields, text hashes).

`prompt_format` is the counterfactual model's input: the base model itself with the edit stated in its
context (default "New fact: <prompt> <target>.\\n<input>": SERAC's untrained counterfactual variant).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editgate.errors import InputError
from editgate.limits import MAX_BATCH_EDITS, MAX_LAYER, MAX_TEXTS
from editgate.methods.hparams import HParamsBase, bounded

if TYPE_CHECKING:  # the registry imports this module, and manifests import the registry
    from editgate.manifests import Edit

ENCODERS = ("minilm", "base")
KEY_FIELDS = ("prompt", "subject", "paraphrases")
# Used when the edits give nothing to calibrate on (no paraphrases or no locality prompts), or when no
# threshold separates them; chosen from bench/memory_quality.py's routing figures on CounterFact with
# SmolLM2-135M. The base model's embeddings of in- and out-of-scope texts overlap more than minilm's,
# so its default leans to fewer false routings.
DEFAULT_THRESHOLDS = {"minilm": 0.65, "base": 0.8}


@dataclass
class MemoryHParams(HParamsBase):
    encoder: str = "minilm"  # scope classifier's embeddings: minilm (sentence encoder) or base (the model's own)
    threshold: float | None = None  # None: calibrated from paraphrases vs locality prompts, else the encoder's default
    prompt_format: str = "New fact: {fact}\n{input}"  # the counterfactual model's input; ends with {input}
    keys: str = "prompt,subject,paraphrases"  # which fields of an edit are routing keys
    # base encoder: hidden-state layer (None: the middle layer)
    layer: int | None = bounded(None, 0, MAX_LAYER, layer=True)
    # base encoder: statistics-corpus texts whose mean embedding is subtracted
    centre_texts: int = bounded(100, 1, MAX_TEXTS)
    # edits added per step (the gate checks perplexity after each step)
    batch_size: int = bounded(1, 1, MAX_BATCH_EDITS)

    @classmethod
    def value_problems(cls, overrides: dict[str, Any]) -> list[str]:
        """Messages for values of well-typed overrides that cannot work (see check_hparams)."""
        return value_problems(cls(**overrides))


def fact_of(edit: Edit) -> str:
    """The edit as a sentence: its prompt with the subject filled in, the new target, a full stop."""
    target = edit.target.strip()
    end = "" if target[-1:] in ".!?" else "."
    return f"{edit.text.rstrip()} {target}{end}"


def value_problems(hp: MemoryHParams) -> list[str]:
    """Value checks the type check in `check_hparams` cannot make (validate runs them too)."""
    problems = []
    if hp.encoder not in ENCODERS:
        problems.append(f"memory: encoder {hp.encoder!r} is unknown; choose one of {', '.join(ENCODERS)}")
    if "{fact}" not in hp.prompt_format or not hp.prompt_format.endswith("{input}") \
            or hp.prompt_format.count("{input}") != 1:
        problems.append("memory: prompt_format must contain {fact} and end with {input} "
                        f"(got {hp.prompt_format!r})")
    unknown = [k for k in key_fields(hp.keys) if k not in KEY_FIELDS]
    if unknown or not key_fields(hp.keys):
        problems.append(f"memory: keys must be a comma-separated subset of {','.join(KEY_FIELDS)} (got {hp.keys!r})")
    if hp.threshold is not None and not -1.0 <= hp.threshold <= 1.0:
        problems.append(f"memory: threshold is a cosine similarity in [-1, 1] (got {hp.threshold})")
    return problems


def check_values(hp: MemoryHParams) -> None:
    """Raise every value problem at once, before `apply` changes anything (an InputError, exit 2)."""
    problems = value_problems(hp)
    if problems:
        raise InputError(problems)


def key_fields(keys: str) -> tuple[str, ...]:
    """The `keys` hyperparameter as field names (blank items ignored, so "prompt," is "prompt")."""
    return tuple(k.strip() for k in keys.split(",") if k.strip())


def text_hash(text: str) -> str:
    """A cache key for a text's embedding: fixed size, however long the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
