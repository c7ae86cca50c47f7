"""How strong each corruption is in each reading, measured on the real test images; prints a markdown table.

    TCUBE_DATA_DIR=/path/to/medmnist python scripts/corruption_readings.py [--images 16] [--timing]

Strength = mean absolute pixel change (grey levels, 0..255) against the clean file image, at the file's size
(28 px), which is about what the zoo's 32-px models see: the `224` reading's output is brought back to the
file's size with PIL bicubic, as a model's preprocessing would. `224 @224` is the same reading measured at
224 px against the bicubic-upsampled clean image (MedMNIST-C's own scale). `resample` rows: the 224 reading's
round trip alone (no corruption), the floor of its 28-px column. `--timing` adds seconds per image per
corruption cell (one severity, 224 vs native) on the first dataset.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tcube.data.corruptions import corrupt, corruptions_for, to_224
from tcube.data.npz import load_npz_split

DATASETS = ("retinamnist", "pneumoniamnist", "breastmnist", "ph2")
SEVERITIES = (1, 3, 5)


def _down(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _images(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n seeded test images of the dataset and their indices in the test split."""
    images, _ = load_npz_split(Path(os.environ["TCUBE_DATA_DIR"]) / f"{name}.npz", "test")
    idx = np.sort(np.random.default_rng(0).choice(len(images), size=min(n, len(images)), replace=False))
    return images[idx], idx


def strengths(img: np.ndarray, index: int, name: str, severity: int, dataset: str) -> tuple[float, float, float]:
    """(native at file size, 224 at file size, 224 at 224 px) for one image."""
    size = (img.shape[1], img.shape[0])
    native = corrupt(img, name, severity, seed=0, index=index, dataset=dataset, reading="native")
    at224 = corrupt(img, name, severity, seed=0, index=index, dataset=dataset, reading="224")
    return _change(native, img), _change(_down(at224, size), img), _change(at224, to_224(img))


def table(n: int) -> list[str]:
    out = ["| dataset | corruption | severity | native | 224 → file size | native / 224 | 224 @224 |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for dataset in DATASETS:
        images, idx = _images(dataset, n)
        size = (images.shape[2], images.shape[1])
        floor = np.mean([_change(_down(to_224(im), size), im) for im in images])
        out.append(f"| {dataset} | resample | 0 | 0.00 | {floor:.2f} | – | 0.00 |")
        for name in corruptions_for(dataset):
            for sev in SEVERITIES:
                s = np.mean([strengths(im, int(i), name, sev, dataset) for im, i in zip(images, idx)], axis=0)
                ratio = f"{s[0] / s[1]:.1f}" if s[1] > 0 else "–"
                out.append(f"| {dataset} | {name} | {sev} | {s[0]:.2f} | {s[1]:.2f} | {ratio} | {s[2]:.2f} |")
    return out


def timing(dataset: str, n: int) -> list[str]:
    images, idx = _images(dataset, n)
    out = [f"| {dataset}: seconds per image | 224 | native |", "|---|---:|---:|"]
    for name in corruptions_for(dataset):
        row = []
        for reading in ("224", "native"):
            start = time.perf_counter()
            for im, i in zip(images, idx):
                corrupt(im, name, 3, seed=0, index=int(i), dataset=dataset, reading=reading)
            row.append((time.perf_counter() - start) / len(images))
        out.append(f"| {name} | {row[0]:.4f} | {row[1]:.5f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="seeded test images per dataset")
    ap.add_argument("--timing", action="store_true", help="also time both readings on the first dataset")
    args = ap.parse_args()
    print(f"Mean absolute pixel change vs the clean image (grey levels), {args.images} seeded test images "
          f"per dataset, severities {list(SEVERITIES)}, seed 0.\n")
    print("\n".join(table(args.images)))
    if args.timing:
        print()
        print("\n".join(timing(DATASETS[1], args.images)))


if __name__ == "__main__":
    main()
