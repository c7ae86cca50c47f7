"""The fine-tuning loop: the zoo's class-prompt contrastive objective, validation-based model selection,
resumable checkpoints, mixed precision and torchrun data parallelism.

Pure of the disk except for the checkpoint file it is given. One run: the generalist is scored on val
(step 0), then every `eval_every` steps; the selected weights are the best val score (ties: the earlier
step, the one closer to the generalist). A checkpoint after each evaluation holds everything the next
steps depend on (trainable tensors, optimizer, sampler and RNG state, best state, curve), so a resumed
run continues exactly where the killed one stopped.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..harness.distributed import SINGLE, Dist
from ..io import atomic_write
from ..runtime.precision import autocast
from ..zoo.data import Split, normalize
from ..zoo.recipe import Stage
from ..zoo.train import (
    MAX_LOGIT_SCALE,
    BatchSampler,
    class_contrastive_loss,
    deterministic,
    draw_batch,
    evaluate,
    lr_factor,
    param_groups,
    set_lr,
    text_heads,
)


class ContrastiveLoss(nn.Module):
    """loss(pixels, labels) of `model` against the class prompts of one dataset, as a module, so
    DistributedDataParallel can wrap it (its forward is what DDP synchronizes gradients around)."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor, shape: tuple[int, int], preprocess_cfg: dict[str, Any]):
        super().__init__()
        self.model, self.shape, self.preprocess_cfg = model, shape, preprocess_cfg
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(normalize(pixels, self.preprocess_cfg))
        heads = text_heads(self.model, self.tokens, [self.shape])
        return class_contrastive_loss(features.float(), [h.float() for h in heads], [slice(0, len(labels))], labels,
                                      self.model.logit_scale)


@dataclass
class Selection:
    """The validation curve and the selected step (its trainable tensors on the CPU)."""

    metric: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = -1
    best_score: float = float("-inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, step: int, scores: dict[str, float], state: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.curve.append({"step": step, **scores})
        if scores[self.metric] > self.best_score:  # strictly better: ties keep the earlier step
            self.best_step, self.best_score, self.best_state = step, scores[self.metric], state()


@dataclass
class LoopResult:
    selection: Selection
    losses: list[float]
    steps: int
    seconds: float
    resumed_from: int | None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters being trained (LoRA: only the adapters)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def run_loop(model: nn.Module, tokenizer: Callable, train: Split, val: Split, stage: Stage, *,
             preprocess_cfg: dict[str, Any], seed: int, eval_every: int, metric: str = "top1",
             device: torch.device, precision: str = "fp32", checkpoint: Path | None = None, digest: str = "",
             dist: Dist = SINGLE, progress: bool = True, desc: str = "finetune",
             on_step: Callable[[int, float], None] | None = None) -> LoopResult:
    """Train `model` (its trainable parameters, in place) and return the selection; the caller loads
    `selection.best_state` for the selected weights. `digest` names the run: a checkpoint of another run
    is refused instead of silently continued."""
    from tqdm.auto import tqdm

    total = stage.num_steps(len(train))
    if stage.batch_size % dist.world:
        raise ValueError(f"batch_size {stage.batch_size} must be a multiple of the {dist.world} torchrun processes "
                         "(each takes an equal share of every batch)")
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    sampler = BatchSampler([len(train)], stage.batch_size, generator)
    loss_fn: nn.Module = ContrastiveLoss(model, tokenizer(train.captions).to(device),
                                         (len(train.descriptions), len(train.templates)), preprocess_cfg)
    if dist.active:
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    optimizer = torch.optim.AdamW(param_groups(model, stage), lr=stage.lr, betas=(0.9, 0.98), eps=1e-6)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    selection, losses, start_step, resumed, rng = Selection(metric), [], 0, None, None
    if checkpoint is not None and checkpoint.is_file():
        start_step, rng = _restore(checkpoint, digest, model, optimizer, sampler, generator, selection, losses)
        resumed = start_step
    shard = slice(dist.rank * stage.batch_size // dist.world, (dist.rank + 1) * stage.batch_size // dist.world)

    val = _on(val, device)  # once: scored at every evaluation

    def score(step: int) -> None:
        if dist.is_main:
            selection.record(step, _val_scores(model, tokenizer, val, preprocess_cfg, device, precision),
                             lambda: trainable_state(model))

    began = time.perf_counter()
    with deterministic(seed):
        if start_step == 0:
            score(0)  # the generalist itself: the expert must beat it on val to be selected
        else:
            torch.set_rng_state(rng)
        bar = tqdm(range(start_step, total), desc=desc, disable=not (progress and dist.is_main), dynamic_ncols=True,
                   initial=start_step, total=total)
        for step in bar:
            model.train()
            pixels, labels, _ = draw_batch([train], sampler(step), stage.augment, generator)
            pixels, labels = pixels[shard].to(device, non_blocking=True), labels[shard].to(device, non_blocking=True)
            set_lr(optimizer, lr_factor(step, total, stage))
            with autocast(device, precision):
                loss = loss_fn(pixels, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if stage.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable, stage.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            done = step + 1
            if done % eval_every == 0 or done == total:
                score(done)
                if checkpoint is not None and dist.is_main and done < total:
                    _save(checkpoint, digest, done, model, optimizer, sampler, generator, selection, losses)
                dist.barrier()
            if step % 10 == 0 or done == total:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
            if on_step is not None:
                on_step(done, losses[-1])
        bar.close()
    model.eval()
    return LoopResult(selection, losses, total, time.perf_counter() - began, resumed)


@torch.no_grad()
def _val_scores(model, tokenizer, val: Split, preprocess_cfg, device, precision) -> dict[str, float]:
    model.eval()
    with autocast(device, precision):
        scores = evaluate(model, tokenizer, val, preprocess_cfg, batch_size=128)
    return {k: scores[k] for k in ("top1", "balanced_acc")}


def _on(split: Split, device: torch.device) -> Split:
    import dataclasses

    return split if device.type == "cpu" else dataclasses.replace(split, images=split.images.to(device))


# -- checkpoints -------------------------------------------------------------------------------------
def _save(path: Path, digest: str, step: int, model, optimizer, sampler, generator, selection, losses) -> None:
    state = {"digest": digest, "step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
             "perm": [p.clone() for p in sampler._perm], "generator": generator.get_state(),
             "rng": torch.get_rng_state(), "losses": list(losses),
             "selection": {"curve": selection.curve, "best_step": selection.best_step,
                           "best_score": selection.best_score, "best_state": selection.best_state}}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _restore(path: Path, digest: str, model, optimizer, sampler, generator, selection, losses
             ) -> tuple[int, torch.Tensor]:
    """Load a checkpoint into the run's objects; (its step, the global RNG state to continue with)."""
    state = _load(path)
    if state.get("digest") != digest:
        raise ValueError(f"{path} is the checkpoint of another fine-tuning run (other generalist, data or "
                         "settings); delete it to start over, or rerun with the settings that wrote it")
    load_trainable(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    sampler._perm = list(state["perm"])
    generator.set_state(state["generator"])
    losses[:] = state["losses"]
    sel = state["selection"]
    selection.curve, selection.best_step = sel["curve"], sel["best_step"]
    selection.best_score, selection.best_state = sel["best_score"], sel["best_state"]
    return int(state["step"]), state["rng"]
