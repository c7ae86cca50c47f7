"""LoRA experts: low-rank adapters on a generalist's weight matrices, and the factors they leave.

A LoRA expert equals its generalist except on the adapted matrices, where W = W_gen + U·V with
U = (alpha/rank)·B [out, r] and V = A [r, in]. Training wraps each target in a torch parametrization
(W_gen frozen, A and B trained); `lora_factors` reads (U, V) back and `merge_lora` folds them in. A loaded
LoRA expert carries its factors (`factors_of`), so the fused engine can merge it per sample at the cost
of a plain forward plus the low-rank terms instead of a dense Δ per layer.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

# Presets over parameter names of the towers tcube supports: open_clip ViT/text (attn.in_proj_weight,
# attn.out_proj, mlp.c_fc/c_proj), timm ViT (attn.qkv/proj, mlp.fc1/fc2) and Hugging Face BERT.
TARGETS = {
    "attn": r"(.*\.)?(attn\.(in_proj_weight|out_proj\.weight|qkv\.weight|proj\.weight)"
            r"|attention\.(self\.(query|key|value)|output\.dense)\.weight)",
    "mlp": r"(.*\.)?(mlp\.(c_fc|c_proj|fc1|fc2)\.weight|intermediate\.dense\.weight|layer\.\d+\.output\.dense\.weight)",
    "all-linear": r".*",
}
TOWERS = ("visual", "text")
FACTORS_FILE = "lora.safetensors"
FORMAT = "tcube-lora-1"


@dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (the update is scaled by alpha/r), targets (presets of TARGETS or regular expressions
    over parameter names) and the towers they apply in."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn",)
    towers: tuple[str, ...] = TOWERS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "towers", tuple(self.towers))
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError(f"LoRA needs at least one target: a preset ({list(TARGETS)}) or a regular expression")
        bad = [t for t in self.towers if t not in TOWERS]
        if bad or not self.towers:
            raise ValueError(f"LoRA towers must be a non-empty subset of {list(TOWERS)}, got {list(self.towers)}")
        for t in self.targets:
            try:
                re.compile(TARGETS.get(t, t))
            except re.error as err:
                raise ValueError(f"LoRA target {t!r} is neither a preset ({list(TARGETS)}) nor a valid regular "
                                 f"expression ({err})") from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class LoraFactors:
    """W_expert − W_generalist = U·V for each named matrix (every other parameter equal), and the
    fingerprint of the generalist they are relative to (tcube.models.fingerprint)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    generalist: str


def _tower(name: str) -> str:
    return "visual" if name.startswith("visual.") else "text"


def _matrices(model: nn.Module) -> list[str]:
    """Every weight matrix LoRA can adapt: nn.Linear weights and packed attention in-projections."""
    names = []
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            names.append(prefix + "in_proj_weight")
        elif isinstance(module, nn.Linear):
            names.append(prefix + "weight")
    return names


def target_weights(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the matrices `config` adapts in `model`; a ValueError shows real names when none match."""
    patterns = [re.compile(TARGETS.get(t, t)) for t in config.targets]
    candidates = _matrices(model)
    names = [n for n in candidates if _tower(n) in config.towers and any(p.fullmatch(n) for p in patterns)]
    if not names:
        raise ValueError(f"LoRA targets {list(config.targets)} match no weight matrix in towers {list(config.towers)}; "
                         f"use a preset ({list(TARGETS)}) or a regular expression over names such as "
                         f"{candidates[:4]}")
    return names


class LowRank(nn.Module):
    """Parametrization W ↦ W + scale·B·A. B starts at zero, so training starts exactly at the generalist."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.scale = scale
        self.lora_A = nn.Parameter(weight.new_empty(rank, in_features))
        self.lora_B = nn.Parameter(weight.new_zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as in the LoRA paper's code

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A)


def add_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Freeze every parameter of `model` and add trainable adapters on the target matrices (in place).

    Seed torch before calling: A is drawn from the global generator. Returns the adapted names.
    """
    names = target_weights(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        module_name, _, param = name.rpartition(".")
        module = model.get_submodule(module_name)
        parametrize.register_parametrization(module, param, LowRank(getattr(module, param), config.rank, config.scale))
    return names


def _adapters(model: nn.Module) -> dict[str, LowRank]:
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for param, chain in module.parametrizations.items():
                for p in chain:
                    if isinstance(p, LowRank):
                        found[f"{module_name}.{param}" if module_name else param] = p
    return found


def lora_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(U, V) of each adapter of a model carrying adapters (add_lora): its update is U·V."""
    found = _adapters(model)
    if not found:
        raise ValueError("the model carries no LoRA adapters (tcube.models.lora.add_lora adds them)")
    return {n: ((p.scale * p.lora_B).detach().float().cpu().contiguous(), p.lora_A.detach().float().cpu().contiguous())
            for n, p in found.items()}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W_gen + U·V), leaving a plain open_clip model (in place)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for param in list(module.parametrizations):
                parametrize.remove_parametrizations(module, param, leave_parametrized=True)
    return model


def attach_factors(model: nn.Module, factors: LoraFactors) -> nn.Module:
    """Record on a (merged) expert the factors its weights came from; they travel with deep copies."""
    model.tcube_lora = factors
    return model


def factors_of(model: nn.Module) -> LoraFactors | None:
    """The LoRA factors a loaded expert carries (None for any other model)."""
    return getattr(model, "tcube_lora", None)


def apply_factors(generalist: nn.Module, factors: LoraFactors) -> nn.Module:
    """The expert: a copy of `generalist` with W + U·V on every factored matrix, carrying its factors."""
    expert = copy.deepcopy(generalist).eval()
    params = dict(expert.named_parameters())
    missing = [n for n in factors.factors if n not in params]
    if missing:
        raise ValueError(f"LoRA factors name matrices the generalist does not have: {missing[:4]}")
    with torch.no_grad():
        for name, (u, v) in factors.factors.items():
            w = params[name]
            if (u.shape[0], v.shape[1]) != tuple(w.shape):
                raise ValueError(f"LoRA factors for {name} make a {u.shape[0]}×{v.shape[1]} update, but the "
                                 f"generalist's matrix is {tuple(w.shape)}")
            w.add_((u @ v).to(w))
    return attach_factors(expert, factors)


def save_factors(factors: LoraFactors, path: str | Path) -> None:
    """Write the factors as safetensors (`<name>.lora_U`, `<name>.lora_V`), atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_write

    tensors = {}
    for name, (u, v) in factors.factors.items():
        tensors[f"{name}.lora_U"], tensors[f"{name}.lora_V"] = u.contiguous(), v.contiguous()
    meta = {"format": FORMAT, "generalist": factors.generalist}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_factors(path: str | Path) -> LoraFactors:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tcube LoRA factors file (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        keys = list(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    names = sorted({k.rsplit(".lora_", 1)[0] for k in keys})
    return LoraFactors({n: (tensors[f"{n}.lora_U"], tensors[f"{n}.lora_V"]) for n in names}, meta["generalist"])

