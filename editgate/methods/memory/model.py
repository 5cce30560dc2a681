"""The wrapped model: the base model behind the scope classifier, what the gate evaluates once memory
edits exist.

A routed input is answered by the counterfactual model, which here is the base model itself with the
edit stated in its context (`prompt_format`); every other input goes to the base model unchanged.
`MemoryModel.forward` runs the base model on the batch exactly as given (rows routed to the base
therefore get bit-identical logits to the unedited model's), routes each row on its own text, and
recomputes only the routed rows with the edit in context, writing their logits back in place.

Routing is decided on a row's whole text, so a teacher-forced answer is part of what is routed on
(edit metrics route "prompt + answer"), and `generate` routes on the prompt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import torch

from editgate.hooks import Hooks
from editgate.methods.memory.encoders import BaseModelEncoder
from editgate.methods.memory.hparams import fact_of
from editgate.methods.memory.store import EditMemory, MemoryEntry, Route
from editgate.metrics.scoring import pad_right


class MemoryModel(torch.nn.Module):
    """The base model behind the scope classifier: what the gate evaluates once memory edits exist.

    Not a parent of the base model in the module tree: `named_parameters()` and friends are the base
    model's own (same names), so parameter-level code (fingerprints, undo, exports) sees through it.
    """

    def __init__(self, base: torch.nn.Module, tokenizer: Any, memory: EditMemory):
        super().__init__()
        object.__setattr__(self, "base", base)  # not registered as a submodule on purpose
        self.tokenizer = tokenizer
        self.memory = memory
        self.routed: Counter[str] = Counter()  # edit id -> rows routed to it
        self.rows = 0  # rows seen by forward (with a non-empty memory)
        self.routed_rows = 0
        self.overlong_rows = 0  # routed, but context + row exceeded the model's positions: base answered
        self._prefix_cache: dict[tuple[str, str], list[int]] = {}

    # -- transparency ---------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Attributes this wrapper lacks are the base model's (generation_config, dtype, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("base")
            if base is None:
                raise
            return getattr(base, name)

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        return self.base.parameters(recurse)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self.base.named_parameters(*args, **kwargs)

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        return self.base.buffers(recurse)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.base.named_buffers(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.base.state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> MemoryModel:
        self.base.train(mode)
        return super().train(mode)

    def to(self, *args: Any, **kwargs: Any) -> MemoryModel:
        self.base.to(*args, **kwargs)
        return self

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def get_output_embeddings(self) -> Any:
        return self.base.get_output_embeddings()

    def get_input_embeddings(self) -> Any:
        return self.base.get_input_embeddings()

    def reset_counts(self) -> None:
        """Zero the routing counters, so a report can count one phase's rows alone."""
        self.routed.clear()
        self.rows = self.routed_rows = self.overlong_rows = 0

    def counts(self) -> dict[str, Any]:
        """The routing counters as plain values for reports."""
        return {"rows": self.rows, "routed_rows": self.routed_rows, "overlong_rows": self.overlong_rows,
                "routed_by_edit": dict(self.routed)}

    # -- routing --------------------------------------------------------------------------------

    def _uses_hidden_states(self) -> bool:
        """Whether rows can be routed from the scoring pass's own hidden states (the base encoder on
        this very model), saving an encoder pass."""
        encoder = self.memory.encoder
        return isinstance(encoder, BaseModelEncoder) and encoder.model is self.base

    def _rows(self, input_ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        return [input_ids[r][mask[r].bool()] for r in range(len(input_ids))]

    def route_rows(self, input_ids: torch.Tensor, mask: torch.Tensor,
                   hidden: torch.Tensor | None = None) -> list[Route]:
        """Routes for a batch's rows: from the routing layer's hidden states of the pass that scored
        them (base encoder), else from each row's decoded text."""
        if hidden is not None and self._uses_hidden_states():
            embeddings = self.memory.encoder.pool(hidden, input_ids, mask)  # type: ignore[attr-defined]
            return self.memory.route_embeddings(embeddings)
        host_ids, host_mask = input_ids.cpu(), mask.cpu()  # one copy per batch, not a sync per row
        rows = self._rows(host_ids, host_mask)
        texts = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in rows]
        return self.memory.route(texts)

    def context_ids(self, entry: MemoryEntry, row: list[int]) -> tuple[list[int], int]:
        """(the counterfactual input: edit context + the row's tokens, how many leading row tokens the
        context replaced: 1 when both start with the same special token such as BOS, else 0)."""
        key = (entry.edit.id + "\0" + fact_of(entry.edit), entry.prompt_format)
        if key not in self._prefix_cache:
            before = entry.prompt_format[: -len("{input}")]
            prefix_text = before.replace("{fact}", fact_of(entry.edit))
            self._prefix_cache[key] = list(self.tokenizer(prefix_text)["input_ids"])
        prefix = self._prefix_cache[key]
        specials = set(self.tokenizer.all_special_ids)
        skip = 1 if row and prefix and row[0] == prefix[0] and row[0] in specials else 0
        return prefix + row[skip:], skip

    def _max_positions(self) -> int | None:
        """The longest sequence the base model takes, when its config says (names differ by family)."""
        config = self.base.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's output for the batch as given, with the routed rows' logits replaced by the
        counterfactual model's (so base-routed rows stay bit-identical to the unedited model)."""
        if kwargs.get("past_key_values") is not None:
            raise ValueError("MemoryModel.forward scores whole sequences; decode with generate()")
        if not self.memory.entries:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out, hidden = self._base_pass(input_ids, attention_mask, kwargs)
        routes = self.route_rows(input_ids, mask, hidden)
        self.rows += len(routes)
        jobs = self._counterfactual_jobs(input_ids, mask, routes)
        if jobs:
            logits = self._counterfactual_logits([ids for _, _, ids in jobs], input_ids.device)
            for (r, positions, ids), row_logits in zip(jobs, logits):
                offset = len(ids) - len(positions)  # context length minus the row tokens it replaced
                out.logits[r, positions] = row_logits[offset: offset + len(positions)].to(out.logits.dtype)
        return out

    def _base_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   kwargs: dict[str, Any]) -> tuple[Any, torch.Tensor | None]:
        """The base model called exactly as the caller called it, and the routing layer's hidden states
        when the base encoder can route from them: the hook only reads, so routing costs no extra pass."""
        encoder = self.memory.encoder
        hooked = isinstance(encoder, BaseModelEncoder) and self._uses_hidden_states()
        with Hooks() as hooks:
            captured = encoder.record(hooks) if hooked else None
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out, (captured[0] if captured else None)

    def _counterfactual_jobs(self, input_ids: torch.Tensor, mask: torch.Tensor,
                             routes: list[Route]) -> list[tuple[int, torch.Tensor, list[int]]]:
        """(row, its real positions, edit context + its tokens) for each routed row, counted. A row whose
        context would exceed the model's positions keeps the base model's logits (`overlong_rows`)."""
        jobs = []
        limit = self._max_positions()
        host: tuple[torch.Tensor, torch.Tensor] | None = None  # the batch on the host, copied once if needed
        for r, route in enumerate(routes):
            if route.entry is None:
                continue
            host = host or (input_ids.cpu(), mask.cpu())
            positions = host[1][r].bool().nonzero().flatten()  # a CPU index into the device logits
            entry = self.memory.entries[route.entry]
            ids, _skip = self.context_ids(entry, host[0][r][positions].tolist())
            self.routed[entry.edit.id] += 1
            self.routed_rows += 1
            if limit is not None and len(ids) > limit:
                self.overlong_rows += 1
                continue
            jobs.append((r, positions, ids))
        return jobs

    def _counterfactual_logits(self, sequences: list[list[int]], device: torch.device) -> list[torch.Tensor]:
        """The base model on each context + row sequence, right-padded into one batch (right padding:
        each row's logits are those it would get alone)."""
        ids, mask = pad_right(sequences, self.tokenizer.pad_token_id or 0)
        logits = self.base(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return [logits[row, : len(seq)] for row, seq in enumerate(sequences)]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Generation routed on the prompt: a routed row continues with the edit in its context."""
        if not self.memory.entries:
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        routes = self.route_rows(input_ids, mask)
        if all(route.entry is None for route in routes):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pad = kwargs.get("pad_token_id")
        pad = self.tokenizer.pad_token_id if pad is None else pad
        continuations = [self._continuation(input_ids[r][mask[r].bool()].tolist(), route, input_ids.device, kwargs)
                         for r, route in enumerate(routes)]
        self.rows += len(routes)
        return torch.cat([input_ids, _pad_continuations(continuations, pad or 0, input_ids)], dim=1)

    def _continuation(self, row: list[int], route: Route, device: torch.device,
                      kwargs: dict[str, Any]) -> torch.Tensor:
        """The new tokens for one prompt, generated alone: exactly what the base model continues that
        context with (a batch of rows with contexts of their own would need left padding)."""
        ids = row
        if route.entry is not None:
            entry = self.memory.entries[route.entry]
            ids = self.context_ids(entry, row)[0]
            self.routed[entry.edit.id] += 1
            self.routed_rows += 1
        tensor = torch.tensor([ids], dtype=torch.long, device=device)
        out = self.base.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), **kwargs)
        return out[0, len(ids):]


def _pad_continuations(continuations: list[torch.Tensor], pad: int, like: torch.Tensor) -> torch.Tensor:
    """The rows' new tokens right-padded with `pad` into one tensor on `like`'s device and dtype (kept
    there: scoring's `pad_right` builds host tensors from lists)."""
    width = max(len(c) for c in continuations)
    new = torch.full((len(continuations), width), pad, dtype=like.dtype, device=like.device)
    for r, c in enumerate(continuations):
        new[r, : len(c)] = c
    return new
