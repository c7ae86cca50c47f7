"""Which torch device a run uses, and moving host tensors there.

`device=auto|cpu|cuda|cuda:N` everywhere (config, Merger, benchmarks) resolves through
`resolve_device`, so a request that cannot be met fails with one message instead of a CUDA
traceback deep inside a forward pass.
"""
from __future__ import annotations

import torch

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> cuda when a GPU is visible, else cpu; explicit names are checked, never silently replaced."""
    if isinstance(name, torch.device):
        dev = name
    elif name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(name))
        except RuntimeError:
            raise ValueError(f"device must be {DEVICE_CHOICES}, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                             "use device=cpu or device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def pin(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Page-locked copy of a host tensor bound for a GPU (so its copy can overlap compute); else unchanged.

    Pin a whole view once (e.g. every image of a cell) and split it into batches: views of pinned
    memory stay pinned, so `to_device` copies them without re-pinning.
    """
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        return tensor.pin_memory()
    return tensor


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; host -> GPU copies go from pinned memory with non_blocking=True.

    The non-blocking copy is ordered on the current CUDA stream before the kernels that read it,
    so it is safe without a synchronize.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return pin(tensor, device).to(device, non_blocking=True)
    return tensor.to(device)
