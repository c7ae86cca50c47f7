"""Data roots for the integration tests: small synthetic stand-ins of the four datasets, always; the real files too
when they are here.

`data_root` (module scope) is parametrized over ``synthetic`` (always) and ``real`` (only when ``$TCUBE_DATA_DIR``
is set, or the checkout's sibling ``../shared/data/medmnist`` holds the files). Without real data the ``real``
parameter is not generated at all, so nothing is skipped; with ``TCUBE_DATA_DIR`` set to a folder that lacks the
files it is skipped with that reason.

The synthetic files use the official names (``retinamnist.npz``, ``pneumoniamnist.npz``, ``breastmnist.npz``,
``ph2.npz``) and the MedMNIST layout (``{train,val,test}_{images,labels}``, 28×28 uint8, grey or RGB), so the
registry, ``data=all``, the data configs and the zoo take them exactly as they take the real ones. Their MD5s
differ from the official ones, so a synthetic root is used with ``TCUBE_CHECK_MD5=0`` - the switch a user sets on
the command line for files changed on purpose. Images carry their class in brightness, hue and stripe frequency
(plus noise), so tiny models can learn them. The bytes are deterministic (fixed zip timestamps), so pytest-xdist
workers writing the same folder agree, and so do MD5-keyed caches.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

SPLITS = ("train", "val", "test")
# name -> (classes, rgb, images per split): a few dozen, enough for limit=24 test cells and a smoke zoo
SYNTHETIC = {
    "retinamnist": (5, True, (60, 30, 40)),
    "pneumoniamnist": (2, False, (48, 24, 40)),
    "breastmnist": (2, False, (48, 24, 40)),
    "ph2": (3, True, (48, 24, 40)),
}
# the real files (../shared/data/medmnist/PROVENANCE.md): split sizes, image shape, classes
REAL = {
    "retinamnist": ((1080, 120, 400), (28, 28, 3), 5),
    "pneumoniamnist": ((4708, 524, 624), (28, 28), 2),
    "breastmnist": ((546, 78, 156), (28, 28), 2),
    "ph2": ((140, 20, 40), (28, 28, 3), 3),
}
CHECK_MD5_OFF = {"TCUBE_CHECK_MD5": "0"}


@dataclass(frozen=True)
class DataRoot:
    """A folder with the four npz files and what a test may assume about them."""

    kind: str                                   # "synthetic" | "real"
    path: Path
    sizes: dict[str, tuple[int, int, int]]      # name -> (train, val, test) sizes
    shapes: dict[str, tuple[int, ...]]          # name -> image shape
    classes: dict[str, int]                     # name -> number of classes
    env: dict[str, str] = field(default_factory=dict)  # environment a run on it needs (child processes too)

    def file(self, name: str) -> Path:
        return self.path / f"{name}.npz"


def real_dir() -> tuple[Path, bool]:
    """(folder, whether TCUBE_DATA_DIR named it): $TCUBE_DATA_DIR, else the checkout's sibling shared/ folder."""
    env = os.environ.get("TCUBE_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser(), True
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist", False


def real_files_present(folder: Path) -> bool:
    return all((folder / f"{name}.npz").is_file() for name in REAL)


def data_root_params() -> list[str]:
    """``synthetic`` always; ``real`` when the files are there or TCUBE_DATA_DIR asks for them."""
    folder, asked = real_dir()
    return ["synthetic"] + (["real"] if asked or real_files_present(folder) else [])


def synthetic_images(n_classes: int, rgb: bool, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28×28 uint8 images whose class shows in brightness, stripe frequency and (RGB) hue, plus noise."""
    n = len(labels)
    frac = labels.astype(np.float64) / max(1, n_classes - 1)                      # 0..1 by class
    yy = np.arange(28, dtype=np.float64)[None, :, None]
    stripes = np.sin(yy * (0.3 + 0.5 * labels[:, None, None]))                     # class-dependent frequency
    grey = 50 + 150 * frac[:, None, None] + 25 * stripes + rng.normal(0, 12, (n, 28, 28))
    if rgb:
        hue = np.stack([1.0 - 0.5 * frac, 0.6 + 0.0 * frac, 0.5 + 0.5 * frac], axis=-1)  # red → blue by class
        img = grey[..., None] * hue[:, None, None, :] + rng.normal(0, 6, (n, 28, 28, 3))
    else:
        img = grey
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed zip timestamps (same bytes every time), written atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                         force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    os.replace(tmp, path)


def write_synthetic(folder: Path, name: str) -> Path:
    n_classes, rgb, sizes = SYNTHETIC[name]
    return write_synthetic_dataset(folder, name, n_classes, rgb=rgb, sizes=sizes)


def write_synthetic_dataset(folder: Path, name: str, n_classes: int, *, rgb: bool,
                            sizes: tuple[int, int, int]) -> Path:
    """`<folder>/<name>.npz` in the MedMNIST layout with learnable classes: any dataset, e.g. one of a new modality."""
    rng = np.random.default_rng(sum(name.encode()))
    arrays = {}
    for split, n in zip(SPLITS, sizes):
        labels = rng.permutation(np.arange(n) % n_classes)                       # every class, near balanced
        arrays[f"{split}_images"] = synthetic_images(n_classes, rgb, labels, rng)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)        # MedMNIST's (N, 1) uint8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    _save_npz(path, arrays)
    return path


def write_synthetic_root(folder: Path) -> DataRoot:
    for name in SYNTHETIC:
        write_synthetic(folder, name)
    return DataRoot("synthetic", folder, sizes={k: v[2] for k, v in SYNTHETIC.items()},
                    shapes={k: (28, 28, 3) if v[1] else (28, 28) for k, v in SYNTHETIC.items()},
                    classes={k: v[0] for k, v in SYNTHETIC.items()}, env=dict(CHECK_MD5_OFF))


def real_root() -> DataRoot:
    folder, _ = real_dir()
    if not real_files_present(folder):  # only reachable when TCUBE_DATA_DIR was set: say what is wrong
        pytest.skip(f"TCUBE_DATA_DIR={folder} lacks {[f'{n}.npz' for n in REAL if not (folder / f'{n}.npz').is_file()]}")
    return DataRoot("real", folder, sizes={k: v[0] for k, v in REAL.items()}, shapes={k: v[1] for k, v in REAL.items()},
                    classes={k: v[2] for k, v in REAL.items()})


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> DataRoot:
    """The synthetic files, written once (under pytest-xdist once for all workers: the bytes are identical)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "synthetic_medmnist"
    return write_synthetic_root(folder)


def _data_root(request) -> DataRoot:
    if request.param == "real":
        yield real_root()
        return
    root = request.getfixturevalue("synthetic_root")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in root.env.items():
            mp.setenv(key, value)
        yield root


@pytest.fixture(scope="module", params=data_root_params())
def data_root(request) -> DataRoot:
    """The synthetic root (with TCUBE_CHECK_MD5=0 set for the module), then the real one where present."""
    yield from _data_root(request)


@pytest.fixture(scope="module", params=data_root_params()[-1:])
def one_data_root(request) -> DataRoot:
    """One root: the real one where present, else the synthetic one. For the slow subprocess plumbing tests
    (torchrun, launchers, notebook), whose assertions do not depend on the data: running them on both roots would
    double the suite's slowest minutes for no extra coverage."""
    yield from _data_root(request)
