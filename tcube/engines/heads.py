"""Per-sample zero-shot heads of merged models: adaptive (error-measured, the default), exact, or grid.

head(λ) = normalize(mean over templates of normalize(text_features(prompt; λ))) is an analytic
function of λ (the merged text tower is a composition of smooth maps of affine-in-λ weights), so on
a short λ interval a low-degree polynomial reproduces it to fp32 noise. `adaptive` exploits that:

- λ is cut into fixed dyadic pieces of width 1/(`base_pieces`·2^d); λ values no built piece covers get
  pieces 2–4× as wide as their span, each a Chebyshev–Lobatto interpolant of the exact heads, built
  once and kept, so a streamed `Merger` stops encoding once its λ range is covered.
- Nodes double through nested Lobatto sets (2, 3, 5, 9, 17). Each doubling encodes the new nodes
  exactly and measures the current interpolant's error there in logits: |Δlogit| = exp(logit_scale) ·
  |⟨Δhead, image⟩| on the batch's own image features (every later batch is checked again, for free,
  and refines the piece if it fails), or the worst case ‖Δhead‖·exp(logit_scale) over all unit
  features when no images are given. Once ≤ `tol`, the piece keeps the interpolant through all
  nodes (one level finer than the one measured: geometric convergence puts its error far lower).
  A piece still above `tol` at 17 nodes is split (down to `max_depth` halvings), then encoded exactly.
- A batch with at most `exact_below` distinct λ (T^3_B, static merges, single samples) is encoded
  exactly: one encode per λ is cheaper than any interpolant.

The narrow λ range of the paper's rule ([0.5, 0.586]) costs 5 encodes of the prompts per new piece.
`exact` encodes the prompts once per distinct λ (the reference). `grid` is **approximate** and
opt-in: linear interpolation between G evenly spaced heads over [0, 1], error O(1/G²), not bounded
by the engine contract.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..models.heads import head_from_prompt_features, head_from_text_features
from .base import Engine

HEAD_MODES = ("adaptive", "exact", "grid")
APPROXIMATE_HEAD_MODES = ("grid",)
NESTED_NODES = (2, 3, 5, 9, 17)


def lobatto_nodes(a: float, b: float, n: int) -> torch.Tensor:
    """n Chebyshev–Lobatto points on [a, b], ascending, float64 (nested: those of n are every other one of 2n−1)."""
    k = torch.arange(n, dtype=torch.float64)
    return (a + b) / 2 - (b - a) / 2 * torch.cos(math.pi * k / (n - 1))


def barycentric(nodes: torch.Tensor, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Polynomial interpolant through (nodes [n] Lobatto, values [n, ...]) at x [m]: [m, ...] (float64)."""
    n = nodes.shape[0]
    w = torch.ones(n, dtype=torch.float64)
    w[1::2] = -1
    w[0], w[-1] = w[0] / 2, w[-1] / 2
    diff = x.double().view(-1, 1) - nodes.view(1, -1)
    hit = diff == 0
    q = w / torch.where(hit, torch.ones_like(diff), diff)
    q = torch.where(hit.any(1, keepdim=True), hit.double(), q)  # a node itself: its value, exactly
    flat = values.double().reshape(n, -1)
    return ((q @ flat) / q.sum(1, keepdim=True)).view(x.shape[0], *values.shape[1:])


def encode_prompts(engine, tokens: torch.Tensor, values: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """Text features [U, P, E] of all P prompts under each of the U coefficients (λ [U] or w [U, K]), in row chunks."""
    per = tokens.shape[0]
    tokens = tokens.repeat(values.shape[0], 1)
    rows = values.repeat_interleave(per, dim=0)
    feats = torch.cat([engine.text_features(tokens[s:s + chunk_rows], rows[s:s + chunk_rows])
                       for s in range(0, tokens.shape[0], chunk_rows)])
    return feats.view(values.shape[0], per, -1)


class _Piece:
    """One dyadic λ piece: an interpolant (nodes, heads, its last error check), split into halves, or exact."""

    __slots__ = ("kind", "nodes", "heads", "check", "scale", "limit", "error", "previous", "accepted")

    def __init__(self, kind: str, nodes=None, heads=None, *, scale: float = 1.0, limit: int = 0):
        self.kind, self.nodes, self.heads, self.scale, self.limit = kind, nodes, heads, scale, limit
        self.check = None  # [k, C, E]: previous interpolant minus exact heads at the newest k nodes
        self.error, self.previous, self.accepted = float("nan"), float("inf"), False


class TextHeads:
    """Heads [B, C, E] of each sample's merged model: `heads(lam, images)`; the modes: module docstring.

    `tol` (adaptive): largest measured interpolation error allowed, in logits, well under the engines'
    1e-4 contract so that the fp32 noise of the encodes (which exact heads share) fits in the rest. Where
    that noise itself is above `tol` (large logit scales, worst-case measure), a piece whose error stops
    falling when its nodes double is at the noise floor and is kept if the error is ≤ `noise_cap` ×
    exp(logit_scale); otherwise it is split. `stats` counts λ values encoded and pieces built.
    """

    def __init__(self, engine: Engine, tokens: torch.Tensor, n_classes: int, n_templates: int, *,
                 mode: str = "adaptive", grid_size: int = 33, tol: float = 5e-5, noise_cap: float = 2e-6,
                 base_pieces: int = 8,
                 max_depth: int = 3, exact_below: int = 4, chunk_rows: int = 512, cache_size: int = 64,
                 prompt_class: torch.Tensor | None = None):
        if mode not in HEAD_MODES:
            raise ValueError(f"unknown text head mode '{mode}'; choose one of {HEAD_MODES}")
        if mode == "grid" and grid_size < 2:
            raise ValueError(f"grid_size must be ≥ 2, got {grid_size}")
        if not tol > 0 or base_pieces < 1 or max_depth < 0:
            raise ValueError(f"need tol > 0, base_pieces ≥ 1, max_depth ≥ 0; got {tol}, {base_pieces}, {max_depth}")
        self.engine, self.tokens = engine, tokens
        self.n_classes, self.n_templates = n_classes, n_templates
        self.prompt_class = prompt_class  # classes with different numbers of prompts (a union of tasks)
        self.mode, self.grid_size, self.chunk_rows = mode, grid_size, chunk_rows
        self.tol, self.noise_cap, self.base_pieces, self.max_depth, self.exact_below = (
            tol, noise_cap, base_pieces, max_depth, exact_below)
        self.max_start_depth = 10  # the shortest piece a narrow batch starts with: 1/(base_pieces·2^10)
        self._cache: OrderedDict[float, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._grid: torch.Tensor | None = None
        self._pieces: dict[tuple[int, int], _Piece] = {}
        self._nodes: dict[float, torch.Tensor] = {}  # exact heads at interpolation nodes, by λ
        self.stats = {"encoded": 0, "pieces": 0, "splits": 0, "exact_fallback": 0}

    @property
    def approximate(self) -> bool:
        """True for modes whose error is not bounded by the engine contract (grid)."""
        return self.mode in APPROXIMATE_HEAD_MODES

    def __call__(self, lam: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Heads at each λ; `images` [B, E] (the batch's image features) lets adaptive measure its error
        on the directions it is used with, instead of the worst case over every unit vector."""
        if self.mode == "exact":
            return self.exact(lam)
        return self.adaptive(lam, images) if self.mode == "adaptive" else self.interpolated(lam)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Heads [U, C, E] at each λ in `values`, encoding prompts in row chunks."""
        self.stats["encoded"] += values.shape[0]
        feats = encode_prompts(self.engine, self.tokens, values, self.chunk_rows)
        self._feature_dtype = feats.dtype
        if self.prompt_class is not None:
            return head_from_prompt_features(feats, self.prompt_class)
        return head_from_text_features(feats, self.n_classes, self.n_templates)

    # -- exact: one encode per distinct λ (LRU-cached) ------------------------------------------------
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

    # -- adaptive: piecewise Chebyshev with a measured error bound -------------------------------------
    def adaptive(self, lam: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        values, inverse = torch.unique(lam, return_inverse=True)
        if values.numel() <= self.exact_below:
            return self.exact(lam)
        points = values.double().cpu()
        # the error is measured on the directions the heads are used with: these images' unit features
        feats = None if images is None else F.normalize(images.detach().double().cpu(), dim=-1)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        known = [self._locate(float(v)) for v in points]  # pieces built by earlier batches
        for piece in sorted(set(known) - {None}):
            at = torch.tensor([i for i, p in enumerate(known) if p == piece], dtype=torch.long)
            self._resolve(piece, points[at], at, parts, feats)
        new = torch.tensor([i for i, p in enumerate(known) if p is None], dtype=torch.long)
        if new.numel():
            # new pieces twice to four times as wide as the λ span left: a narrow span (the paper's rule gives
            # [0.5, 0.586]) gets a short piece, which a quadratic already resolves to fp32 noise
            span = float(points[new].max() - points[new].min())
            depth = self.max_start_depth if span == 0 else \
                max(0, min(self.max_start_depth, math.floor(math.log2(1 / (self.base_pieces * span))) - 1))
            index = self._index(points[new], depth)
            for k in index.unique().tolist():
                at = new[index == k]
                self._resolve((depth, k), points[at], at, parts, feats, limit=depth + self.max_depth)
        first = parts[0][1]
        out = first.new_empty(values.shape[0], *first.shape[1:])
        for at, heads in parts:
            out[at] = heads
        return out.to(lam.device)[inverse]

    def _index(self, points: torch.Tensor, depth: int) -> torch.Tensor:
        """Piece index of each λ at `depth` (λ = 1 belongs to the last piece of [0, 1])."""
        scaled = points * (self.base_pieces * 2**depth)
        index = scaled.floor().long()
        index[scaled == self.base_pieces * 2**depth] -= 1
        return index

    def _locate(self, value: float) -> tuple[int, int] | None:
        """The built piece (interpolant or exact) containing λ, shallowest first; None if there is none."""
        if not self._pieces:
            return None
        for depth in range(self.max_start_depth + self.max_depth + 1):
            count = self.base_pieces * 2**depth  # _index in plain float64 arithmetic (one λ: no tensors)
            piece = (depth, math.floor(value * count) - (value * count == count))
            state = self._pieces.get(piece)
            if state is not None and state.kind != "split":
                return piece
        return None

    def _bounds(self, piece: tuple[int, int]) -> tuple[float, float]:
        depth, k = piece
        width = 1.0 / (self.base_pieces * 2**depth)
        return k * width, (k + 1) * width

    def _resolve(self, piece, values: torch.Tensor, at: torch.Tensor, parts: list, feats, limit: int = 0) -> None:
        state = self._pieces.get(piece)
        if state is None:
            state = self._pieces[piece] = self._start(piece, limit)
        if state.kind == "interp":
            self._refine(piece, state, feats)  # new images: the measured error is checked on them too
        if state.kind == "interp":
            parts.append((at, F.normalize(barycentric(state.nodes, state.heads, values), dim=-1).float()))
        elif state.kind == "split":
            depth, k = piece
            mid = sum(self._bounds(piece)) / 2
            for child, mask in (((depth + 1, 2 * k), values <= mid), ((depth + 1, 2 * k + 1), values > mid)):
                if mask.any():
                    self._resolve(child, values[mask], at[mask], parts, feats, state.limit)
        else:
            parts.append((at, self.exact(values.to(torch.float32).to(self.tokens.device)).float().cpu()))

    def _node_heads(self, nodes: torch.Tensor) -> torch.Tensor:
        """Exact heads at float64 λ nodes, kept by value (pieces share endpoints and halves share nodes)."""
        keys = nodes.tolist()
        missing = [v for v in keys if v not in self._nodes]
        if missing:
            device = self.tokens.device
            self._nodes.update(zip(missing, self.encode(torch.tensor(missing, dtype=torch.float32, device=device))))
        return torch.stack([self._nodes[v] for v in keys]).cpu()

    def _start(self, piece, limit: int) -> _Piece:
        """A new piece holding the linear interpolant through its ends (checked and refined by _refine)."""
        a, b = self._bounds(piece)
        self._node_heads(lobatto_nodes(a, b, 3))  # ends and midpoint in one forward: the first check needs all three
        nodes = lobatto_nodes(a, b, NESTED_NODES[0])
        scale = float(self.engine.logit_scale(torch.tensor([a, b], device=self.tokens.device)).max())
        return _Piece("interp", nodes, self._node_heads(nodes), scale=scale, limit=limit)

    def _refine(self, piece, state: _Piece, feats: torch.Tensor | None) -> None:
        """Double the nodes until the error measured at the newest nodes is within tol; else split or go exact."""
        while True:
            if state.check is not None:
                error = self._measured(state, feats)
                # at the fp32 noise floor of the encodes themselves, doubling the nodes stops reducing the error
                at_noise_floor = state.nodes.shape[0] > NESTED_NODES[2] and error > state.previous / 4 \
                    and error <= self._noise_cap() * state.scale
                if error <= self.tol or at_noise_floor:
                    state.error = error if not state.accepted else max(state.error, error)
                    if not state.accepted:
                        state.accepted = True
                        self.stats["pieces"] += 1
                    return
                state.previous = error
            n = state.nodes.shape[0]
            if n == NESTED_NODES[-1]:
                state.kind = "split" if piece[0] < state.limit else "exact"
                self.stats["splits" if state.kind == "split" else "exact_fallback"] += 1
                state.nodes = state.heads = state.check = None
                return
            finer = lobatto_nodes(*self._bounds(piece), NESTED_NODES[NESTED_NODES.index(n) + 1])
            new = finer[1::2]
            new_heads = self._node_heads(new)
            # the current interpolant's error where it has not seen the function; the piece then keeps the
            # interpolant through all nodes (one degree higher: far below that error for analytic heads)
            state.check = F.normalize(barycentric(state.nodes, state.heads, new), dim=-1) - new_heads.double()
            merged = torch.empty(finer.shape[0], *state.heads.shape[1:], dtype=state.heads.dtype)
            merged[0::2], merged[1::2] = state.heads, new_heads
            state.nodes, state.heads, state.accepted, state.error = finer, merged, False, float("nan")

    def _measured(self, state: _Piece, feats: torch.Tensor | None) -> float:
        """|Δlogit| of the check: on the given unit image features, else the worst case over all of them."""
        if feats is None:
            return float(state.check.norm(dim=-1).max()) * state.scale
        return float(torch.einsum("kce,be->kcb", state.check, feats).abs().max()) * state.scale

    def _noise_cap(self) -> float:
        """noise_cap, scaled up when the text tower runs in reduced precision (autocast bf16/fp16 encodes)."""
        eps = torch.finfo(getattr(self, "_feature_dtype", torch.float32)).eps
        return self.noise_cap * max(1.0, eps / torch.finfo(torch.float32).eps)

    def describe(self) -> dict:
        """What made the heads, for outputs and results rows."""
        error = self.max_error() if self.mode == "adaptive" else None
        return {"mode": self.mode, "approximate": self.approximate, "max_error": None if error != error else error}

    def max_error(self) -> float:
        """Largest error measured on any piece in use (logit units; NaN before any was built)."""
        errors = [p.error for p in self._pieces.values() if p.kind == "interp"]
        return max(errors) if errors else float("nan")

    # -- grid: approximate, opt-in ---------------------------------------------------------------------
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
