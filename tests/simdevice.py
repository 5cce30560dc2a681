"""A simulated GPU for the CPU: tensors that claim a device of their own and refuse what CUDA refuses.

No machine that builds or tests editgate has a GPU, so device handling is tested here. A `SimTensor` is
a CPU tensor (autograd, optimisers and kernels are the CPU's) whose `.device` says `sim:N`. Every torch
function and tensor method it meets goes through `SimTensor.__torch_function__`, which

- refuses, as CUDA does, a call that mixes tensors of two `sim` devices, or a `sim` tensor with a CPU
  tensor of more than zero dimensions (moves between devices, and CPU index tensors in `t[index]`, are
  allowed, and so are 0-dim CPU scalars);
- counts host synchronisations: `.item()`, `.tolist()`, `.numpy()`, a move to the CPU, `nonzero` and
  boolean-mask indexing (their output size depends on the data), per phase of the run.

`SimulatedDevices` (a function mode) turns factories called with `device=sim:N` and `.to("sim:N")` of a
CPU tensor into SimTensors, and `torch.device("sim", N)` is a valid device: PyTorch's PrivateUse1
backend is renamed `sim` (the name is process-wide; nothing else in the tests uses PrivateUse1).

(A dispatch-level subclass that really lives on the PrivateUse1 device would also check the backward
pass, but PyTorch 2.13's autograd engine has no ready queue for a Python-registered PrivateUse1
device: backward asserts. The backward pass runs where its forward ran, so forward checks cover it.)

`SimulatedGpus` is editgate's GPU seam (`editgate.models.GPUS`) for two such devices: with it installed,
`device: cuda` loads onto `sim:0` and `device: multi` splits the model over `sim:0` and `sim:1` with
accelerate's dispatch, so the CLI runs as on a two-GPU runner.

What this cannot show: speed, memory, kernels, and numerics of GPU kernels.
"""

from __future__ import annotations

import contextlib
import types
from collections import Counter
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from editgate.models import Gpus

BACKEND = "sim"
DEVICES = 2

_registered = False
REPORT: list[str] = []  # host synchronisations per phase of each run, for the test session's summary


def register() -> None:
    """Rename PrivateUse1 to `sim` (once per process) so `torch.device("sim:1")` parses."""
    global _registered
    if _registered:
        return
    torch.utils.rename_privateuse1_backend(BACKEND)
    torch._register_device_module(BACKEND, _DEVICE_MODULE)
    _registered = True


# `torch.sim`: what PyTorch asks of a backend's module. Not an available accelerator: optimisers and
# accelerate treat the run as they treat a CPU run, and the tensors carry the device.
_DEVICE_MODULE = types.SimpleNamespace(
    is_available=lambda: False, device_count=lambda: DEVICES, current_device=lambda: 0,
    is_initialized=lambda: True, _is_in_bad_fork=lambda: False, manual_seed_all=lambda seed: None)


def device(index: int = 0) -> torch.device:
    return torch.device(BACKEND, index)


class DeviceMismatch(RuntimeError):
    """What CUDA would raise: tensors of two devices in one call."""


_ACTIVE: list["SimulatedDevices"] = []
MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_, torch.Tensor.type_as}
TO_HOST = {torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy",
           torch.Tensor.__bool__: "item", torch.Tensor.__float__: "item", torch.Tensor.__int__: "item",
           torch.Tensor.__index__: "item"}
DATA_DEPENDENT = {torch.nonzero: "nonzero", torch.Tensor.nonzero: "nonzero", torch.masked_select: "mask",
                  torch.Tensor.masked_select: "mask", torch.where: None, torch.unique: "unique",
                  torch.Tensor.unique: "unique"}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
PASSTHROUGH = {torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.dim, torch.Tensor.size,
               torch.Tensor.numel, torch.Tensor.__len__, torch.Tensor.data_ptr, torch.Tensor.element_size,
               torch.Tensor.stride, torch.Tensor.is_contiguous}


METADATA_NAMES = {"__get__", "__set__", "_has_compatible_shallow_copy_type", "is_floating_point", "is_complex",
                  "is_signed", "get_device", "requires_grad_", "retain_grad", "register_hook", "__reduce_ex__",
                  "_is_view", "is_leaf", "untyped_storage", "storage_offset", "__hash__"}


def _sync(kind: str) -> None:
    for mode in _ACTIVE:
        mode.count(kind)


class SimTensor(torch.Tensor):
    """A CPU tensor that says it lives on `sim:N`."""

    _sim_device: torch.device

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._sim_device

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return False

    def __deepcopy__(self, memo: dict) -> "SimTensor":
        with torch._C.DisableTorchFunctionSubclass():
            copy = self.as_subclass(torch.Tensor).detach().clone().requires_grad_(self.requires_grad)
        return wrap(copy, self._sim_device)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PASSTHROUGH or getattr(func, "__name__", "") in METADATA_NAMES:
            with torch._C.DisableTorchFunctionSubclass():
                result = func(*args, **kwargs)
            if getattr(func, "__name__", "") == "__get__" and isinstance(args[0], SimTensor):
                return wrap(result, args[0]._sim_device)  # .grad, .data: where the tensor is
            return result
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        devices = {t._sim_device for t in tensors if isinstance(t, SimTensor)}
        target = _target_device(func, args, kwargs)
        _count(func, args)
        if func not in MOVES and func not in TO_HOST:
            _check(func, tensors, devices)
        if func in TO_HOST:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if target is not None and target.type in (BACKEND, "cpu"):
            if func is torch.Tensor.to and devices == {target}:
                unchanged = _parse_to(args, kwargs)[1] in (None, args[0].dtype) and not kwargs.get("copy")
                return args[0] if unchanged else \
                    wrap(_moved(func, args, kwargs), target)
            if target.type == "cpu":
                if func in (torch.Tensor.to, torch.Tensor.cpu):
                    _sync("to_cpu")
                return tree_map(_plain, _moved(func, args, kwargs))
            return tree_map(lambda t: wrap(t, target), _moved(func, args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        if func is torch.Tensor.copy_ and isinstance(args[0], SimTensor):
            return args[0]
        out_device = next(iter(devices)) if devices else None
        return tree_map(lambda t: wrap(t, out_device), result) if out_device is not None else result


def _count(func: Any, args: tuple) -> None:
    if func in TO_HOST:
        _sync(TO_HOST[func])
    elif DATA_DEPENDENT.get(func):
        _sync(DATA_DEPENDENT[func])
    elif func in INDEXING and _has_bool_index(args):
        _sync("bool_index")


def wrap(value: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    out = value if isinstance(value, SimTensor) else value.as_subclass(SimTensor)
    out._sim_device = device
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, SimTensor):
        with torch._C.DisableTorchFunctionSubclass():
            return value.as_subclass(torch.Tensor)
    return value


def _check(func: Any, tensors: list[torch.Tensor], devices: set) -> None:
    if len(devices) > 1:
        raise DeviceMismatch(f"{_name(func)}: expected all tensors to be on the same device, "
                             f"found {sorted(map(str, devices))}")
    if not devices:
        return
    on_cpu = [t for t in tensors if not isinstance(t, SimTensor) and t.dim() > 0]
    if not on_cpu:
        return
    if func in INDEXING and isinstance(tensors[0], SimTensor) and \
            all(t.dtype in (torch.int64, torch.int32, torch.bool) for t in on_cpu):
        return  # CPU index tensors into a device tensor: CUDA copies them over
    raise DeviceMismatch(f"{_name(func)}: expected all tensors to be on the same device, found "
                         f"{next(iter(devices))} and cpu (a tensor of shape {tuple(on_cpu[0].shape)})")


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))


def _has_bool_index(args: tuple) -> bool:
    flat, _ = tree_flatten(args[1:2])
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.dim() > 0 for t in flat)


def _parse(value: Any) -> torch.device | None:
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            return None
    return None


def _parse_to(args: tuple, kwargs: dict) -> tuple:
    """(device, dtype, non_blocking, memory_format) of a `.to(...)` call, as PyTorch reads them."""
    kwargs = {k: v for k, v in kwargs.items() if k != "copy"}  # `copy=True`: every simulated move copies
    with torch._C.DisableTorchFunctionSubclass():
        return torch._C._nn._parse_to(*args[1:], **kwargs)


def _target_device(func: Any, args: tuple, kwargs: dict) -> torch.device | None:
    """Where a call puts its result: a `device=` argument, `.to(device)`, `.cpu()`."""
    if func is torch.Tensor.cpu:
        return torch.device("cpu")
    if func is torch.Tensor.to:
        other = next((a for a in args[1:] if isinstance(a, torch.Tensor)), kwargs.get("other"))
        return other.device if isinstance(other, torch.Tensor) else _parse_to(args, kwargs)[0]
    if kwargs.get("device") is not None:
        return _parse(kwargs["device"])
    return None


def _moved(func: Any, args: tuple, kwargs: dict) -> Any:
    """The call with its data kept on the CPU: a factory made there, or a copy made by `.to`/`.cpu()`
    (a move makes a new tensor on a GPU: in-place changes to it never reach the original)."""
    with torch._C.DisableTorchFunctionSubclass():
        if func is torch.Tensor.cpu:
            return args[0].clone()
        if func is torch.Tensor.to:
            _, dtype, non_blocking, memory_format = _parse_to(args, kwargs)
            source = args[0]
            out = source.to(dtype=dtype or source.dtype, non_blocking=non_blocking,
                            memory_format=memory_format or torch.preserve_format)
            return out.clone() if out.data_ptr() == source.data_ptr() else out
        return func(*args, **{**kwargs, "device": "cpu"})


class SimulatedDevices(TorchFunctionMode):
    """Factories with `device=sim:N` and `.to("sim:N")` of CPU tensors make SimTensors; counts syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.phase = "setup"
        self.by_phase: dict[str, Counter[str]] = {}

    def count(self, kind: str) -> None:
        self.syncs[kind] += 1
        self.by_phase.setdefault(self.phase, Counter())[kind] += 1

    @contextlib.contextmanager
    def counting(self, phase: str) -> Iterator[Counter[str]]:
        """Host synchronisations inside the block, under `phase`."""
        previous, self.phase = self.phase, phase
        counter = self.by_phase.setdefault(phase, Counter())
        try:
            yield counter
        finally:
            self.phase = previous

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = _target_device(func, args, kwargs)
        involved = any(isinstance(t, SimTensor) for t in tree_flatten((args, kwargs))[0])
        if target is not None and target.type == BACKEND and not involved:
            leaf = func is not torch.Tensor.to and kwargs.get("requires_grad", False)
            result = tree_map(lambda t: wrap(t, target), _moved(func, args, {**kwargs, "requires_grad": False}
                                                                if leaf else kwargs))
            return result.requires_grad_(True) if leaf else result  # a factory's tensor is a leaf
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_devices() -> Iterator[SimulatedDevices]:
    """The mode, with nn.Module.to() swapping parameters for SimTensors instead of assigning `.data`."""
    register()
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    mode = SimulatedDevices()
    _ACTIVE.append(mode)
    try:
        with mode:
            yield mode
    finally:
        _ACTIVE.remove(mode)
        torch.__future__.set_swap_module_params_on_conversion(previous)


class SimulatedGpus(Gpus):
    """Two simulated GPUs behind editgate's device seam."""

    type = BACKEND

    def count(self) -> int:
        return DEVICES

    def shard(self, load) -> nn.Module:
        """accelerate's `device_map="auto"` cannot size simulated devices, so the split is fixed: see `split`."""
        return split(load())


def split(model: nn.Module) -> nn.Module:
    """The model over sim:0 and sim:1 with accelerate's dispatch (the hooks `device_map="auto"` installs):
    the embeddings and block 0 on sim:0; every later block, the final norm and the head on sim:1, so the
    edited layers sit on the second device and an edit's inputs, keys and outputs live on different
    devices. A head tied to the embeddings (GPT-2) is one tensor on one device, as "auto" keeps it."""
    from accelerate import dispatch_model

    from editgate.architecture import block_list

    blocks_name, blocks = block_list(model)
    device_map = {name: "sim:1" for name, _ in model.named_children()}
    base = model.base_model_prefix
    del device_map[base]
    for name, _ in getattr(model, base).named_children():
        device_map[f"{base}.{name}"] = "sim:0" if "emb" in name or name in ("wte", "wpe") else "sim:1"
    del device_map[blocks_name]
    for i in range(len(blocks)):
        device_map[f"{blocks_name}.{i}"] = "sim:0" if i == 0 else "sim:1"
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embeddings.weight:
        for name, module in model.named_children():
            if module is head:
                device_map[name] = "sim:0"
    return dispatch_model(model, device_map=device_map)
