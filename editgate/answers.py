"""Answers compared as a reader compares them (torch-free: `validate` uses it to find conflicting edits).

An edit took on a prompt when the model's continuation begins with the target after normalisation
(Unicode NFKC, case, runs of whitespace, the target's trailing punctuation), at a word boundary:
"Rome" is not matched by "Romania".
"""

from __future__ import annotations

import unicodedata

TRAILING = ".,;:!?\"')]}»”’"


def normalise_answer(text: str) -> str:
    """The text as a reader compares answers: NFKC, case-folded, whitespace collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def begins_with_answer(generated: str, answer: str) -> bool:
    """Whether `generated` starts with `answer` (normalised, trailing punctuation of the answer ignored),
    followed by the end of the text or a character that cannot continue a word."""
    said, wanted = normalise_answer(generated), normalise_answer(answer).rstrip(TRAILING).rstrip()
    if not wanted or not said.startswith(wanted):
        return False
    rest = said[len(wanted):]
    return not rest or not rest[0].isalnum()


def same_answer(a: str, b: str) -> bool:
    """Whether two answers are the same to a reader (normalised, trailing punctuation ignored)."""
    return normalise_answer(a).rstrip(TRAILING).rstrip() == normalise_answer(b).rstrip(TRAILING).rstrip()
