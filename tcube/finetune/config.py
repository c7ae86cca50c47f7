"""The typed configuration of ``python -m tcube.finetune`` (Hydra schema; the data group is the harness's)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..harness.config import DataConfig, Precision

SCHEMA_NAME = "tcube_finetune_schema"


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0                                               # the update is scaled by alpha / rank
    targets: list[str] = field(default_factory=lambda: ["attn"])      # attn | mlp | all-linear | a regex
    towers: list[str] = field(default_factory=lambda: ["visual", "text"])


@dataclass
class FinetuneConfig:
    generalist: str = MISSING          # any spec load_pair accepts (local-dir:, hf-hub:, ARCH:TAG, ARCH:FILE)
    data: DataConfig = MISSING         # one dataset (conf/data/NAME.yaml); its train split trains, val selects
    mode: str = "full"                 # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    save: str = "factors"              # lora: factors (small; loads next to its generalist) | merged
    out: Optional[str] = None          # null: experts/<dataset>-<mode>-seed<seed>
    steps: int = 200
    batch_size: int = 32
    lr: Optional[float] = None         # null: 1e-5 full, 1e-4 lora (a pre-trained generalist's usual)
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    min_lr_frac: float = 0.0
    grad_clip: float = 1.0
    augment: bool = False
    eval_every: int = 50               # val scoring + checkpoint every this many steps
    metric: str = "top1"               # selects the step on val: top1 | balanced_acc
    val_limit: Optional[int] = 512     # val images per scoring (seeded, class-stratified); null = all
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)
    precision: Precision = Precision.fp32
    resume: bool = True                # continue from <out>.checkpoint.pt when a run was killed
    progress: bool = True


def register_configs() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=FinetuneConfig)


def to_settings(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config as plain containers, validated against the schema (a plain dict is merged onto it)."""
    try:
        if not isinstance(cfg, DictConfig) or OmegaConf.get_type(cfg) is not FinetuneConfig:
            cfg = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), cfg)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a required key"
        raise ValueError(f"{key} is not set: e.g. python -m tcube.finetune generalist=local-dir:/path/to/generalist "
                         "data=retina") from None
