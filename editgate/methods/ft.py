"""FT-L: constrained fine-tuning (the FT-L baseline of Meng et al. 2022).

Gradient descent on the target's negative log-likelihood given the edit prompt, over the MLP output
projections of chosen layers only, with every weight clamped after each step to within
`norm_constraint` of its original value (an L-infinity ball), which keeps the edit from rewriting
the layer wholesale.
"""

from __future__ import annotations

import time
import torch

from editgate.architecture import mlp_out, num_layers
from editgate.manifests import Edit
from editgate.methods.base import AppliedEdit, EditMethod
from editgate.methods.hparams import FtHParams
from editgate.methods.locate import logits_at, pad_batch
from editgate.methods.rome import default_layer


class FineTune(EditMethod):
    name = "ft"
    description = "fine-tuning of chosen MLP output layers within an L-infinity bound of the original weights"
    HParams = FtHParams

    def default_hparams(self) -> FtHParams:
        return FtHParams(layers=[default_layer(num_layers(self.model))])

    def apply(self, edits: list[Edit], hparams: FtHParams) -> AppliedEdit:
        start = time.perf_counter()
        layers = hparams.layers or [default_layer(num_layers(self.model))]
        targets = [mlp_out(self.model, layer) for layer in layers]
        originals = {t.weight_name: t.weight.detach().clone() for t in targets}
        weights = [t.weight for t in targets]
        ids, mask, rows, cols, gold = self._batch(edits)
        for weight in weights:
            weight.requires_grad_(True)
        optimiser = torch.optim.Adam(weights, lr=hparams.lr)
        steps, nll_value = 0, float("inf")
        try:
            for steps in range(1, hparams.steps + 1):  # noqa: B007 (the last step is reported)
                optimiser.zero_grad()
                logits = logits_at(self.model, ids, mask, rows, cols)
                nll = -torch.log_softmax(logits, -1).gather(1, gold[:, None]).mean()
                nll_value = float(nll.detach())
                if nll_value < hparams.early_stop_nll:
                    break
                nll.backward()
                optimiser.step()
                with torch.no_grad():
                    for target, weight in zip(targets, weights):
                        original = originals[target.weight_name]
                        weight.copy_(torch.clamp(weight, original - hparams.norm_constraint,
                                                 original + hparams.norm_constraint))
        finally:
            for weight in weights:
                weight.requires_grad_(False)
                weight.grad = None
        # |W - W0| / |W0| per layer, as ROME and MEMIT report it: the gate's risk flag reads it
        norms = {t.layer: float((t.weight.detach() - originals[t.weight_name]).norm()
                                / originals[t.weight_name].norm()) for t in targets}
        return AppliedEdit(self.name, [e.id for e in edits], originals,
                           {"layers": layers, "steps": steps, "target_nll": nll_value, "relative_update_norm": norms,
                            "seconds": time.perf_counter() - start})

    def _batch(self, edits: list[Edit]):
        """Each edit's prompt followed by its target; rows/cols index the logits predicting target tokens."""
        tok = self.tokenizer
        sequences, rows, cols, gold = [], [], [], []
        for row, edit in enumerate(edits):
            prompt = tok(edit.text)["input_ids"]
            target = tok(" " + edit.target.strip(), add_special_tokens=False)["input_ids"]
            sequences.append(prompt + target[:-1])
            for j, token in enumerate(target):
                rows.append(row)
                cols.append(len(prompt) - 1 + j)
                gold.append(token)
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(sequences, tok.pad_token_id or 0, device)
        as_tensor = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
        return ids, mask, as_tensor(rows), as_tensor(cols), as_tensor(gold)
