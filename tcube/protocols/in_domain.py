"""in_domain: the expert's own dataset, test split, all classes."""
from __future__ import annotations

from .base import Context, EvalSet, Skip

NAME = "in_domain"


def eval_sets(ctx: Context) -> tuple[list[EvalSet], list[Skip]]:
    return [EvalSet(NAME, ctx.data)], []
