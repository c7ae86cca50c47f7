"""Record the official MedMNIST-C code's outputs for tcube's deterministic corruptions into a test fixture.

    pip install --no-deps --target /tmp/mmc medmnistc==0.1.0 opencv-python-headless
    PYTHONPATH=/tmp/mmc:. python scripts/record_medmnistc_reference.py   # writes tests/fixtures/medmnistc_reference.npz

Why a recording and not a test dependency: `medmnistc` 0.1.0 pins scikit-image==0.23.2 and medmnist==3.0.1,
needs opencv and, for its blurs, ImageMagick through `wand`, so it does not install cleanly next to tcube. The
deterministic corruptions need only Pillow, numpy, opencv (BlackCorner, and BaseCorruption's import) and
torchvision (GammaCorrection); this script imports those modules directly (its registry would pull in
`wand`) and reads the severity lists from registry.py's source.

Inputs are seeded synthetic 28-px images (a smooth scene plus texture, gray and RGB; the test rebuilds them),
so no dataset pixels enter the repository. Each is resized to 224 px by PIL bicubic (tcube's `224` reading)
and run through the official pipeline (dataset_manager.py: RGB in, corrupt, 'L' out for gray datasets).
Each output is stored as 512 seeded pixels plus the SHA-256 and mean of the whole image (the
fixture stays < 200 KB).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "medmnistc_reference.npz"
# (MedMNIST-C dataset whose list is used, gray?) -> corruptions recorded, all 5 severities
CASES = {
    ("pneumoniamnist", True): ("pixelate", "jpeg_compression", "brightness_up", "brightness_down", "contrast_up",
                               "contrast_down", "gamma_corr_up", "gamma_corr_down"),
    ("dermamnist", False): ("pixelate", "jpeg_compression", "brightness_up", "brightness_down", "contrast_up",
                            "contrast_down", "black_corner"),
}
# 512 seeded pixel positions over the whole 224 x 224 image (a mask's edge can be anywhere); the test rebuilds them
PIXELS = tuple(np.random.default_rng(0).integers(0, 224, size=(2, 512)))


def reference_image(gray: bool) -> np.ndarray:
    """A smooth scene with a disc, plus seeded texture (so JPEG and pixelate have detail to lose), uint8 28 px."""
    yy, xx = np.mgrid[:28, :28] / 27
    base = 0.25 + 0.5 * xx * (0.6 + 0.4 * yy)
    base = np.where(((xx - 0.5) ** 2 + (yy - 0.45) ** 2) < 0.08, 0.85 - 0.3 * yy, base)
    img = np.stack([base, 0.8 * base + 0.1 * yy, 0.6 * base + 0.2 * xx], -1)
    img = img + np.random.default_rng(7).normal(0, 0.05, img.shape)
    img = img.mean(-1) if gray else img
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def official_lists(registry: Path) -> dict[str, dict[str, list]]:
    """CORRUPTIONS_DS of registry.py, read from the source: {dataset: {corruption: severity_params}}."""
    tree = ast.parse(registry.read_text())
    node = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CORRUPTIONS_DS")
    out = {}
    for ds, table in zip(node.keys, node.values):
        out[ast.literal_eval(ds)] = {ast.literal_eval(k): _literal(v.keywords[0].value)
                                     for k, v in zip(table.keys, table.values)}
    return out


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except ValueError:  # zoom_blur's np.arange(...) lists: not recorded here
        return None


def main() -> None:
    import medmnistc
    from medmnistc.corruptions.compression import JPEGCompression, Pixelate
    from medmnistc.corruptions.enhance import Brightness, Contrast, GammaCorrection
    from medmnistc.corruptions.microscopy import BlackCorner

    root = Path(medmnistc.__file__).parent
    lists = official_lists(root / "corruptions" / "registry.py")
    classes = {"pixelate": Pixelate, "jpeg_compression": JPEGCompression, "brightness_up": Brightness,
               "brightness_down": Brightness, "contrast_up": Contrast, "contrast_down": Contrast,
               "gamma_corr_up": GammaCorrection, "gamma_corr_down": GammaCorrection, "black_corner": BlackCorner}
    arrays: dict[str, np.ndarray] = {}
    for (dataset, gray), names in CASES.items():
        img224 = Image.fromarray(reference_image(gray)).resize((224, 224), Image.BICUBIC)
        for name in names:
            params = lists[dataset][name]
            corruption = classes[name](severity_params=params)
            for severity in range(1, 6):
                out = np.asarray(corruption.apply(img224.convert("RGB"), severity - 1))
                if gray:
                    out = np.asarray(Image.fromarray(out).convert("L"))
                key = f"{dataset}/{name}/{severity}"
                arrays[f"{key}/pixels"] = out[PIXELS]
                arrays[f"{key}/sha256"] = np.array(hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest())
                arrays[f"{key}/mean"] = np.array(out.mean())
                arrays[f"{key}/param"] = np.array(params[severity - 1], dtype=np.float64)
    spec = importlib.util.find_spec("medmnistc")
    arrays["source"] = np.array(f"medmnistc 0.1.0 at {Path(spec.origin).parent.name}; "
                                "scripts/record_medmnistc_reference.py")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
