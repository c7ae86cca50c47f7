"""The typed configuration of ``python -m tcube.eval``: one dataclass per config group.

`conf/` holds the options a user picks (``data=ph2``, ``engine=fused``) with their comments; the
types, defaults and allowed values of every key live here, registered in Hydra's ConfigStore as the
schema `conf/config.yaml` starts from. So Hydra itself rejects an unknown key or a value of the
wrong type (``batch_size=abc``, ``precision=fp8``) before anything runs, and code reads each key
without repeating its default. Ranges that a type cannot say are checked in `check_settings`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..data.corruptions import check_reading

SCHEMA_NAME = "tcube_eval_schema"


class Choice(str, Enum):
    """A string choice; its str() is its value, so `${engine.name}` in hydra.run.dir reads `fused`."""

    def __str__(self) -> str:
        return self.value


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TuningData(Choice):
    """Which labelled validation split the validation-tuned methods and temperature scaling use."""

    expert = "expert"  # the expert's own val split: no labels from the shifted data (the realistic setting)
    own = "own"        # the clean val split of each evaluated dataset and class subset


class TextHeadMode(Choice):
    adaptive = "adaptive"  # error-bounded interpolation in λ (tcube.engines.heads), the default
    exact = "exact"        # one encode per distinct λ: the reference
    grid = "grid"          # APPROXIMATE, opt-in: fixed grid over [0, 1], linear interpolation


class EngineName(Choice):
    naive = "naive"
    batch = "batch"
    bucket = "bucket"
    fused = "fused"


@dataclass
class ModelConfig:
    generalist: str = MISSING          # any spec load_pair accepts, or zoo:NAME
    expert: str = MISSING              # may contain {dataset} (one config for every modality)
    experts: Optional[list[str]] = None  # one expert per data.datasets entry, in order (null: the `expert` pattern)
    expert_base: Optional[str] = None  # tuned on base classes only: base_to_novel split=class
    zoo_profile: str = "default"       # recipe profile of zoo: specs


@dataclass
class DataConfig:
    name: str = MISSING                       # file stem (MedMNIST flag), or `all`
    root: Optional[str] = None                # null = $TCUBE_DATA_DIR, else ~/.medmnist
    size: int = 28                            # image size of the npz file
    modality: Optional[str] = None            # a described dataset: registered modality or a new name
    classes: Optional[list[str]] = None       # index = label
    descriptions: Optional[list[str]] = None  # text put into the templates
    templates: Optional[list[str]] = None
    task: Optional[str] = None
    datasets: Optional[list[str]] = None      # data=all: the expert datasets
    corruptions: Any = None                   # corruption list: a MedMNIST-C dataset to borrow (pneumoniamnist)
                                              #   or {name: [5 severity params]}; null = its own / its modality's


@dataclass
class EngineConfig:
    name: EngineName = MISSING
    text_heads: TextHeadMode = TextHeadMode.adaptive
    grid_size: int = 33                 # text_heads=grid only
    num_buckets: Optional[int] = None  # bucket: number of λ bins (conf/engine/bucket.yaml: 8)


@dataclass
class ProtocolConfig:
    name: str = MISSING                          # in_domain | base_to_novel | corruption | all
    protocols: Optional[list[str]] = None        # protocol=all: which ones
    split: Any = "modality"                      # base_to_novel: modality | class | a list of both
    datasets: Optional[list[Any]] = None         # base_to_novel novel datasets: names or {name, classes, ...}
    corruptions: Optional[list[str]] = None      # null = the dataset's MedMNIST-C list
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    limit: Optional[int] = None                  # corruption: test images per cell
    reading: str = "224"                         # corruption: "224" (MedMNIST-C's definition) | "native"
    methods: Optional[list[str]] = None          # mixed: multi-expert methods (null = every registered one)
    data_split: str = "test"                     # mixed: test | val (the val stream, to design rules on)


@dataclass
class LoggerConfig:
    name: str = "none"        # none | wandb
    mode: str = "offline"     # wandb: offline | online | disabled
    project: str = "tcube"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    method: Any = MISSING          # checked against the method registry (tcube.methods)
    engine: EngineConfig = MISSING
    protocol: ProtocolConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0                  # zoo training seed, corruption noise, `limit` subsets, DARE drops
    batch_size: int = 64           # images per forward pass
    device: str = "auto"           # auto (cuda if visible) | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)
    # model forwards under torch.autocast (fp16: CUDA only); λ, JS and weight interpolation always fp32;
    # non-fp32 runs get their own cell keys
    precision: Precision = Precision.fp32
    limit: Optional[int] = None    # max test images per cell (seeded subset; also caps tuning images); null = all
    plugins: list[str] = field(default_factory=list)  # your modules that register methods, e.g. [my_pkg.methods]
    # always evaluated too: mCE and error reductions are relative to them
    references: list[str] = field(default_factory=lambda: ["generalist", "expert"])
    tuning_data: TuningData = TuningData.expert  # the val split validation tuning and temperature scaling use
    tuning_limit: Optional[int] = 256            # max val images for tuning (seeded subset); null = all
    cache: bool = True             # reuse endpoint logits and tuning choices from disk
    cache_dir: Optional[str] = None  # null = $TCUBE_HOME/cache/logits
    progress: bool = True          # tqdm bars over cells and batches
    plots: bool = True             # PNG figures next to report.md
    # per-sample ceiling: score every view with the static merge at this many λ over [0, 1] (21: steps of 0.05);
    # 0 = off. Costs G static merges per view (README, "Per-sample ceiling"); a rerun resumes
    ceiling_grid: int = 0


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent); conf/config.yaml lists it first."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=EvalConfig)


def to_settings(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config as plain Python containers, validated against the schema (a plain dict is merged onto
    it too, so library callers get the same defaults and checks as the command line)."""
    try:
        if not isinstance(cfg, DictConfig) or OmegaConf.get_type(cfg) is not EvalConfig:
            cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg)
        s = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a required key"
        raise ValueError(f"{key} is not set: pass it on the command line, e.g. {key}=local-dir:/path/to/model "
                         "(model=local takes your own folders)") from None
    check_settings(s)
    return s


def check_settings(s: dict[str, Any]) -> None:
    """What a type cannot say: positive sizes and limits, a non-negative seed, a known corruption reading."""
    for key, value, minimum in (("batch_size", s["batch_size"], 1), ("limit", s["limit"], 1),
                                ("tuning_limit", s["tuning_limit"], 1), ("seed", s["seed"], 0),
                                ("engine.grid_size", s["engine"]["grid_size"], 2),
                                ("engine.num_buckets", s["engine"]["num_buckets"], 1),
                                ("protocol.limit", s["protocol"]["limit"], 1)):
        if value is not None and value < minimum:
            raise ValueError(f"{key} must be ≥ {minimum}, got {value} (e.g. {key}={max(minimum, 16)})")
    check_reading(s["protocol"]["reading"])
    if s["ceiling_grid"] != 0 and s["ceiling_grid"] < 2:  # a grid needs both ends, λ = 0 and λ = 1
        raise ValueError(f"ceiling_grid must be 0 (off) or ≥ 2, got {s['ceiling_grid']} (e.g. ceiling_grid=21)")
