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

from dataclasses import asdict, dataclass, replace

import torch

from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.generation import begins_with_answer, greedy_continuations
from editgate.metrics.scoring import Scored, score_sequences

DEFINITION = ("efficacy/generalization/locality: greedy generation begins with the target (locality: the "
              "unedited model's generated answer kept); *_tf: EasyEdit teacher-forced token accuracy; "
              "*_cf: CounterFact P(new) > P(true)")
SCORE_KEYS = ("efficacy", "generalization", "locality", "efficacy_tf", "generalization_tf", "locality_tf",
              "efficacy_cf", "generalization_cf")
EXTRA_TOKENS = 2  # generated beyond the target's length: enough to see where its word ends


@dataclass
class EditScores:
    efficacy: float  # generated (see the module docstring)
    generalization: float | None  # None when the edit has no paraphrases
    locality: float | None  # None when it has no locality prompts
    efficacy_tf: float  # teacher-forced
    generalization_tf: float | None
    locality_tf: float | None
    efficacy_cf: float | None  # None without ground_truth
    generalization_cf: float | None
    generated: str = ""  # what the model continued the edit prompt with (shown for a failed edit)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Query:
    """One (context, answer) pair to score, remembered by which edit and role it belongs to."""

    edit: int
    role: str  # efficacy | generalization | locality | efficacy_cf_true | generalization_cf_true
    context: str
    answer: str


def _queries(edits: list[Edit]) -> list[_Query]:
    out = []
    for i, edit in enumerate(edits):
        out.append(_Query(i, "efficacy", edit.text, edit.target))
        out += [_Query(i, "generalization", p, edit.target) for p in edit.paraphrases]
        if edit.ground_truth:
            out.append(_Query(i, "efficacy_cf_true", edit.text, edit.ground_truth))
            out += [_Query(i, "generalization_cf_true", p, edit.ground_truth) for p in edit.paraphrases]
        out += [_Query(i, "locality", c.prompt, c.answer or "") for c in edit.locality]
    return out


def _answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]


def _encode(tokenizer, query: _Query) -> tuple[list[int], int]:
    context = tokenizer(query.context)["input_ids"]
    return context + _answer_ids(tokenizer, query.answer), len(context)


class EditScorer:
    """Scores a list of edits; built before editing so locality compares against the unedited model.

    Locality prompts without a stated answer use the unedited model's greedy next token.
    """

    def __init__(self, model, tokenizer, edits: list[Edit], batch_tokens: int = 2048, cache=None):
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.edits = [self._fill_locality_answers(model, e) for e in edits]
        self.queries = _queries(self.edits)
        encoded = [_encode(tokenizer, q) for q in self.queries]
        self.sequences = [s for s, _ in encoded]
        self.starts = [start for _, start in encoded]
        self.base = self._base_scores(model, cache)  # the unedited model: locality compares against it
        self.prompts = [q for q in self.queries if q.role in ("efficacy", "generalization", "locality")]
        self.prompt_ids = [tokenizer(q.context)["input_ids"] for q in self.prompts]
        self.budgets = [len(_answer_ids(tokenizer, q.answer)) + (0 if q.role == "locality" else EXTRA_TOKENS)
                        for q in self.prompts]
        self.base_generated = self._base_generations(model, cache)

    def _base_scores(self, model, cache) -> list:
        """The unedited model's scores, from the baseline cache when the same queries were scored before."""
        parameter = next(model.parameters())
        parts = {"sequences": self.sequences, "starts": self.starts, "batch_tokens": self.batch_tokens,
                 "dtype": str(parameter.dtype), "device": parameter.device.type}
        cached = cache.get("edit-answers", parts) if cache else None
        if cached is not None:
            return [Scored(torch.tensor(c["logprobs"]), torch.tensor(c["argmax"]), torch.tensor(c["targets"]))
                    for c in cached]
        scored = self._score(model)
        if cache:
            cache.put("edit-answers", parts, [{"logprobs": s.logprobs.tolist(), "argmax": s.argmax.tolist(),
                                               "targets": s.targets.tolist()} for s in scored])
        return scored

    def _base_generations(self, model, cache) -> list[list[int]]:
        """The unedited model's greedy continuations of every prompt (cached like the scores)."""
        parameter = next(model.parameters())
        parts = {"prompts": self.prompt_ids, "budgets": self.budgets, "batch_tokens": self.batch_tokens,
                 "dtype": str(parameter.dtype), "device": parameter.device.type}
        cached = cache.get("edit-generations", parts) if cache else None
        if cached is not None:
            return cached
        generated = self._generate(model)
        if cache:
            cache.put("edit-generations", parts, generated)
        return generated

    def _generate(self, model) -> list[list[int]]:
        return greedy_continuations(model, self.tokenizer, self.prompt_ids, self.budgets, self.batch_tokens)

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

    def _score(self, model):
        return score_sequences(model, self.sequences, self.starts, self.batch_tokens,
                               self.tokenizer.pad_token_id or 0)

    def score(self, model, upto: int | None = None) -> list[EditScores]:
        """Scores for the first `upto` edits (all by default) on the model as it is now."""
        n = len(self.edits) if upto is None else upto
        # always score and generate every query with the same batching as the baseline, so locality
        # compares like with like even in bf16, where batch composition nudges the logits
        per_edit: dict[int, dict[str, list]] = {i: {} for i in range(n)}
        for i, (q, s) in enumerate(zip(self.queries, self._score(model))):
            if q.edit < n:
                per_edit[q.edit].setdefault(q.role, []).append((i, s))
        said: dict[int, dict[str, list]] = {i: {} for i in range(n)}
        for i, (q, tokens) in enumerate(zip(self.prompts, self._generate(model))):
            if q.edit < n:
                said[q.edit].setdefault(q.role, []).append((i, q, tokens))
        return [self._summarise(per_edit[i], said[i]) for i in range(n)]

    def _summarise(self, roles: dict[str, list], said: dict[str, list]) -> EditScores:
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
        return EditScores(generated("efficacy") or 0.0, generated("generalization"), generated("locality"),
                          accuracy("efficacy") or 0.0, accuracy("generalization"), agreement,
                          counterfact("efficacy", "efficacy_cf_true"),
                          counterfact("generalization", "generalization_cf_true"),
                          self._text(prompt[0][2]).strip() if prompt else "")

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
