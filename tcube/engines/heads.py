"""Per-sample zero-shot heads of merged models: exact, or interpolated on a precomputed λ grid."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..models.heads import head_from_text_features
from .base import Engine

HEAD_MODES = ("exact", "grid")


class TextHeads:
    """head(λ) = normalize(mean over templates of normalize(text_features(prompt; λ))) for each sample's λ.

    `exact` encodes the prompts once per distinct λ with the engine. `grid` encodes them once at G
    evenly spaced λ ∈ [0, 1] (input-independent, so reused for every batch) and interpolates
    linearly between the two nearest grid heads, then renormalizes; its error shrinks as O(1/G²).
    """

    def __init__(self, engine: Engine, tokens: torch.Tensor, n_classes: int, n_templates: int, *,
                 mode: str = "exact", grid_size: int = 33, chunk_rows: int = 512, cache_size: int = 64):
        if mode not in HEAD_MODES:
            raise ValueError(f"unknown text head mode '{mode}'; choose one of {HEAD_MODES}")
        if mode == "grid" and grid_size < 2:
            raise ValueError(f"grid_size must be ≥ 2, got {grid_size}")
        self.engine, self.tokens = engine, tokens
        self.n_classes, self.n_templates = n_classes, n_templates
        self.mode, self.grid_size, self.chunk_rows = mode, grid_size, chunk_rows
        self._cache: OrderedDict[float, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._grid: torch.Tensor | None = None

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        return self.exact(lam) if self.mode == "exact" else self.interpolated(lam)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Heads [U, C, E] at each λ in `values`, encoding prompts in row chunks."""
        per = self.tokens.shape[0]
        tokens = self.tokens.repeat(values.shape[0], 1)
        rows = values.repeat_interleave(per)
        feats = torch.cat([self.engine.text_features(tokens[s:s + self.chunk_rows], rows[s:s + self.chunk_rows])
                           for s in range(0, tokens.shape[0], self.chunk_rows)])
        return head_from_text_features(feats.view(values.shape[0], per, -1), self.n_classes, self.n_templates)

    def exact(self, lam: torch.Tensor) -> torch.Tensor:
        values, inverse = torch.unique(lam, return_inverse=True)
        keys = values.tolist()
        missing = [v for v in keys if v not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.encode(torch.tensor(missing, dtype=lam.dtype, device=lam.device))))
        heads = torch.stack([self._cache[v] for v in keys])[inverse]
        for v in keys:  # least recently used λ leave first; repeated λ (static, T^3_B grids) stay
            self._cache.move_to_end(v)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return heads

    def interpolated(self, lam: torch.Tensor) -> torch.Tensor:
        if lam.min() < 0 or lam.max() > 1:
            raise ValueError("grid text heads cover λ ∈ [0, 1]; use text_heads='exact' for extrapolation")
        if self._grid is None:
            self._grid = self.encode(torch.linspace(0, 1, self.grid_size, device=lam.device))
        pos = lam.float() * (self.grid_size - 1)
        low = pos.floor().long().clamp(max=self.grid_size - 2)
        frac = (pos - low).view(-1, 1, 1)
        head = torch.lerp(self._grid[low], self._grid[low + 1], frac)
        return F.normalize(head, dim=-1)
