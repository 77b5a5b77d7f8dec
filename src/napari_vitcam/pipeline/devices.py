"""Choosing the device an explanation runs on."""

from __future__ import annotations

import torch

from napari_vitcam.core.errors import DeviceError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """``auto`` and the devices present here, best first."""
    found = ["auto"]
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    return [*found, "cpu"]


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device that is missing is an error."""
    if isinstance(name, torch.device):
        name = str(name)
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(available_devices())}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA is not available here (no GPU, or torch without CUDA): choose cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"there is no {name} (this machine has {torch.cuda.device_count()} CUDA devices): choose cuda:0 or auto"
            )
    elif device.type == "mps" and not _mps_available():
        raise DeviceError("MPS (Apple GPU) is not available here: choose cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}: choose one of {', '.join(available_devices())}")
    return device


def release_device_memory(device: torch.device) -> None:
    """Give cached GPU memory back to the driver."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
