"""The memory: stored edits, their routing keys, and the scope classifier that routes a text to one.

Edits never touch the weights. They are kept in an explicit memory (`EditMemory`); a scope classifier
decides, for each input text, whether it falls under a stored edit: the cosine similarity between the
input's embedding and every key of every stored edit (its prompt, its subject and its paraphrases),
routed to the most similar edit when that similarity reaches a threshold.

The threshold is calibrated from the stored edits' paraphrases (in scope, scored against their own
edit's other keys) and locality prompts (out of scope, scored against every key) when both exist:
the midpoint of the gap that best separates them (Youden's J, ties to the higher threshold, i.e. to
fewer false routings). Otherwise, or when no threshold separates them at all, the encoder's default
applies (see DEFAULT_THRESHOLDS).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from editgate.atomicfile import write_atomic
from editgate.errors import InputError
from editgate.manifests import Edit, LocalityCheck
from editgate.methods.memory.encoders import Encoder
from editgate.methods.memory.hparams import DEFAULT_THRESHOLDS, MemoryHParams, key_fields, text_hash

FORMAT = "editgate-memory"
FORMAT_VERSION = 1


@dataclass
class MemoryEntry:
    """One stored edit, the counterfactual prompt format it was stored with, and its routing keys."""

    edit: Edit
    prompt_format: str
    key_texts: tuple[str, ...]


@dataclass
class Route:
    """Where one input goes, with the similarity that decided it (reports show near misses too)."""

    entry: int | None  # index into EditMemory.entries, None: the base model answers
    similarity: float  # the best key's cosine similarity (whether or not it reached the threshold)

    def __iter__(self) -> Iterator[Any]:  # unpacks as (entry, similarity)
        return iter((self.entry, self.similarity))


def keys_of(edit: Edit, fields: Iterable[str]) -> tuple[str, ...]:
    """The edit's routing key texts, stripped and without duplicates (a duplicate would only cost a row
    of the key matrix)."""
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
        """The stored edits' ids, in entry order (a Route's `entry` indexes them)."""
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
        """`route` for embeddings already computed (the base encoder's come from the scoring pass)."""
        if not self.entries or len(embeddings) == 0:
            return [Route(None, float("-inf")) for _ in range(len(embeddings))]
        _, owner, _ = self.key_matrix()
        best, index = self.best_keys(embeddings, exclude)
        owners = owner.tolist()  # to the host once per batch: a lookup per row would synchronise per row
        return [Route(owners[key] if sim >= self.threshold else None, float(sim))
                for sim, key in zip(best.tolist(), index.tolist())]

    # -- threshold ------------------------------------------------------------------------------

    def scope_scores(self) -> tuple[list[float], list[float]]:
        """(in-scope, out-of-scope) similarities for calibration: the edits' own paraphrases and
        locality prompts are the only labelled examples of what should and should not route."""
        return self._in_scope_scores(), self._out_of_scope_scores()

    def _in_scope_scores(self) -> list[float]:
        """Each paraphrase against its own edit's other keys (its own text held out: a paraphrase
        that is a key would otherwise score 1.0 against itself)."""
        matrix, owner, hashes = self.key_matrix()
        paraphrases = [(i, p.strip()) for i, e in enumerate(self.entries) for p in e.edit.paraphrases if p.strip()]
        if not paraphrases or not len(matrix):
            return []
        by_owner: dict[int, list[int]] = {}
        for k, i in enumerate(owner.tolist()):
            by_owner.setdefault(i, []).append(k)
        scores = []
        for (i, text), vector in zip(paraphrases, self.embed([p for _, p in paraphrases])):
            own = [k for k in by_owner.get(i, []) if hashes[k] != text_hash(text)]
            if own:
                scores.append(float((matrix[own] @ vector).max()))
        return scores

    def _out_of_scope_scores(self) -> list[float]:
        """Each locality prompt against every stored key: routing it anywhere would be a false positive."""
        matrix, _, _ = self.key_matrix()
        localities = [c.prompt.strip() for e in self.entries for c in e.edit.locality if c.prompt.strip()]
        if not localities or not len(matrix):
            return []
        best, _ = self.best_keys(self.embed(localities))
        return best.tolist()

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
        """The saved document: edits and settings, not embeddings (`load` re-embeds with its encoder)."""
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
    """An edit as plain JSON values (tuples as lists, locality checks as objects)."""
    out = dataclasses.asdict(edit)
    out["paraphrases"] = list(edit.paraphrases)
    out["locality"] = [{"prompt": c.prompt, "answer": c.answer} for c in edit.locality]
    return out


def edit_from_json(data: dict[str, Any]) -> Edit:
    """The inverse of `edit_to_json`; unknown fields are ignored, so newer files still load."""
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
