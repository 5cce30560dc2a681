"""Forward hooks that are always removed, and forward passes that stop once the caller has what it needs.

Every reader of a model's intermediate states (key statistics, subject keys, the residual at the
subject, the prefix cache, the memory's routing layer) and every writer (ROME's value offset, the
prefix cache's cached states) registers hooks the same way:

    with Hooks() as hooks:
        keys = hooks.record_input(projection)          # a list the forward pass fills
        model(input_ids=ids)

On leaving the block every hook is removed, whatever happened; a hook that raises `StopForward`
(or `record_*(..., stop=True)`) ends the forward pass there, and the block ends quietly: the layers
above the last one of interest are wasted work. In the spirit of `rome/util/nethook.py`'s `Trace`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook once the forward pass has produced what its caller needs."""


def hidden_of(output: Any) -> torch.Tensor:
    """A block's hidden states from its output (a tensor, or a tuple whose first item they are)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class Hooks:
    """Forward hooks registered for the length of a `with` block; `StopForward` ends the block."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, kind: type[BaseException] | None, _error: Any, _traceback: Any) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return kind is not None and issubclass(kind, StopForward)

    def before(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> None:
        """`hook(module, args[, kwargs])` before `module` runs; it may return replacement inputs."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def after(self, module: nn.Module, hook: Callable) -> None:
        """`hook(module, args, output)` after `module` runs; it may return a replacement output."""
        self._handles.append(module.register_forward_hook(hook))

    def record_input(self, module: nn.Module, *, stop: bool = False) -> list[torch.Tensor]:
        """The first input of each call of `module` (positional or `hidden_states=`), in call order."""
        inputs: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs.append(args[0] if args else kwargs["hidden_states"])
            if stop:
                raise StopForward

        self.before(module, record, with_kwargs=True)
        return inputs

    def record_output(self, module: nn.Module, *, stop: bool = False) -> list[torch.Tensor]:
        """The hidden states `module` returns at each call, in call order."""
        outputs: list[torch.Tensor] = []

        def record(_module: nn.Module, _args: tuple, output: Any) -> None:
            outputs.append(hidden_of(output))
            if stop:
                raise StopForward

        self.after(module, record)
        return outputs
