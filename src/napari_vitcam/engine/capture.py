"""Forward hooks as context managers that always remove themselves.

Pure torch. Every context manager here undoes what it did on exit, also when
the body raises.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from napari_vitcam.core.errors import Cancelled


def output_tensor(output: object) -> torch.Tensor | None:
    """The tensor a module produced: the output itself, or the first item of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _first_tensor(output: object) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """The tensor a module produced, and a function that puts a replacement back."""
    tensor = output_tensor(output)
    if tensor is None:
        raise TypeError(f"module output of type {type(output).__name__} holds no tensor first")
    if tensor is output:
        return tensor, lambda t: t
    assert isinstance(output, (tuple, list))
    return tensor, lambda t: type(output)([t, *output[1:]])


@dataclass
class LeafCapture:
    """The activations a module produced during a forward, each a leaf that requires grad."""

    name: str
    activations: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def capture_as_leaf(module: nn.Module, name: str = "") -> Iterator[LeafCapture]:
    """Cut the graph at ``module``'s output and start recording gradients there.

    The module's output is replaced by a copy of a fresh leaf tensor that
    requires grad, and grad mode is switched on from that point of the forward
    pass, so the part of the model before the target runs without building a
    graph and the backward pass stops at the target. The copy keeps the leaf
    safe from in-place operations that follow the module. The caller restores
    grad mode (run the forward inside ``torch.no_grad()``).
    """
    capture = LeafCapture(name)

    def hook(_module, _args, output):
        torch.set_grad_enabled(True)
        tensor, rebuild = _first_tensor(output)
        leaf = tensor.detach()
        if leaf.is_inference():
            leaf = leaf.clone()
        leaf.requires_grad_(True)
        capture.activations.append(leaf)
        return rebuild(leaf.clone())

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


@contextmanager
def _on_outputs(
    modules: Mapping[str, nn.Module], receive: Callable[[str, torch.Tensor], None], copy: bool = False
) -> Iterator[None]:
    """Pass each call's output tensor (unchanged, graph whole) to ``receive(name, tensor)``.

    ``copy``: the model goes on with a copy of the tensor (in the graph, so
    gradients still reach the one received), so that an in-place operation
    after the module (``ReLU(inplace=True)`` after a norm) cannot change what was received.
    """
    handles = []
    try:
        for name, module in modules.items():

            def hook(_module: nn.Module, _args: object, output: object, _name: str = name) -> object:
                tensor = output_tensor(output)
                if tensor is None:
                    return None
                receive(_name, tensor)
                if not copy:
                    return None
                _, rebuild = _first_tensor(output)
                return rebuild(tensor.clone())

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_calls(modules: Mapping[str, nn.Module], *, copy: bool = False) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``(name, output)`` of every call to ``modules``, in the order the forward pass makes them.

    ``copy``: the model goes on with a copy of each output, so that in-place operations after a module
    cannot change what was recorded (the recorded tensor stays in the graph).
    """
    calls: list[tuple[str, torch.Tensor]] = []
    with _on_outputs(modules, lambda name, tensor: calls.append((name, tensor)), copy):
        yield calls


@contextmanager
def capture_outputs(modules: Mapping[str, nn.Module], *, copy: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Each module's outputs, in call order, recorded without changing them.

    ``copy``: the model goes on with a copy of each output, so that in-place operations after a module
    cannot change what was recorded (the recorded tensor stays in the graph).
    """
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    with _on_outputs(modules, lambda name, tensor: captured[name].append(tensor), copy):
        yield captured


P = ParamSpec("P")
R = TypeVar("R")


def with_gradients(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with autograd on, whatever grad mode the caller is in (``no_grad``, ``inference_mode``)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)

    return wrapper


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def cancellable(model: nn.Module, cancel: threading.Event | None) -> Iterator[None]:
    """Raise :class:`Cancelled` at the next submodule call once ``cancel`` is set."""
    if cancel is None:
        yield
        return

    def check(_module, _args):
        if cancel.is_set():
            raise Cancelled("cancelled")

    handles = [module.register_forward_pre_hook(check) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# One lock per model, created on first use and dropped with the model: the only module-level state of the engine.
_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises explanations of ``model`` across threads.

    An explanation hooks the model's modules and switches their training flags
    for the length of a forward and backward pass; two at once on one model
    would each see the other's activations. Every explanation (:func:`~napari_vitcam.engine.cam.grad_cam`, ``explain_tokens``, the sweeps, target probing) holds it
    for its whole run; hold it too around anything else done to the model for
    a run (moving it to a device). Reentrant, one per model, gone with the model.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock
