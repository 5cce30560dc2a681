"""The memory method: SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") with a frozen
in-context counterfactual model, behind editgate's EditMethod interface.

`apply` stores edits in one `EditMemory` per run and hands the gate a `MemoryModel` to evaluate; the
weights are never written, so undo removes the entries and restores the threshold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from editgate import cachefile
from editgate.errors import InputError
from editgate.manifests import Edit
from editgate.methods.base import AppliedEdit, EditMethod, MethodContext
from editgate.methods.memory.encoders import BaseModelEncoder, Encoder, MiniLmEncoder
from editgate.methods.memory.figures import routing_figures
from editgate.methods.memory.hparams import ENCODERS, MemoryHParams, check_values, key_fields
from editgate.methods.memory.model import MemoryModel
from editgate.methods.memory.store import EditMemory
from editgate.architecture import num_layers

MEMORY_FILE = "memory.json"  # beside the reports


class MemoryEditor(EditMethod):
    """Edits stored in one memory per run; the gate evaluates `wrapped`, the base model behind it."""

    name = "memory"
    writes_weights = False
    description = ("SERAC-style: edits kept in an explicit memory, a similarity scope classifier routes "
                   "in-scope inputs to the base model with the edit in its context; weights untouched")
    HParams = MemoryHParams

    def __init__(self, model: torch.nn.Module, tokenizer: Any, context: MethodContext):
        super().__init__(model, tokenizer, context)
        self.memory: EditMemory | None = None
        self.wrapped: MemoryModel | None = None

    def default_hparams(self) -> MemoryHParams:
        return MemoryHParams()

    # -- encoders -------------------------------------------------------------------------------

    def make_encoder(self, name: str, hp: MemoryHParams | None = None) -> Encoder:
        """The encoder `name`; minilm is loaded once per run (shared through the context's memo), the
        base encoder is a view of this model and costs only its centre."""
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
        """Mean raw embedding of `n_texts` statistics-corpus texts, cached per model and layer (in the
        run's memo and on disk: it is a forward pass over the corpus sample, the same for every run)."""
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
            centre = self._compute_centre(layer, n_texts)
            try:
                cachefile.write_tensor(path, centre)
            except OSError:
                pass  # a read-only cache only costs recomputation
        self.context.memo[memo] = centre
        return centre

    def _compute_centre(self, layer: int, n_texts: int) -> torch.Tensor:
        """The centre itself: the mean uncentred embedding of the statistics texts, each cut to 128
        tokens (a mean over many texts needs no long ones, and the pass over the corpus stays short)."""
        start = time.perf_counter()
        texts = list(self.context.stats_texts(n_texts))
        encoder = BaseModelEncoder(self.model, self.tokenizer, layer, None)
        encoder.max_tokens = 128
        centre = encoder.raw_encode(texts).mean(dim=0)
        self.context.log(f"memory: base encoder centre from {len(texts)} texts at layer {layer} "
                         f"({time.perf_counter() - start:.1f}s)")
        return centre

    # -- applying -------------------------------------------------------------------------------

    def _memory_for(self, hp: MemoryHParams) -> EditMemory:
        """The run's memory, created by its first edit: one key matrix is routed over, so every later
        edit must embed with the same encoder and key fields (an InputError otherwise)."""
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
        """Store the edits and re-set the threshold (calibration sees every stored edit); undo removes
        exactly these entries and restores the threshold they replaced."""
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

    def save_artifacts(self, out_dir: Path | str, check_texts: list[str], edits: list[Edit],
                       log: Callable[[str], None]) -> dict[str, Any]:
        """memory.json (edits, encoder, threshold), with how the scope classifier routes the perplexity
        sample (false positives) and the paraphrases."""
        if self.memory is None:
            return {}
        path = self.save_memory(Path(out_dir) / MEMORY_FILE)
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

    def load_artifacts(self, out_dir: Path | str) -> AppliedEdit | None:
        """memory.json from `out_dir` (or the file itself), routed exactly as in the run that saved it."""
        path = Path(out_dir)
        path = path / MEMORY_FILE if path.is_dir() else path
        if not path.is_file():
            return None
        before = (self.memory, self.wrapped)
        wrapped = self.load_memory(path)

        def undo() -> None:
            self.memory, self.wrapped = before

        return AppliedEdit(self.name, [entry.edit.id for entry in self.memory.entries], {},
                           {"memory": str(path), "stored_edits": len(self.memory)}, [undo], model=wrapped)


def middle_layer(model: torch.nn.Module) -> int:
    """The middle of the stack, as an index into `hidden_states` (0 is the embeddings)."""
    return max(1, num_layers(model) // 2)
