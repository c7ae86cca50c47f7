"""`finetune(generalist, dataset, out=...)`: an expert from any generalist `load_model` accepts, saved where
`load_pair` and the harness read it.

Folder written (atomically, so a killed run leaves none): full fine-tuning, or LoRA with save="merged", is a
complete open_clip `local-dir:` folder (LoRA also keeps `lora.safetensors`, so tcube still merges it at
plain-forward cost); LoRA with save="factors" holds only the factors and loads next to its generalist
(`load_pair(generalist, "local-dir:OUT")`). Both carry `manifest.json`: generalist spec and fingerprint, data
files and MD5s, the recipe, seed, device, precision, the validation curve and the selected step.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.fingerprint import model_fingerprint
from ..models.lora import (
    FACTORS_FILE,
    LoraConfig,
    LoraFactors,
    add_lora,
    attach_factors,
    lora_factors,
    merge_lora,
    save_factors,
)
from ..zoo.recipe import Augment, Stage

log = logging.getLogger("tcube.finetune")

MANIFEST = "manifest.json"
MODES = ("full", "lora")
SAVES = ("factors", "merged")
METRICS = ("top1", "balanced_acc")
# Defaults for a pre-trained generalist such as BiomedCLIP: full fine-tuning needs a small lr not to destroy
# it; LoRA's zero-initialized update tolerates a larger one (the usual 10x).
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything besides the generalist and the data that decides the expert's weights."""

    mode: str = "full"
    lora: LoraConfig = LoraConfig()
    steps: int = 200
    batch_size: int = 32
    lr: float | None = None            # None: DEFAULT_LR[mode]
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    min_lr_frac: float = 0.0
    grad_clip: float = 1.0
    augment: bool = False              # the zoo generalist's batch augmentation (zoom, shift, flips, ...)
    eval_every: int = 50               # val scoring (and a checkpoint) every this many steps
    metric: str = "top1"               # what selects the step: top1 | balanced_acc (on val)
    val_limit: int | None = 512        # val images scored per evaluation (seeded, class-stratified); None: all

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for key in ("steps", "batch_size", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        if self.val_limit is not None and self.val_limit < 1:
            raise ValueError(f"val_limit must be ≥ 1 or None (all), got {self.val_limit}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def stage(self) -> Stage:
        return Stage(batch_size=self.batch_size, lr=self.learning_rate, steps=self.steps, warmup_frac=self.warmup_frac,
                     min_lr_frac=self.min_lr_frac, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                     augment=Augment() if self.augment else None)

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        d["lr"] = self.learning_rate
        if self.mode != "lora":
            d.pop("lora")
        return d


def full_preprocess_cfg(loaded) -> dict[str, Any]:
    """Every preprocess field (size, mean, std, interpolation, ...) of a loaded model: training normalizes
    batches itself and needs mean/std even where the model's folder named only the size."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = dict(loaded.preprocess_cfg)
    if not cfg:  # hub and built-in models carry it on the image tower
        cfg = dict(getattr(getattr(loaded.model, "visual", None), "preprocess_cfg", {}) or {})
    return dataclasses.asdict(PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), cfg)))


def finetune(generalist: str, dataset: Any, *, out: str | os.PathLike, recipe: Recipe = Recipe(),
             save: str = "factors", seed: int = 0, device: str = "auto", precision: str = "fp32",
             data_root: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
             on_step: Callable[[int, float], None] | None = None) -> Path:
    """Fine-tune an expert of `dataset` (a name, or a spec from a data config) from `generalist` (any spec
    `load_model` accepts) on its train split, select the step on its val split, and save it in `out`.

    Returns the folder; pass `f"local-dir:{folder}"` as the expert to `load_pair` or the harness. An existing
    finished folder is refused (delete it, or choose another `out`); a killed run resumes from its checkpoint
    (`<out>.checkpoint.pt`) unless resume=False.
    """
    from ..data import file_md5
    from ..harness.distributed import init_from_env, local_device, shutdown
    from ..models import load_model
    from ..runtime.device import resolve_device
    from ..runtime.precision import check_precision
    from ..zoo.data import dataset_file, describe, load_split, spec_of
    from .loop import load_trainable, run_loop

    out = Path(out).expanduser()
    if save not in SAVES:
        raise ValueError(f"save must be one of {SAVES}, got {save!r}")
    if (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds a fine-tuned expert; delete it or pass another out=")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # never ours: experts appear by one rename
        raise FileExistsError(f"{out} exists and is not an expert folder; pass a new folder as out=")
    spec = spec_of(dataset)
    dist, created = init_from_env(resolve_device(device))
    try:
        dev = local_device(resolve_device(device), dist)
        check_precision(precision, dev)
        gen = load_model(generalist, device="cpu")
        if not gen.model_cfg and not (recipe.mode == "lora" and save == "factors"):
            raise ValueError(f"the open_clip config of '{generalist}' is unknown, so a complete expert folder cannot be "
                             "written; save it as LoRA factors (mode=lora save=factors) or load the generalist from "
                             "a local-dir: folder")
        pre = full_preprocess_cfg(gen)
        train = load_split(spec, "train", root=data_root, preprocess_cfg=pre)
        val_all = load_split(spec, "val", root=data_root, preprocess_cfg=pre)
        val = _limited(val_all, recipe.val_limit, seed)
        gen_fp = model_fingerprint(gen.model)
        data_file = dataset_file(spec.name, data_root)
        md5 = file_md5(data_file)  # a folder's too (its files' paths and MD5s)
        model = copy.deepcopy(gen.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A init
            adapted = add_lora(model, recipe.lora) if recipe.mode == "lora" else []
        if recipe.mode == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        digest = hashlib.sha256(json.dumps([gen_fp, describe(spec), md5, recipe.to_dict(), seed, precision,
                                            dist.world], sort_keys=True).encode()).hexdigest()[:16]
        checkpoint = Path(f"{out}.checkpoint.pt")
        if not resume and checkpoint.exists() and dist.is_main:
            checkpoint.unlink()
        dist.barrier()
        result = run_loop(model, gen.tokenizer, train, val, recipe.stage(), preprocess_cfg=pre, seed=seed,
                          eval_every=recipe.eval_every, metric=recipe.metric, device=dev, precision=precision,
                          checkpoint=checkpoint, digest=digest, dist=dist, progress=progress,
                          desc=f"{spec.name} ({recipe.mode})", on_step=on_step)
        if dist.is_main:
            sel = result.selection
            load_trainable(model, sel.best_state)
            model = model.cpu().eval()
            if sel.best_step == 0:
                log.warning("no step beat the generalist on val (%s %.2f); the saved expert equals the generalist",
                            recipe.metric, sel.best_score)
            factors = LoraFactors(lora_factors(model), gen_fp) if recipe.mode == "lora" else None
            manifest = {
                "kind": "tcube-expert", "mode": recipe.mode, "saved_as": save if factors else "merged",
                "generalist": {"spec": generalist, "fingerprint": gen_fp},
                "dataset": describe(spec),
                "data": {"file": str(data_file.resolve()), "md5": md5, "train_images": len(train),
                         "val_images": len(val), "val_images_total": len(val_all)},
                "recipe": recipe.to_dict(), "seed": int(seed), "device": str(dev), "precision": precision,
                "world_size": dist.world, "adapted": adapted,
                "validation": {"metric": recipe.metric, "curve": sel.curve, "selected_step": sel.best_step,
                               "generalist": sel.curve[0], "selected": next(c for c in sel.curve
                                                                             if c["step"] == sel.best_step)},
                "training": {"steps": result.steps, "loss_first": _mean(result.losses[:10]),
                             "loss_last": _mean(result.losses[-10:]), "seconds": round(result.seconds, 1),
                             "resumed_from_step": result.resumed_from, "threads": torch.get_num_threads()},
                "versions": _versions(),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            _publish(out, model, gen, pre, factors, save, manifest)
            checkpoint.unlink(missing_ok=True)
            log.info("saved expert %s (val %s %.2f at step %d; generalist %.2f)", out, recipe.metric, sel.best_score,
                     sel.best_step, sel.curve[0][recipe.metric])
        dist.barrier()
        return out
    finally:
        shutdown(created)


def _limited(split, limit: int | None, seed: int):
    """A seeded, class-stratified subset of about `limit` images (the whole split when it is smaller)."""
    from ..zoo.data import labelled_share

    if limit is None or len(split) <= limit:
        return split
    return labelled_share(split, limit / len(split), seed)


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _publish(out: Path, model, gen, pre: dict[str, Any], factors: LoraFactors | None, save: str,
             manifest: dict[str, Any]) -> None:
    """Write the expert folder beside `out`, then rename it in (readers see all of it or nothing)."""
    from ..models import save_local_dir
    from ..zoo.store import sha256

    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    if factors is not None and save == "factors":
        staging.mkdir(parents=True)
    else:
        merged = merge_lora(model) if factors is not None else model
        save_local_dir(merged, staging, model_cfg=gen.model_cfg, preprocess_cfg=pre, tokenizer=gen.tokenizer,
                       extra={"expert_of": manifest["generalist"]})
        if factors is not None:
            attach_factors(merged, factors)
    if factors is not None:
        save_factors(factors, staging / FACTORS_FILE)
        manifest["factors_sha256"] = sha256(staging / FACTORS_FILE)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if out.exists():
        out.rmdir()  # an empty folder (anything else was refused before training)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)


def _versions() -> dict[str, str]:
    import open_clip

    import tcube

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "tcube": tcube.__version__}
