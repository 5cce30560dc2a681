"""Edits that contradict each other, found from their text before any model is loaded.

A gate that measures locality ("this prompt's answer must not change") and efficacy at the end of a
run blames the wrong edit when the run itself changes that answer on purpose: one edit's locality prompt
asks the very fact another edit rewrites (the Colosseum must stay in Rome; a later edit moves it to
Athens), or two edits set the same fact and the later one wins. Such figures are left out of the
end-of-run minimums (the report says which and why) and `validate` warns about them, naming both edits.

A prompt states an edit's fact when it mentions the edit's subject (normalised, at word boundaries) and
what is left with the subject taken out is the edit's relation: its own prompt or one of its
paraphrases with the subject taken out. A locality prompt that mentions the subject and gives the
edit's `ground_truth` (the answer the edit replaces) as its answer states it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from editgate.answers import normalise_answer, same_answer
from editgate.errors import Problem
from editgate.manifests import Edit

LOCALITY, SAME_FACT, OWN_FACT = "locality", "same-fact", "own-fact"


@dataclass(frozen=True)
class Conflict:
    """A figure of edit `edit` that edit `changed_by` changes on purpose.

    kind: `locality` (locality prompt `locality` of `edit` states `changed_by`'s fact), `own-fact` (it
    states `edit`'s own fact: `changed_by == edit`) or `same-fact` (both edits set one fact; `changed_by`
    comes later and wins, so `edit`'s efficacy and generalisation no longer hold at the end).
    """

    kind: str
    edit: int
    changed_by: int
    locality: int | None = None

    def applies(self, applied: int) -> bool:
        """Whether the changing edit is among the first `applied` edits."""
        return self.changed_by < applied


def _relation(text: str, subject: str) -> str | None:
    """`text` with its first mention of `subject` replaced by {} (normalised), None when it has none."""
    text, subject = normalise_answer(text), normalise_answer(subject)
    if not subject:
        return None
    match = re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text)
    return None if match is None else text[:match.start()] + "{}" + text[match.end():]


def _relations(edit: Edit) -> set[str]:
    """The edit's fact as relation phrases: its prompt and each paraphrase with the subject taken out."""
    phrases = {_relation(text, edit.subject) for text in (edit.text, *edit.paraphrases)}
    return {phrase for phrase in phrases if phrase is not None}


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", normalise_answer(text)))


class _Subjects:
    """The edits indexed by their subject's words, so a text is compared only with the edits whose
    subject it may mention (a run of its words): thousands of edits validate in well under a second."""

    def __init__(self, edits: list[Edit]):
        self.edits = edits
        self.relations = [_relations(edit) for edit in edits]
        self.by_words: dict[tuple[str, ...], list[int]] = {}
        for i, edit in enumerate(edits):
            words = _words(edit.subject)
            if words:
                self.by_words.setdefault(words, []).append(i)
        self.lengths = sorted({len(words) for words in self.by_words})

    def _mentioned(self, text: str) -> list[int]:
        words = _words(text)
        found = {i for n in self.lengths for start in range(len(words) - n + 1)
                 for i in self.by_words.get(words[start:start + n], ())}
        return sorted(found)

    def stating(self, text: str, answer: str | None = None) -> list[int]:
        """The edits whose fact `text` (with its stated `answer`) asks, in run order."""
        return [i for i in self._mentioned(text) if self.states(text, i, answer)]

    def states(self, text: str, i: int, answer: str | None) -> bool:
        edit = self.edits[i]
        phrase = _relation(text, edit.subject)
        if phrase is None:
            return False
        if phrase in self.relations[i]:
            return True
        return bool(answer and edit.ground_truth) and same_answer(answer, edit.ground_truth)


def find_conflicts(edits: list[Edit]) -> list[Conflict]:
    """Every conflict among `edits` (in run order)."""
    subjects = _Subjects(edits)
    found: list[Conflict] = []
    for i, edit in enumerate(edits):
        for k, check in enumerate(edit.locality):
            found += [Conflict(OWN_FACT if j == i else LOCALITY, i, j, k)
                      for j in subjects.stating(check.prompt, check.answer)]
    pairs = {(min(i, j), max(i, j)) for i, edit in enumerate(edits) for j in subjects.stating(edit.text)
             if j != i}
    found += [Conflict(SAME_FACT, i, j) for i, j in sorted(pairs)]
    return found


def describe(conflict: Conflict, edits: list[Edit]) -> str:
    """One sentence naming both edits and their file:line."""
    edit, other = edits[conflict.edit], edits[conflict.changed_by]
    if conflict.kind == SAME_FACT:
        outcome = ("sets the same target" if same_answer(edit.target, other.target)
                   else f"sets {other.target!r} instead of {edit.target!r}, and wins")
        return (f"edit {edit.id!r} and the later edit {other.id!r} ({other.where}) edit the same fact "
                f"({edit.text!r}): {other.id!r} {outcome}")
    prompt = edit.locality[conflict.locality].prompt
    if conflict.kind == OWN_FACT:
        return f"edit {edit.id!r}: its locality prompt {prompt!r} asks the fact the edit itself changes"
    return (f"edit {edit.id!r}: its locality prompt {prompt!r} asks the fact that edit {other.id!r} "
            f"({other.where}) changes; it is left out of the locality figures")


def overwritten(conflict: Conflict, edits: list[Edit]) -> bool:
    """Whether the conflict takes a figure away: a locality prompt that is changed on purpose, or an
    edit whose fact a later edit sets to another target."""
    if conflict.kind != SAME_FACT:
        return True
    return not same_answer(edits[conflict.edit].target, edits[conflict.changed_by].target)


def conflict_warnings(edits: list[Edit]) -> list[Problem]:
    """The conflicts as warnings located at the affected edit."""
    return [Problem(edits[c.edit].source, edits[c.edit].line or None, describe(c, edits))
            for c in find_conflicts(edits)]
