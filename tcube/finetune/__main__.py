"""``python -m tcube.finetune generalist=SPEC data=NAME [mode=lora] [out=DIR] [key=value ...]`` (conf/finetune.yaml)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_configs

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def run(cfg: DictConfig | dict) -> Path:
    """Fine-tune from a config (the command line's, or a dict with the same keys); returns the expert folder."""
    from ..data.registry import entry_from_config, spec_from_config
    from ..models.lora import LoraConfig
    from .config import to_settings
    from .run import Recipe, finetune

    s = to_settings(cfg)
    if s["data"]["name"] == "all":
        raise ValueError("data=all names several datasets; an expert is fine-tuned on one: data=retina|pneumonia|"
                         "breast|ph2 or your own data config")
    spec = spec_from_config(entry_from_config(s["data"]))
    lora = s["lora"]
    recipe = Recipe(mode=s["mode"], lora=LoraConfig(lora["rank"], lora["alpha"], tuple(lora["targets"]),
                                                    tuple(lora["towers"])),
                    **{k: s[k] for k in ("steps", "batch_size", "lr", "weight_decay", "warmup_frac", "min_lr_frac",
                                         "grad_clip", "augment", "eval_every", "metric", "val_limit")})
    out = s["out"] or f"experts/{spec.name}-{s['mode']}-seed{s['seed']}"
    return finetune(s["generalist"], spec, out=out, recipe=recipe, save=s["save"], seed=s["seed"], device=s["device"],
                    precision=s["precision"], data_root=s["data"]["root"], resume=s["resume"], progress=s["progress"])


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="finetune")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        folder = run(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        sys.exit(f"tcube.finetune: error: {err}")
    from hydra.core.hydra_config import HydraConfig

    data = HydraConfig.get().runtime.choices.get("data", cfg.data.name)
    print(f"expert saved in {folder}\nevaluate it:  python -m tcube.eval model=local "
          f"model.generalist={cfg.generalist} model.expert=local-dir:{folder.resolve()} data={data}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
