"""Mixed precision: `precision=fp32|bf16|fp16` runs the model forwards under torch.autocast.

Only the towers' forwards run in reduced precision. The merge arithmetic stays fp32 whatever the
setting: weight interpolation and per-row λ·ΔW terms are elementwise ops (autocast leaves them
alone), endpoint logits are cast to fp32 before softmax, JS and λ are computed outside autocast,
and the final cosine logits are computed with autocast disabled (tcube.engines.base.merged_logits).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device | str) -> str:
    """The precision name, validated for `device`; fp16 needs CUDA (CPU autocast is made for bf16)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose precision=" + "|".join(PRECISIONS))
    if name == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("precision=fp16 needs a CUDA device (fp16 matmuls on CPU are slow or unsupported); "
                         "on CPU use precision=bf16 or precision=fp32")
    return name


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for the model forwards, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])
