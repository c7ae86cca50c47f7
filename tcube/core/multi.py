"""Coefficient rules for one generalist and K experts: w [B, K], the weights on the experts' task vectors.

θ(x) = θ_gen + Σ_k w_k(x)·τ_k with τ_k = θ_k − θ_gen (DESIGN.md §7). Every rule below reduces to its
two-model counterpart when K = 1 (then w_1 = 1 − λ). The label space is the union of the experts' tasks;
`blocks[k]` holds the union indices of expert k's own classes.

Derivation of multi-expert T^3. The paper's rule merges one pair per sample: θ_k(x) = λ_k(x)·θ_gen +
(1 − λ_k(x))·θ_k with λ_k = σ(γ·JS_k). With K experts, average those K pair merges, each weighted by
how much x belongs to expert k's task, π_k(x) (Σ_k π_k = 1): θ(x) = Σ_k π_k·θ_k(x) = θ_gen +
Σ_k π_k·(1 − λ_k)·τ_k, so w_k = π_k·(1 − λ_k). With K = 1, π_1 = 1 and this is T^3 exactly. π_k is the
generalist's probability mass on expert k's classes (the robust model says which task x is from), and
JS_k compares the two models inside expert k's task (both distributions renormalized to its classes), which
is what the pair rule measures when it runs on that task alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .coefficients import entropy, js_divergence, t3_lambda


def check_blocks(blocks: Sequence[Tensor], n_classes: int) -> list[Tensor]:
    """Each expert's class indices into the union label space: non-empty, in range, not shared by two experts."""
    out = [torch.as_tensor(b, dtype=torch.long).reshape(-1) for b in blocks]
    seen: set[int] = set()
    for k, b in enumerate(out):
        if b.numel() == 0 or int(b.min()) < 0 or int(b.max()) >= n_classes:
            raise ValueError(f"expert {k}'s classes {b.tolist()} must be a non-empty set of indices into the "
                             f"{n_classes} union classes")
        if seen & set(b.tolist()):
            raise ValueError(f"expert {k} shares classes {sorted(seen & set(b.tolist()))} with another expert; "
                             "each union class belongs to one expert's task")
        seen |= set(b.tolist())
    return out


def task_mass(p: Tensor, blocks: Sequence[Tensor]) -> Tensor:
    """[B, K]: the probability each row puts on expert k's classes (a soft guess of the task)."""
    return torch.stack([p[:, b.to(p.device)].sum(-1) for b in blocks], dim=-1)


def _within(p: Tensor, block: Tensor) -> Tensor:
    """p restricted to one task's classes and renormalized (a task with no mass becomes uniform)."""
    q = p[:, block.to(p.device)]
    total = q.sum(-1, keepdim=True)
    return torch.where(total > 0, q / total.clamp_min(1e-30), torch.full_like(q, 1.0 / q.shape[-1]))


def task_js(p_gen: Tensor, p_exps: Tensor, blocks: Sequence[Tensor]) -> Tensor:
    """[B, K]: JS(p_gen ‖ p_k) within expert k's task (nats)."""
    return torch.stack([js_divergence(_within(p_gen, b), _within(p_exps[k], b)) for k, b in enumerate(blocks)], -1)


def one_hot_route(scores: Tensor) -> Tensor:
    """[B, K] one-hot at each row's largest score (ties: the first expert)."""
    return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).to(scores.dtype)


def multi_t3_weights(p_gen: Tensor, p_exps: Tensor, blocks: Sequence[Tensor], *, gamma: float = 0.5,
                     lambda_min: float = 0.0, lambda_max: float = 1.0, tau: float = 0.0,
                     hard: bool = True) -> Tensor:
    """Multi-expert T^3 (module docstring): w_k = π_k·(1 − λ_k), λ_k = λ_min + (λ_max − λ_min)·σ(γ·(JS_k − τ)).

    `hard` (default): π is one-hot at the generalist's most likely task (each image merged with one expert only);
    False: π is the generalist's task mass.
    """
    lam = t3_lambda(task_js(p_gen, p_exps, blocks), gamma=gamma, lambda_min=lambda_min, lambda_max=lambda_max,
                    tau=tau)
    pi = task_mass(p_gen.to(lam.dtype), blocks)
    return (one_hot_route(pi) if hard else pi) * (1.0 - lam)


def multi_dawin_weights(p_gen: Tensor, p_exps: Tensor) -> Tensor:
    """DaWin over K + 1 models: w_k = e^{−H_k} / (e^{−H_gen} + Σ_j e^{−H_j}), entropies over the union classes.

    With K = 1 this is DaWin's weight on the expert, e^{−H_exp}/(e^{−H_gen} + e^{−H_exp}).
    """
    h = torch.cat([entropy(p_gen).unsqueeze(0), entropy(p_exps)])  # [K+1, B]
    return torch.softmax(-h, dim=0)[1:].T.contiguous()


def route_weights(p_gen: Tensor, blocks: Sequence[Tensor], *, alpha: float = 0.5, hard: bool = True) -> Tensor:
    """The cheap router: only the generalist's own prediction picks the expert, w = (1 − α)·π (no expert forward).

    α is the weight left on the generalist (WiSE-FT's, 0.5 by default); π is one-hot at the generalist's most
    likely task (`hard`, the default: at most K distinct merged models) or its task mass.
    """
    pi = task_mass(p_gen, blocks)
    return (1.0 - alpha) * (one_hot_route(pi) if hard else pi)


def oracle_weights(domain: Tensor, n_experts: int, expert_weight: Tensor | float) -> Tensor:
    """[B, K]: each image's own task's expert at `expert_weight` (scalar or [B, K]), the others at 0."""
    route = torch.nn.functional.one_hot(domain.long(), n_experts).float()
    return route * expert_weight
