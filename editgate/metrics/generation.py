"""What an edited model says when it has to generate: greedy continuations, batched (the answers are
matched in editgate/answers.py).

Teacher-forced token accuracy (feed the answer, count the tokens that are the argmax at their
position) overstates how often an edit takes: one wrong first token hides behind the right later ones
("The Mirage of Model Editing", 2025). The gate's edit figures therefore come from greedy generation:
an edit took on a prompt when the model's continuation begins with the target.

Prompts are generated in batches, left-padded so every row's last prompt token sits at the same
position; a row generates exactly the tokens it would alone (greedy decoding, positions taken from the
attention mask), which a test checks against one-by-one generation.
"""

from __future__ import annotations

import torch

from editgate.metrics.scoring import batches_by_length


def greedy_continuations(model: torch.nn.Module, tokenizer, prompts: list[list[int]], new_tokens: list[int],
                         batch_tokens: int = 2048) -> list[list[int]]:
    """The first `new_tokens[i]` greedy tokens after each prompt (token ids, each prompt given as ids)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    lengths = [len(p) + n for p, n in zip(prompts, new_tokens)]
    # no padding bound: a decoding step costs about as much for a few rows as for many (the weights are
    # read once per step), so fewer, wider batches win (README: "What a checkpoint costs")
    for batch in batches_by_length(lengths, batch_tokens, max_padding=None):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[row, width - len(prompts[i]):] = 1
        steps = max(new_tokens[i] for i in batch)
        with torch.inference_mode():
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                       max_new_tokens=steps, pad_token_id=pad, num_beams=1)
        continuations = generated[:, width:].cpu().tolist()  # one read-back per batch
        for row, i in enumerate(batch):
            out[i] = _until_end(continuations[row][: new_tokens[i]], tokenizer.eos_token_id)
    return out


def _until_end(tokens: list[int], eos: int | None) -> list[int]:
    """The tokens before the model ended its text (a finished row of a batch is padded after that)."""
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens


def generate_answers(model: torch.nn.Module, tokenizer, prompts: list[str], new_tokens: list[int],
                     batch_tokens: int = 2048) -> list[str]:
    """What the model continues each prompt with, as text: the gate's tokenisation and decoding."""
    ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    continuations = greedy_continuations(model, tokenizer, ids, new_tokens, batch_tokens)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in continuations]
