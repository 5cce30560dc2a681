"""How well edits took, measured both ways the literature does.

- EasyEdit (teacher-forced token accuracy): feed the prompt and the answer; the score is the share of
  answer tokens that are the model's argmax at their position. Efficacy uses the edit prompt and the
  new target, generalisation the paraphrases, locality the share of the locality prompts' answer
  tokens whose argmax is the same after editing as before. The policy's thresholds apply to these.
- CounterFact (Meng et al. 2022): where `ground_truth` is known, the edit succeeds on a prompt when
  the new target is now more probable than the old answer (summed token log-probabilities).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.scoring import Scored, score_sequences

DEFINITION = ("efficacy/generalization/locality: EasyEdit teacher-forced token accuracy "
              "(locality: argmax agreement with the unedited model); *_cf: CounterFact P(new) > P(true)")


@dataclass
class EditScores:
    efficacy: float
    generalization: float | None  # None when the edit has no paraphrases
    locality: float | None  # None when it has no locality prompts
    efficacy_cf: float | None  # None without ground_truth
    generalization_cf: float | None

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


def _encode(tokenizer, query: _Query) -> tuple[list[int], int]:
    context = tokenizer(query.context)["input_ids"]
    answer = tokenizer(" " + query.answer.strip(), add_special_tokens=False)["input_ids"]
    return context + answer, len(context)


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
        # always score every query with the same batching as the baseline, so locality compares
        # like with like even in bf16, where batch composition nudges the logits
        per_edit: dict[int, dict[str, list]] = {i: {} for i in range(n)}
        for i, (q, s) in enumerate(zip(self.queries, self._score(model))):
            if q.edit < n:
                per_edit[q.edit].setdefault(q.role, []).append((i, s))
        return [self._summarise(per_edit[i]) for i in range(n)]

    def _summarise(self, roles: dict[str, list]) -> EditScores:
        def accuracy(role):
            items = roles.get(role, [])
            return None if not items else sum(float(s.greedy_hits.float().mean()) for _, s in items) / len(items)

        def counterfact(new_role, true_role):
            new, true = roles.get(new_role, []), roles.get(true_role, [])
            if not new or not true:
                return None
            wins = [float(n.logprobs.sum() > t.logprobs.sum()) for (_, n), (_, t) in zip(new, true)]
            return sum(wins) / len(wins)

        locality = roles.get("locality", [])
        agreement = None
        if locality:
            # argmax now vs before, at the same positions: the EasyEdit locality definition
            agreement = sum(float((s.argmax == self.base[i].argmax).float().mean())
                            for i, s in locality) / len(locality)
        return EditScores(accuracy("efficacy") or 0.0, accuracy("generalization"), agreement,
                          counterfact("efficacy", "efficacy_cf_true"),
                          counterfact("generalization", "generalization_cf_true"))


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
