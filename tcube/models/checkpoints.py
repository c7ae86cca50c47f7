"""Safe state-dict I/O: safetensors, or torch.load(weights_only=True); never arbitrary pickles."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..io import atomic_write

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict of tensors (CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"refusing to unpickle {path}: it holds Python objects beyond tensors, and loading it "
                "could run arbitrary code. Re-save it as a plain state dict "
                "(safetensors.torch.save_file(model.state_dict(), 'expert.safetensors'))."
            ) from err
    # Training scripts often wrap the weights; unwrap the common layouts.
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def save_state_dict_file(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def mismatches(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Human-readable differences in names and shapes between two state dicts (first `limit`)."""
    found = []
    for key in sorted(reference.keys() - other.keys()):
        found.append(f"missing '{key}'")
    for key in sorted(other.keys() - reference.keys()):
        found.append(f"unexpected '{key}'")
    for key in sorted(reference.keys() & other.keys()):
        if reference[key].shape != other[key].shape:
            found.append(f"'{key}': shape {tuple(other[key].shape)} vs {tuple(reference[key].shape)}")
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


def check_compatible(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], what: str) -> None:
    """Raise a ValueError listing the first mismatches when two state dicts differ in names or shapes."""
    problems = mismatches(reference, other)
    if problems:
        raise ValueError(
            f"{what}: the two models must have identical parameter names and shapes (an expert must be "
            "fine-tuned from its generalist). First mismatches: " + "; ".join(problems)
        )
