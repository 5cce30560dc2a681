"""Second-moment statistics of MLP keys, E[k k^T], which ROME-style updates solve against.

They are the costly one-off of parametric editing, so they are computed for all requested layers in
one pass that stops after the highest of them (the layers above never run), and cached on disk keyed
by the model's fingerprint, the layer, the corpus and the sample size. Cache files go through
`editgate.cachefile`, so a torn or damaged one is reported and computed again instead of crashing
`torch.load` or being trusted.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from editgate import cachefile
from editgate.architecture import mlp_out
from editgate.hooks import Hooks, StopForward
from editgate.metrics.scoring import batches_by_length, pad_right


def stats_path(cache_dir: Path, fingerprint: str, corpus: str, samples: int, max_tokens: int, layer: int) -> Path:
    safe_corpus = "".join(c if c.isalnum() else "_" for c in corpus)
    return Path(cache_dir) / "stats" / fingerprint / f"{safe_corpus}-{samples}x{max_tokens}" / f"layer{layer}.pt"


def key_second_moments(model, tokenizer, layers: list[int], texts: list[str], max_tokens: int,
                       batch_tokens: int = 4096, log=print) -> dict[int, torch.Tensor]:
    """E[k k^T] over every token of `texts`, for each layer's MLP output projection input (float32, CPU)."""
    projections = {layer: mlp_out(model, layer) for layer in layers}
    sums: dict[int, torch.Tensor] = {}
    counts = {layer: 0 for layer in layers}
    current: list = []  # the batch's mask on the device and its real-token count (known on the host)
    top = max(layers)

    def capture(layer):
        def hook(_module, inputs):
            keys = inputs[0].float()
            flat = keys.reshape(-1, keys.shape[-1])
            # padding rows weighted 0 rather than dropped: boolean-mask indexing would wait for the GPU
            # once per batch and layer; the layer may sit on another GPU than the mask
            real = current[0].to(keys.device, keys.dtype).reshape(-1, 1)
            outer = (flat * real).T @ flat
            sums[layer] = sums[layer] + outer.double() if layer in sums else outer.double()
            counts[layer] += current[1]
            if layer == top:  # the rest of the model is wasted work
                raise StopForward
        return hook

    encoded = tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    device = next(model.parameters()).device
    start, done = time.perf_counter(), 0
    for batch in batches_by_length([len(e) for e in encoded], batch_tokens):
        ids, mask = pad_right([encoded[i] for i in batch], tokenizer.pad_token_id or 0)
        current[:] = [mask.to(device), int(mask.sum())]
        with torch.inference_mode(), Hooks() as hooks:
            for layer, projection in projections.items():
                hooks.before(projection.module, capture(layer))
            model(input_ids=ids.to(device), attention_mask=current[0])
        done += current[1]
    seconds = time.perf_counter() - start
    rate = done / max(seconds, 1e-9)
    log(f"key statistics for layers {sorted(layers)}: {done} tokens in {seconds:.1f}s ({rate:.0f} tok/s)")
    return {layer: (sums[layer] / counts[layer]).float().cpu() for layer in layers}


def cached_second_moments(model, tokenizer, layers: list[int], *, cache_dir: Path, fingerprint: str,
                          corpus: str, texts_fn, samples: int, max_tokens: int, log=print) -> dict[int, torch.Tensor]:
    """`key_second_moments` through the disk cache: compute only the layers not cached yet, in one pass."""
    paths = {layer: stats_path(cache_dir, fingerprint, corpus, samples, max_tokens, layer) for layer in layers}
    result = {}
    for layer, path in paths.items():
        moment = cachefile.read_tensor(path, log)
        if moment is not None:
            result[layer] = moment
    missing = [layer for layer in layers if layer not in result]
    if missing:
        computed = key_second_moments(model, tokenizer, missing, texts_fn(), max_tokens, log=log)
        for layer, moment in computed.items():
            cachefile.write_tensor(paths[layer], moment)
        result.update(computed)
    return result


def cached_tensor(cache_dir: Path, fingerprint: str, corpus: str, name: str, build, log=print) -> torch.Tensor:
    """A tensor derived from a model's statistics (e.g. a null-space projection), built once and cached."""
    safe_corpus = "".join(c if c.isalnum() else "_" for c in corpus)
    path = Path(cache_dir) / "stats" / fingerprint / "derived" / f"{safe_corpus}-{name}.pt"
    tensor = cachefile.read_tensor(path, log)
    if tensor is None:
        tensor = build()
        cachefile.write_tensor(path, tensor)
    return tensor
