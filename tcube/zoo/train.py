"""Training and scoring of zoo models: pure functions of (model, data, stage, seed).

Nothing here touches the disk; `store.py` decides what to train and where it goes.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment_batch
from .data import Split, normalize
from .recipe import Recipe, Stage

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp


def training_device() -> torch.device:
    """A GPU when one is visible (never required); TCUBE_ZOO_DEVICE=cpu|cuda|cuda:N overrides.

    Weights are reproducible per device kind: a GPU-trained zoo differs from a CPU-trained one, which
    is why the manifest records the device.
    """
    import os

    return torch.device(os.environ.get("TCUBE_ZOO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels, restoring the caller's RNG and flags afterwards."""
    import torch.utils.deterministic as det

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = det.fill_uninitialized_memory
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also NaN-fills every new tensor (~10 % of a step here); the code never
        # reads uninitialized memory, so that guard buys nothing.
        det.fill_uninitialized_memory = False
        try:
            yield
        finally:
            det.fill_uninitialized_memory = fill
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def class_contrastive_loss(image_features: torch.Tensor, heads: Sequence[torch.Tensor], groups: Sequence[slice],
                           labels: torch.Tensor, logit_scale: torch.Tensor, *, union: bool = False) -> torch.Tensor:
    """Mean cross-entropy of each image against the class heads of its own dataset (or, `union`, of all).

    Plain CLIP InfoNCE would treat the many copies of the same caption in a batch (a batch holds
    only a dozen distinct captions) as negatives; scoring every image against all class captions
    of its dataset is the zero-shot classifier's own objective. `groups[i]` is the slice of the
    batch drawn from the dataset whose head is `heads[i]` ([C_i, E], normalized). With `union`, every
    image is scored against the concatenated heads, its label offset to its dataset's block.
    """
    img = F.normalize(image_features, dim=-1)
    if union:
        offsets = torch.tensor([0] + [h.shape[0] for h in heads[:-1]], device=labels.device).cumsum(0)
        block = torch.cat([torch.full((g.stop - g.start,), i, device=labels.device) for i, g in enumerate(groups)])
        logits = logit_scale.exp() * img @ torch.cat(list(heads)).T
        return F.cross_entropy(logits, labels + offsets[block])
    total = image_features.new_zeros(())
    for head, rows in zip(heads, groups):
        logits = logit_scale.exp() * img[rows] @ head.T
        total = total + F.cross_entropy(logits, labels[rows], reduction="sum")
    return total / len(labels)


def text_heads(model: nn.Module, tokens: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """One head per dataset from all captions at once: normalize, mean over templates, normalize."""
    feats = F.normalize(model.encode_text(tokens), dim=-1)
    heads, start = [], 0
    for n_classes, n_templates in shapes:
        chunk = feats[start:start + n_classes * n_templates].view(n_classes, n_templates, -1).mean(dim=1)
        heads.append(F.normalize(chunk, dim=-1))
        start += n_classes * n_templates
    return heads


class BatchSampler:
    """Indices for each step: a fixed share of every dataset per batch, each dataset read in
    reshuffled passes without replacement (the generator makes it reproducible)."""

    def __init__(self, sizes: Sequence[int], batch_size: int, generator: torch.Generator):
        if batch_size < len(sizes):
            raise ValueError(f"batch_size {batch_size} < {len(sizes)} datasets: every dataset needs a share")
        self.sizes, self.batch_size, self.generator = list(sizes), batch_size, generator
        self._perm = [torch.empty(0, dtype=torch.long) for _ in sizes]

    def shares(self, step: int) -> list[int]:
        k = len(self.sizes)
        base, extra = divmod(self.batch_size, k)
        return [base + (1 if (i - step) % k < extra else 0) for i in range(k)]

    def _take(self, i: int, n: int) -> torch.Tensor:
        while len(self._perm[i]) < n:
            self._perm[i] = torch.cat([self._perm[i], torch.randperm(self.sizes[i], generator=self.generator)])
        out, self._perm[i] = self._perm[i][:n], self._perm[i][n:]
        return out

    def __call__(self, step: int) -> list[torch.Tensor]:
        return [self._take(i, n) for i, n in enumerate(self.shares(step))]


def lr_factor(step: int, total: int, stage: Stage) -> float:
    """Linear warm-up, then cosine decay to `min_lr_frac`."""
    warm = max(1, round(stage.warmup_frac * total)) if stage.warmup_frac > 0 else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return stage.min_lr_frac + (1 - stage.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def draw_batch(splits: Sequence[Split], picks: Sequence[torch.Tensor], augment, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """(pixels in [0, 1], labels, one slice of rows per split) for the drawn indices, augmented if asked."""
    pixels = torch.cat([s.images[i] for s, i in zip(splits, picks)]).float() / 255.0
    labels = torch.cat([s.labels[i] for s, i in zip(splits, picks)])
    if augment is not None:
        pixels = augment_batch(pixels, augment, generator)
    bounds = torch.tensor([0] + [len(i) for i in picks]).cumsum(0).tolist()
    return pixels, labels, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


def param_groups(model: nn.Module, stage: Stage) -> list[dict[str, Any]]:
    """Weight decay on matrices only; logit_scale in its own group (own lr, no decay)."""
    decay, no_decay, scale = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "logit_scale":
            scale.append(p)
        elif p.ndim < 2 or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": stage.weight_decay, "base_lr": stage.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": stage.lr},
              {"params": scale, "weight_decay": 0.0, "base_lr": stage.logit_scale_lr or stage.lr}]
    return [g for g in groups if g["params"]]


@dataclass
class TrainLog:
    """What a training run did (summarized into the manifest)."""

    steps: int
    batch_size: int
    seconds: float
    losses: list[float] = field(repr=False)
    samples: dict[str, int]
    logit_scale: dict[str, float]
    device: str = "cpu"

    def summary(self, n_points: int = 20) -> dict[str, Any]:
        n = len(self.losses)
        w = max(1, n // 20)
        chunk = max(1, math.ceil(n / n_points))
        curve = [[min(i + chunk, n), round(sum(self.losses[i:i + chunk]) / len(self.losses[i:i + chunk]), 4)]
                 for i in range(0, n, chunk)]
        return {"first": round(sum(self.losses[:w]) / w, 4), "last": round(sum(self.losses[-w:]) / w, 4),
                "min": round(min(self.losses), 4), "curve": curve}


def train_clip(model: nn.Module, tokenizer: Callable, splits: Sequence[Split], stage: Stage, *,
               preprocess_cfg: dict[str, Any], seed: int, desc: str = "train", progress: bool = True) -> TrainLog:
    """Train `model` in place on `splits` with the class-level contrastive loss; returns the log.

    Same model, data, stage and seed → bit-identical weights on the same machine and thread count.
    """
    from tqdm.auto import tqdm

    total = stage.num_steps(sum(len(s) for s in splits))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device  # batches are drawn and augmented on the CPU (seeded), then moved
    tokens = torch.cat([tokenizer(s.captions) for s in splits]).to(device)
    shapes = [(len(s.descriptions), len(s.templates)) for s in splits]
    sizes = [len(s) for s in splits]
    if not stage.balanced and len(splits) > 1:
        raise ValueError("training on several datasets needs a balanced stage (Stage.balanced=True)")
    sampler = BatchSampler(sizes, stage.batch_size, generator)
    optimizer = torch.optim.AdamW(param_groups(model, stage), lr=stage.lr, betas=(0.9, 0.98), eps=1e-6)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    losses, seen = [], [0] * len(splits)
    scale_init = float(model.logit_scale.detach().exp())
    start = time.perf_counter()
    model.train()
    with deterministic(seed):
        bar = tqdm(range(total), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
        for step in bar:
            picks = sampler(step)
            pixels, labels, groups = draw_batch(splits, picks, stage.augment, generator)
            pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            set_lr(optimizer, lr_factor(step, total, stage))
            features = model.encode_image(normalize(pixels, preprocess_cfg))
            loss = class_contrastive_loss(features, text_heads(model, tokens, shapes), groups, labels,
                                          model.logit_scale, union=stage.objective == "union")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stage.grad_clip:
                nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            seen = [a + len(i) for a, i in zip(seen, picks)]
            if step % 10 == 0 or step == total - 1:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        bar.close()
    model.eval()
    return TrainLog(total, stage.batch_size, time.perf_counter() - start, losses,
                    {s.dataset: n for s, n in zip(splits, seen)},
                    {"init": round(scale_init, 4), "final": round(float(model.logit_scale.detach().exp()), 4)},
                    str(device))


def new_generalist(recipe: Recipe, seed: int) -> nn.Module:
    """Randomly initialized zoo CLIP (seeded), with the recipe's logit_scale init and frozen parts."""
    from tcube.models import build_model

    with deterministic(seed):
        model = build_model(recipe.model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(recipe.logit_scale_init)
    return _freeze(model, recipe)


def new_expert(generalist: nn.Module, recipe: Recipe) -> nn.Module:
    """A trainable copy of the generalist (same frozen parts)."""
    return _freeze(copy.deepcopy(generalist), recipe)


def _freeze(model: nn.Module, recipe: Recipe) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    if recipe.freeze_token_embedding and hasattr(model, "token_embedding"):
        model.token_embedding.weight.requires_grad_(False)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Callable, split: Split, preprocess_cfg: dict[str, Any],
             batch_size: int = 512) -> dict[str, float]:
    """Zero-shot top-1 / balanced accuracy (percent) with the split's own prompts; majority baseline."""
    from tcube.models import zero_shot_head
    from tcube.reporting.scores import balanced_accuracy, top1

    model.eval()
    head = zero_shot_head(model, tokenizer, split.descriptions, split.templates)
    feats = torch.cat([model.encode_image(normalize(chunk.float() / 255.0, preprocess_cfg))
                       for chunk in split.images.split(batch_size)])
    preds = (F.normalize(feats, dim=-1) @ head.T).argmax(dim=1)
    counts = torch.bincount(split.labels, minlength=len(split.descriptions))
    return {"top1": round(top1(preds, split.labels), 2),
            "balanced_acc": round(balanced_accuracy(preds, split.labels, len(split.descriptions)), 2),
            "majority": round(100.0 * float(counts.max()) / len(split), 2), "n": len(split)}
