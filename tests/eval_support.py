"""Helpers for the harness tests: synthetic npz files, tiny local-dir models, composed configs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Synthetic datasets described by config (names outside the registry, so no MD5 check applies).
SYNTH2 = {"name": "synth2", "modality": "fundus", "classes": ["no retinopathy", "retinopathy"]}
SYNTHGRAY = {"name": "synthgray", "modality": "chest_xray", "classes": ["normal lungs", "pneumonia"]}
SYNTH4 = {"name": "synth4", "modality": "fundus", "classes": ["grade 0", "grade 1", "grade 2", "grade 3"]}


def write_npz(folder: Path, name: str, n_classes: int, *, rgb: bool, n: int = 6, seed: int = 0) -> Path:
    """A MedMNIST-layout npz: n images of 28×28 per split, labels cycling over the classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).reshape(-1, 1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def make_env(root: Path, clip_pair) -> dict[str, Path]:
    """Data folder with synth2 / synthgray / synth4 and local-dir generalist, expert and base-class expert."""
    from common import perturbed

    from tcube.models import save_local_dir

    data = root / "data"
    write_npz(data, "synth2", 2, rgb=True, seed=1)
    write_npz(data, "synthgray", 2, rgb=False, seed=2)
    write_npz(data, "synth4", 4, rgb=True, n=8, seed=3)
    models = {"generalist": clip_pair.generalist, "expert": clip_pair.expert,
              "expert_base": perturbed(clip_pair.generalist, seed=3)}
    paths = {k: save_local_dir(m, root / k, model_cfg=clip_pair.model_cfg, tokenizer=clip_pair.tokenizer)
             for k, m in models.items()}
    return {"data": data, "cache": root / "cache", **paths}


def _yaml_list(items) -> str:
    return "[" + ",".join(str(i) for i in items) + "]"


def overrides(env: dict[str, Path], *, data: dict = SYNTH2, protocol: str = "in_domain",
              methods=("t3",), extra=(), expert_base: bool = True, plots: bool = False) -> list[str]:
    """Command-line overrides for a small run on the synthetic data and tiny models."""
    out = ["model=local", f"model.generalist=local-dir:{env['generalist']}",
           f"model.expert=local-dir:{env['expert']}",
           "data=ph2", f"data.name={data['name']}", f"data.modality={data['modality']}",
           f"data.classes={_yaml_list(data['classes'])}", "data.descriptions=null", f"data.root={env['data']}",
           f"protocol={protocol}", "method=all", f"method.methods={_yaml_list(methods)}",
           f"cache_dir={env['cache']}", "progress=false", "device=cpu", "batch_size=4", f"plots={str(plots).lower()}"]
    if expert_base:
        out.append(f"model.expert_base=local-dir:{env['expert_base']}")
    return out + list(extra)


def compose(overrides_: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tcube.harness.evaluate import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides_)


NOVEL_GRAY = "protocol.datasets=[{name: synthgray, modality: chest_xray, classes: [normal lungs, pneumonia]}, ph2]"
