"""End-to-end T^3 on real MedMNIST images, runnable offline in about a minute.

No pretrained medical CLIP can be downloaded here, so this trains a tiny generalist CLIP for a few
hundred steps on the real PneumoniaMNIST and BreastMNIST train splits and fine-tunes an expert on
PneumoniaMNIST, then compares every method on the PneumoniaMNIST test split with `tcube.Merger`.
It is a demonstration of the API on real data, not a benchmark result (that is `tcube.zoo`'s job).

    TCUBE_DATA_DIR=../shared/data/medmnist python scripts/example.py
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tcube import Merger, method_names
from tcube.models import build_model, tokenizer_for

CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "layers": 2, "width": 64, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DATA = {  # file stem: (class descriptions, template)
    "pneumoniamnist": (["normal lungs", "pneumonia"], "a chest X-ray showing {}."),
    "breastmnist": (["a malignant breast lesion", "a normal or benign breast"], "a breast ultrasound of {}."),
}


def load(root: Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = root / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"{path} not found: set TCUBE_DATA_DIR to the folder holding {name}.npz")
    with np.load(path) as f:
        x = torch.from_numpy(f[f"{split}_images"]).float() / 255.0
        y = torch.from_numpy(f[f"{split}_labels"]).long().view(-1)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x - 0.5) / 0.5, y


def train(model, tokenizer, sets, steps: int, lr: float, seed: int) -> None:
    """Class-level contrastive loss: each image against the prompts of its own dataset's classes."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    prompts = {n: tokenizer([DATA[n][1].format(c) for c in DATA[n][0]]) for n in sets}
    model.train()
    for step in range(steps):
        name = list(sets)[step % len(sets)]
        x, y = sets[name]
        idx = torch.randint(len(y), (64,), generator=g)
        img = F.normalize(model.encode_image(x[idx]), dim=-1)
        txt = F.normalize(model.encode_text(prompts[name]), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(os.environ.get("TCUBE_DATA_DIR", Path.home() / ".medmnist"))
    train_sets = {n: load(root, n, "train") for n in DATA}
    tokenizer = tokenizer_for(CFG)
    generalist = build_model(CFG)
    train(generalist, tokenizer, train_sets, args.steps, 1e-3, seed=0)
    expert = copy.deepcopy(generalist)
    train(expert, tokenizer, {"pneumoniamnist": train_sets["pneumoniamnist"]}, args.steps // 2, 3e-4, seed=1)
    classes, template = DATA["pneumoniamnist"]
    merger = Merger(generalist, expert, tokenizer, classes, [template], engine="fused")
    merger.tune(*load(root, "pneumoniamnist", "val"))  # temperatures and t3_cal / wise_ft_cal coefficients
    x, y = load(root, "pneumoniamnist", "test")
    print(f"PneumoniaMNIST test ({len(y)} images), tiny models trained for {args.steps} steps:")
    for method in method_names():
        outs = [merger.predict(xb, method) for xb in x.split(128)]
        preds, lam = torch.cat([o.preds for o in outs]), torch.cat([o.lambdas for o in outs])
        print(f"  {method:16s} top-1 {100 * (preds == y).float().mean():5.1f}%   mean λ {lam.nanmean():.3f}")


if __name__ == "__main__":
    main()
