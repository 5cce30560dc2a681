"""How well edits took: as the edited model generates (what the policy's minimums apply to), and
teacher-forced and CounterFact-style as the literature reports.

- Generated (metrics/generation.py): greedy continuation of the prompt. Efficacy: the edit prompt's
  continuation begins with the new target; generalisation: the same for each paraphrase; locality: the
  first tokens the model generates for each locality prompt (as many as its answer has) are the
  unedited model's. This is what a deployed model says, so the policy's thresholds apply to it.
- Teacher-forced (EasyEdit, `*_tf`): feed the prompt and the answer; the share of answer tokens that
  are the model's argmax at their position (locality: argmax agreement with the unedited model). One
  wrong first token hides behind right later ones, so it overstates generated success.
- CounterFact (Meng et al. 2022, `*_cf`): where `ground_truth` is known, the edit succeeds on a prompt
  when the new target is now more probable than the old answer (summed token log-probabilities).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch

from editgate.manifests import Edit, LocalityCheck
from editgate.answers import begins_with_answer
from editgate.conflicts import SAME_FACT, Conflict, overwritten
from editgate.metrics.generation import greedy_continuations
from editgate.metrics import SCORING_VERSION
from editgate.metrics.scoring import Forward, Scored, score_sequences

DEFINITION = ("efficacy/generalization/locality: greedy generation begins with the target (locality: the "
              "unedited model's generated answer kept) at the end of the run, leaving out prompts another edit "
              "changes on purpose; locality_after_edit: the same right after each edit; *_tf: EasyEdit "
              "teacher-forced token accuracy; *_cf: CounterFact P(new) > P(true)")
SCORE_KEYS = ("efficacy", "generalization", "locality", "efficacy_tf", "generalization_tf", "locality_tf",
              "efficacy_cf", "generalization_cf")
EXTRA_TOKENS = 2  # generated beyond the target's length: enough to see where its word ends
EDITS_PER_GROUP = 8  # edits whose queries are batched and cached together (about one batch of 2,048 tokens)


@dataclass
class EditScores:
    efficacy: float | None  # generated (see the module docstring); None when a later edit overwrote the fact
    generalization: float | None  # None when the edit has no paraphrases
    locality: float | None  # None when it has no locality prompts (or none that no other edit changes)
    efficacy_tf: float | None  # teacher-forced
    generalization_tf: float | None
    locality_tf: float | None
    efficacy_cf: float | None  # None without ground_truth
    generalization_cf: float | None
    generated: str = ""  # what the model continued the edit prompt with (shown for a failed edit)
    left_out: list[str] = field(default_factory=list)  # prompts another edit changes on purpose, and why

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Query:
    """One (context, answer) pair to score, remembered by which edit and role it belongs to."""

    edit: int
    role: str  # efficacy | generalization | locality | efficacy_cf_true | generalization_cf_true
    context: str
    answer: str
    item: int = 0  # which paraphrase or locality prompt of the edit


def _queries(edits: list[Edit]) -> list[_Query]:
    out = []
    for i, edit in enumerate(edits):
        out.append(_Query(i, "efficacy", edit.text, edit.target))
        out += [_Query(i, "generalization", p, edit.target, k) for k, p in enumerate(edit.paraphrases)]
        if edit.ground_truth:
            out.append(_Query(i, "efficacy_cf_true", edit.text, edit.ground_truth))
            out += [_Query(i, "generalization_cf_true", p, edit.ground_truth, k)
                    for k, p in enumerate(edit.paraphrases)]
        out += [_Query(i, "locality", c.prompt, c.answer or "", k) for k, c in enumerate(edit.locality)]
    return out


def _answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]


def answer_budget(tokenizer, answer: str) -> int:
    """How many tokens are generated to judge an answer: its own length and a little more."""
    return len(_answer_ids(tokenizer, answer)) + EXTRA_TOKENS


def _encode(tokenizer, query: _Query) -> tuple[list[int], int]:
    context = tokenizer(query.context)["input_ids"]
    return context + _answer_ids(tokenizer, query.answer), len(context)


def _takes_away(conflict: Conflict, query: _Query) -> bool:
    """A locality conflict takes away its one locality prompt; an overwritten fact every other query."""
    if conflict.kind == SAME_FACT:
        return query.role != "locality"
    return query.role == "locality" and conflict.locality == query.item


def _groups(edit_of: list[int]) -> list[range]:
    """Index ranges of consecutive items (in edit order) whose edits share a group of EDITS_PER_GROUP.

    Queries are scored, generated and cached group by group, batched only within a group: a sequence with
    one more edit leaves the earlier groups' batches, and so their cached unedited answers, as they were."""
    groups, start = [], 0
    for i in range(1, len(edit_of) + 1):
        if i == len(edit_of) or edit_of[i] // EDITS_PER_GROUP != edit_of[start] // EDITS_PER_GROUP:
            groups.append(range(start, i))
            start = i
    return groups


def _settings(model, batch_tokens: int) -> dict:
    """What besides the tokens decides the unedited model's answers: part of every cache key."""
    parameter = next(model.parameters())
    return {"batch_tokens": batch_tokens, "dtype": str(parameter.dtype), "device": parameter.device.type,
            "scoring": SCORING_VERSION}


def _cached_by_group(cache, kind: str, groups: list[range], measure: Callable[[range], list],
                     parts: Callable[[range], dict]) -> list:
    """`measure(group)` for every group, concatenated; each group read from the baseline cache when it holds
    the same parts, measured and stored otherwise."""
    out: list = []
    for group in groups:
        key = parts(group)
        value = cache.get(kind, key) if cache else None
        if value is None:
            value = measure(group)
            if cache:
                cache.put(kind, key, value)
        out += value
    return out


def _groups_upto(groups: list[range], edit_of: list[int], edits: int, measure: Callable[[range], list]) -> list:
    """`measure(group)` for the groups holding the first `edits` edits, in place; None for the rest."""
    out: list = [None] * len(edit_of)
    for group in groups:
        if edit_of[group.start] < edits:
            out[group.start:group.stop] = measure(group)
    return out


class EditScorer:
    """Scores a list of edits; built before editing so locality compares against the unedited model.

    Locality prompts without a stated answer use the unedited model's greedy next token.
    """

    def __init__(self, model, tokenizer, edits: list[Edit], batch_tokens: int = 2048, cache=None,
                 conflicts: list[Conflict] | None = None):
        """`conflicts` (editgate/conflicts.py): the prompts other edits change on purpose, left out of the
        figures once the edit that changes them is applied."""
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.edits = [self._fill_locality_answers(model, e) for e in edits]
        self.conflicts_of: dict[int, list[Conflict]] = {}  # by the edit whose figures they take away
        for conflict in conflicts or []:
            if overwritten(conflict, self.edits):
                self.conflicts_of.setdefault(conflict.edit, []).append(conflict)
        self.queries = _queries(self.edits)
        encoded = [_encode(tokenizer, q) for q in self.queries]
        self.sequences = [s for s, _ in encoded]
        self.starts = [start for _, start in encoded]
        self.query_groups = _groups([q.edit for q in self.queries])
        self.base = self._base_scores(model, cache)  # the unedited model: locality compares against it
        self.prompts = [q for q in self.queries if q.role in ("efficacy", "generalization", "locality")]
        self.prompt_ids = [tokenizer(q.context)["input_ids"] for q in self.prompts]
        self.budgets = [len(_answer_ids(tokenizer, q.answer)) if q.role == "locality" else
                        answer_budget(tokenizer, q.answer) for q in self.prompts]
        self.prompt_groups = _groups([q.edit for q in self.prompts])
        self.base_generated = self._base_generations(model, cache)
        self.locality_of = {i: [p for p, q in enumerate(self.prompts) if q.edit == i and q.role == "locality"]
                            for i in range(len(self.edits))}
        self.base_locality_each = self._base_locality_each(model, cache)

    def _base_scores(self, model, cache) -> list:
        """The unedited model's scores, group by group from the baseline cache where it scored them before."""
        def measure(group: range) -> list:
            return [{"logprobs": s.logprobs.tolist(), "argmax": s.argmax.tolist(), "targets": s.targets.tolist()}
                    for s in self._score_group(model, group)]

        cached = _cached_by_group(cache, "edit-answers", self.query_groups, measure, lambda g: {
            "sequences": self.sequences[g.start:g.stop], "starts": self.starts[g.start:g.stop],
            **_settings(model, self.batch_tokens)})
        return [Scored(torch.tensor(c["logprobs"]), torch.tensor(c["argmax"]), torch.tensor(c["targets"]))
                for c in cached]

    def _base_generations(self, model, cache) -> list:
        """The unedited model's greedy continuations of every prompt (cached like the scores)."""
        def parts(group: range) -> dict:
            return {"prompts": self.prompt_ids[group.start:group.stop], "budgets": self.budgets[group.start:group.stop],
                    **_settings(model, self.batch_tokens)}

        return _cached_by_group(cache, "edit-generations", self.prompt_groups,
                                lambda group: self._generate(model, group), parts)

    def _base_locality_each(self, model, cache) -> list[list[list[int]]]:
        """The unedited model's continuations of each edit's locality prompts, generated edit by edit as
        `locality_after` generates them."""
        def measure(group: range) -> list:
            return [self._generate(model, self.locality_of[i]) for i in group]

        def parts(group: range) -> dict:
            return {"prompts": [[self.prompt_ids[p] for p in self.locality_of[i]] for i in group],
                    "budgets": [[self.budgets[p] for p in self.locality_of[i]] for i in group],
                    **_settings(model, self.batch_tokens)}

        return _cached_by_group(cache, "edit-generations-each", _groups(list(range(len(self.edits)))), measure, parts)

    def _generate(self, model, which: Sequence[int]) -> list[list[int]]:
        """Greedy continuations of the prompts `which` (indices into `self.prompts`)."""
        if not which:
            return []
        return greedy_continuations(model, self.tokenizer, [self.prompt_ids[p] for p in which],
                                    [self.budgets[p] for p in which], self.batch_tokens)

    def _changed(self, query: _Query, applied: int) -> list[int]:
        """The applied edits (among the first `applied`) that change this query's answer on purpose."""
        return [c.changed_by for c in self.conflicts_of.get(query.edit, ())
                if c.applies(applied) and _takes_away(c, query)]

    def locality_after(self, model, edits: list[int]) -> dict[int, float | None]:
        """Each of `edits`' locality right after they were applied (the model as it is now): its own
        prompts' generated answers against the unedited model's, the prompts an applied edit changes on
        purpose left out. One batch per edit, as the unedited answers were generated."""
        applied = max(edits) + 1
        out: dict[int, float | None] = {}
        for i in edits:
            which = self.locality_of[i]
            now = self._generate(model, which)
            kept = [(a, b) for p, a, b in zip(which, now, self.base_locality_each[i])
                    if not self._changed(self.prompts[p], applied)]
            out[i] = sum(float(a == b) for a, b in kept) / len(kept) if kept else None
        return out

    def _fill_locality_answers(self, model, edit: Edit) -> Edit:
        missing = [c for c in edit.locality if not c.answer]
        if not missing:
            return edit
        filled = []
        for check in edit.locality:
            if check.answer:
                filled.append(check)
            else:
                filled.append(LocalityCheck(check.prompt, greedy_next_word(model, self.tokenizer, check.prompt)))
        return replace(edit, locality=tuple(filled))

    def _score_group(self, model, group: range, forward: Forward | None = None) -> list[Scored]:
        return score_sequences(model, self.sequences[group.start:group.stop], self.starts[group.start:group.stop],
                               self.batch_tokens, self.tokenizer.pad_token_id or 0, forward)

    def _score_upto(self, model, edits: int, forward: Forward | None = None) -> list[Scored | None]:
        """The scores of the first `edits` edits' queries, group by group as the baseline's were."""
        return _groups_upto(self.query_groups, [q.edit for q in self.queries], edits,
                            lambda group: self._score_group(model, group, forward))

    def _generate_upto(self, model, edits: int) -> list[list[int] | None]:
        """The continuations of the first `edits` edits' prompts, group by group as the baseline's were."""
        return _groups_upto(self.prompt_groups, [q.edit for q in self.prompts], edits,
                            lambda group: self._generate(model, group))

    def score(self, model, upto: int | None = None, forward: Forward | None = None) -> list[EditScores]:
        """Scores for the first `upto` edits (all by default) on the model as it is now; `forward`: how a
        teacher-forced batch is run (the prefix cache's, say; the model's own pass by default)."""
        n = len(self.edits) if upto is None else upto
        # score and generate in the baseline's groups and batches, so locality compares like with like even
        # in bf16, where batch composition nudges the logits
        per_edit: dict[int, dict[str, list]] = {i: {} for i in range(n)}
        for i, (q, s) in enumerate(zip(self.queries, self._score_upto(model, n, forward))):
            if q.edit < n and not self._changed(q, n):
                per_edit[q.edit].setdefault(q.role, []).append((i, s))
        said: dict[int, dict[str, list]] = {i: {} for i in range(n)}
        for i, (q, tokens) in enumerate(zip(self.prompts, self._generate_upto(model, n))):
            if q.edit < n and not self._changed(q, n):
                said[q.edit].setdefault(q.role, []).append((i, q, tokens))
        return [self._summarise(per_edit[i], said[i], self._left_out(i, n)) for i in range(n)]

    def _left_out(self, edit: int, applied: int) -> list[str]:
        """What `score` leaves out of this edit's figures, and which edit changes it."""
        out: list[str] = []
        if edit not in self.conflicts_of:  # the common case: nothing to scan
            return out
        for q in self.prompts:
            if q.edit == edit and q.role in ("efficacy", "locality"):
                by = ", ".join(repr(self.edits[j].id) for j in self._changed(q, applied))
                if by:
                    what = "its own fact" if q.role == "efficacy" else f"locality prompt {q.context!r}"
                    out.append(f"{what}: changed on purpose by edit {by}")
        return out

    def _summarise(self, roles: dict[str, list], said: dict[str, list], left_out: list[str]) -> EditScores:
        def accuracy(role):
            items = roles.get(role, [])
            return None if not items else sum(float(s.greedy_hits.float().mean()) for _, s in items) / len(items)

        def counterfact(new_role, true_role):
            new, true = roles.get(new_role, []), roles.get(true_role, [])
            if not new or not true:
                return None
            wins = [float(n.logprobs.sum() > t.logprobs.sum()) for (_, n), (_, t) in zip(new, true)]
            return sum(wins) / len(wins)

        def generated(role):
            items = said.get(role, [])
            if not items:
                return None
            if role == "locality":  # the unedited model's answer, token for token
                return sum(float(tokens == self.base_generated[i]) for i, _, tokens in items) / len(items)
            return sum(float(begins_with_answer(self._text(tokens), q.answer)) for _, q, tokens in items) / len(items)

        locality = roles.get("locality", [])
        agreement = None
        if locality:
            # argmax now vs before, at the same positions: the EasyEdit locality definition
            agreement = sum(float((s.argmax == self.base[i].argmax).float().mean())
                            for i, s in locality) / len(locality)
        prompt = said.get("efficacy", [])
        return EditScores(generated("efficacy"), generated("generalization"), generated("locality"),
                          accuracy("efficacy"), accuracy("generalization"), agreement,
                          counterfact("efficacy", "efficacy_cf_true"),
                          counterfact("generalization", "generalization_cf_true"),
                          self._text(prompt[0][2]).strip() if prompt else "", left_out)

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def greedy_next_word(model, tokenizer, prompt: str, max_tokens: int = 3) -> str:
    """The unedited model's short greedy answer, for locality prompts that state none."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() or "the"


def mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
