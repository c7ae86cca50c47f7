"""The zoo's declarative recipe: architecture, preprocessing and training hyperparameters per profile.

Everything that decides a zoo model's weights is in a `Recipe`, and its hash is written into each
model's manifest, so a stored model can always be traced back to the recipe that made it.
Schedules are counted in optimizer steps (or epochs converted to steps from the data sizes at run
time), never in wall-clock time: a time budget would make the weights depend on machine load.

Starting point: ../shared/docs/ZOO_NOTES.md (a prototype's measured recipe). Changes from it,
each checked on the validation splits only (never on test data):
- token embedding frozen at its random init. It holds 6.3 M of the 8 M parameters but the captions
  use ~60 of its 49,408 rows; its dense gradient and AdamW update cost a large share of a 2-core
  step, and freezing it keeps ΔW exactly zero there (the fused engine skips it).
- weight decay on matrices only (not biases, LayerNorms, embeddings, logit_scale), as in open_clip.
- logit_scale has its own lr (1e-2, 10x the network's): in the prototype it could not move from
  its init. Given the freedom, the generalist settled at 13.8 (init 14.3): the class-level loss
  itself prefers soft probabilities. A higher fixed scale would sharpen p_gen/p_exp and inflate
  JS by hand, so the init stays CLIP's 1/0.07 and the data set the temperature; the learned
  values are recorded per model in the manifest (training.logit_scale).
- generalist: 8 epochs-equivalent (405 steps of 128, ~0.7-0.9 s each here) instead of ~12, so
  the whole default zoo (generalist + 5 experts) takes ~8 minutes on 2 cores. 6 epochs saved a
  minute but cost the premise on val (generalist mean top-1 68.2 vs 70.2; the Retina and PH2
  experts then fell below it in-domain), so 8 it is. The augmentation is the prototype's (zoom
  0.6-1, shift, h-flip, brightness ±0.3, contrast x[0.6, 1.4], noise σ ≤ 0.03, 3x3 blur p=0.2).
- experts: lr 1e-3 for 60 steps of 64 (every dataset the same budget) instead of lr 3e-4 for
  ~60 s. Measured on val with the default generalist (expert vs generalist top-1):
    lr 3e-4, 150 steps: in-domain gains, but PneumoniaMNIST/BreastMNIST experts forgot nothing
      (other datasets equal or better than the generalist): no premise off-domain;
    lr 1e-3, 100 steps: forgetting everywhere, BreastMNIST gain only +1.3;
    lr 1e-3, 40 steps: the Retina expert no better than the generalist in-domain (50.0 vs 50.0);
    lr 1e-3, 60 steps (round one's choice): Retina 58.3 vs 50.0, Pneumonia 96.2 vs 81.1, Breast 84.6 vs 79.5,
      PH2 65.0 vs 70.0 (1 of 20 val images; every setting tried gave PH2 65-75, i.e. noise), and
      below the generalist on the other datasets in 11 of 12 cells (one tie); the Retina
      base-class expert: base classes 68.1 vs 64.9, novel classes 69.2 vs 76.9.

Round two: a broad-but-shallow generalist (generalist_fraction). Round one's generalist trained on the
whole labelled train split of every modality, so it was already an expert in each: over 3 seeds the
experts tied it in-domain on test (68.1 vs 68.2). BiomedCLIP, the paper's generalist, never saw these
tasks' labels. There is no caption pre-training here to make a generalist broad without labels, so it
sees every modality but only a small labelled share of each:
- generalist_fraction = 0.1, fixed before any test number was looked at: an order of magnitude fewer
  labels than its experts get, while every class of every built-in dataset keeps ≥ 3 train images
  (PH2's melanoma: 3 of 28). Class-stratified, drawn per zoo seed. The schedule stays 405 steps of 128
  (what 8 epochs of the full set gave), so the share is the only difference from round one's generalist
  and from the gap sweep's other shares (profiles share05, share25, full).
- experts: 120 steps instead of 60 (lr 1e-3), chosen on val of seed 0 with the 10% generalist
  (generalist -> expert in-domain; elsewhere):
    60 steps: Retina 52.5 -> 54.2, Pneumonia 79.4 -> 95.2, Breast 73.1 -> 76.9, PH2 40.0 -> 80.0;
    120 steps (chosen): Retina 56.7 (+4.2), Pneumonia 95.4 (+16.0), Breast 83.3 (+10.2), PH2 60.0 (+20.0),
      below the generalist on the other datasets in 8 of 12 cells, tied in 2 (Breast's majority class),
      above it in 2 (the Breast expert on Pneumonia and PH2);
    120 steps at lr 3e-4: in-domain gains alike, but above the generalist elsewhere in 4 of 12 cells;
    a 100-step generalist: at the majority class on 3 of 4 val splits (too shallow to be a generalist).
  The generalist's own val top-1 (52.5, 79.4, 73.1, 40.0) is near the majority class on Breast and PH2,
  whose val splits hold 78 and 20 images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

# open_clip CLIP, ~8 M parameters (ZOO_NOTES): 28 px MedMNIST images resized to 32 px, patch 4.
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
# Written into each model folder, so `load_pair(...).preprocess` is exactly what the zoo trained with.
PREPROCESS_CFG: dict[str, Any] = {
    "size": 32,
    "mode": "RGB",
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
}


@dataclass(frozen=True)
class Augment:
    """Batch augmentation in pixel space [0, 1] (generalist only; never the evaluation corruptions)."""

    zoom: tuple[float, float] = (0.6, 1.0)       # side of the random crop, as a fraction of the image
    translate: float = 0.1                        # extra shift, fraction of the image side (zero padded)
    hflip: float = 0.5                            # probability of a horizontal flip
    vflip: float = 0.0                            # vertical flips would put ultrasound skin at the bottom
    brightness: float = 0.3                       # multiplicative factor in [1 - b, 1 + b]
    contrast: tuple[float, float] = (0.6, 1.4)    # factor around each image's mean intensity
    noise_std: float = 0.03                       # Gaussian noise σ drawn per image in [0, noise_std]
    blur_p: float = 0.2                           # probability of a 3x3 binomial blur


@dataclass(frozen=True)
class Stage:
    """Hyperparameters of one training stage (the generalist, or one expert)."""

    batch_size: int
    lr: float
    steps: int | None = None            # exact optimizer steps, or
    epochs: float | None = None         # epochs-equivalent over the stage's training images
    min_steps: int = 1                  # floor for epochs-derived step counts
    warmup_frac: float = 0.05           # linear warm-up, then cosine decay to min_lr_frac * lr
    min_lr_frac: float = 0.0
    weight_decay: float = 0.05
    logit_scale_lr: float | None = None  # None: same as lr
    grad_clip: float = 1.0
    augment: Augment | None = None
    balanced: bool = False              # equal share of every dataset in each batch
    # "own": each image scored against its own dataset's classes; "union": against every training dataset's
    # classes at once, so the model also learns which dataset (modality) an image comes from
    objective: str = "own"

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("a Stage needs exactly one of steps= or epochs=")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"batch_size must be ≥ 1 and lr > 0, got {self.batch_size}, {self.lr}")

    def num_steps(self, n_images: int) -> int:
        """Optimizer steps for a training set of `n_images` images."""
        if self.steps is not None:
            return int(self.steps)
        return max(self.min_steps, math.ceil(self.epochs * n_images / self.batch_size))


OBJECTIVES = ("own", "union")


@dataclass(frozen=True)
class Recipe:
    """A whole zoo: architecture, preprocessing and the three kinds of training stage."""

    profile: str
    generalist: Stage
    expert: Stage
    base_expert: Stage                  # experts tuned on the base classes only (datasets with ≥ 4 classes)
    generalist_fraction: float = 1.0    # class-stratified share of each train split the generalist sees
    logit_scale_init: float = math.log(1 / 0.07)
    freeze_token_embedding: bool = True
    model_cfg: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(MODEL_CFG)))
    preprocess_cfg: dict[str, Any] = field(default_factory=lambda: dict(PREPROCESS_CFG))

    def __post_init__(self) -> None:
        if not 0 < self.generalist_fraction <= 1:
            raise ValueError(f"generalist_fraction must be in (0, 1], got {self.generalist_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def digest(self) -> str:
        """Short hash of everything that shapes the weights (the profile name excluded). Options added later
        are left out at their default, which trains as before, so stored zoos keep their digest."""
        d = self.to_dict()
        d.pop("profile")
        for stage in ("generalist", "expert", "base_expert"):
            if d[stage].get("objective") == "own":
                d[stage].pop("objective")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# logit_scale gets its own lr: with the network's lr it stayed at its init in the prototype.
LOGIT_SCALE_LR = 1e-2

# 405 steps: 8 epochs of the full balanced set; a step count, so every generalist_fraction trains as long.
GENERALIST = Stage(batch_size=128, lr=1e-3, steps=405, warmup_frac=0.05, weight_decay=0.05,
                   logit_scale_lr=LOGIT_SCALE_LR, augment=Augment(), balanced=True)
# Experts: no augmentation (ZOO_NOTES); one fixed step count (batch 64) for every dataset rather
# than a time budget, so PH2 (140 images) and PneumoniaMNIST (4,708) get the same number of updates.
# lr 1e-3 rather than 3e-4: at 3e-4 two experts did not forget the other modalities (see above).
# 120 steps (round one: 60): the 10% generalist leaves more to learn; chosen on val (module docstring).
EXPERT = Stage(batch_size=64, lr=1e-3, steps=120, warmup_frac=0.1, weight_decay=0.05,
               logit_scale_lr=LOGIT_SCALE_LR)

# The generalist sees a tenth of each labelled train split (class-stratified, drawn per zoo seed); see the
# module docstring for why. Its experts then fine-tune on the whole split.
GENERALIST_FRACTION = 0.1


def _share(profile: str, fraction: float) -> Recipe:
    return Recipe(profile=profile, generalist=GENERALIST, expert=EXPERT, base_expert=EXPERT,
                  generalist_fraction=fraction)


PROFILES: dict[str, Recipe] = {
    "default": _share("default", GENERALIST_FRACTION),
    # The gap sweep (scripts/gap_sweep.sh): the same schedules, other shares; `full` gives round one's
    # generalist (every label; already an expert in each modality) with this round's experts.
    "share05": _share("share05", 0.05),
    "share25": _share("share25", 0.25),
    "full": _share("full", 1.0),
    # The mixed protocol's zoo (README, "Several experts"): `default` except that the generalist scores each image
    # against the classes of all its datasets at once. The default generalist never compares one dataset's
    # classes with another's, so over their union it cannot tell modalities apart (seed 0: 6.8% stream top-1,
    # 0% on PneumoniaMNIST and BreastMNIST); BiomedCLIP, pre-trained on captions of every modality, can.
    "union": Recipe(profile="union", generalist=dataclasses.replace(GENERALIST, objective="union"), expert=EXPERT,
                    base_expert=EXPERT, generalist_fraction=GENERALIST_FRACTION),
    # Seconds, not quality: for tests and CI (same architecture and code path as `default`).
    "smoke": Recipe(
        profile="smoke",
        generalist=dataclasses.replace(GENERALIST, batch_size=32, steps=6),
        expert=dataclasses.replace(EXPERT, batch_size=32, steps=4),
        base_expert=dataclasses.replace(EXPERT, batch_size=32, steps=4),
        generalist_fraction=GENERALIST_FRACTION,
    ),
}


def get_recipe(profile: str) -> Recipe:
    """The recipe of a named profile; ValueError listing the profiles otherwise."""
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown zoo profile {profile!r}; choose one of {sorted(PROFILES)}") from None
