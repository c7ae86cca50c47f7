"""tcube's `224` reading against the official MedMNIST-C code, and the noise corruptions' statistics.

The deterministic corruptions are compared with outputs recorded from `medmnistc` 0.1.0 by
scripts/record_medmnistc_reference.py (tests/fixtures/medmnistc_reference.npz): the package pins old
scikit-image and needs opencv and ImageMagick, so it is no test dependency.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tcube.data.corruptions import corrupt, severity_param, to_224

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = np.load(ROOT / "tests" / "fixtures" / "medmnistc_reference.npz")
_spec = importlib.util.spec_from_file_location("record", ROOT / "scripts" / "record_medmnistc_reference.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)  # its inputs and pixel positions (it imports medmnistc only when run)

RECORDED = [(ds, gray, name, sev) for (ds, gray), names in record.CASES.items() for name in names
            for sev in range(1, 6)]


def test_fixture_is_small_and_complete():
    assert (ROOT / "tests" / "fixtures" / "medmnistc_reference.npz").stat().st_size < 200_000
    assert all(f"{ds}/{name}/{sev}/sha256" in FIXTURE.files for ds, _, name, sev in RECORDED)


@pytest.mark.parametrize("dataset,gray,name,severity", RECORDED, ids=["/".join(map(str, c)) for c in RECORDED])
def test_224_reading_matches_official_medmnistc(dataset, gray, name, severity):
    key = f"{dataset}/{name}/{severity}"
    assert severity_param(name, severity, dataset) == pytest.approx(float(FIXTURE[f"{key}/param"]))
    ours = corrupt(record.reference_image(gray), name, severity, seed=0, index=0, dataset=dataset, reading="224")
    assert ours.shape == ((224, 224) if gray else (224, 224, 3))
    if hashlib.sha256(np.ascontiguousarray(ours).tobytes()).hexdigest() == str(FIXTURE[f"{key}/sha256"]):
        return  # bit-identical (as recorded with Pillow 13; another libjpeg may differ by a grey level)
    diff = np.abs(ours[record.PIXELS].astype(int) - FIXTURE[f"{key}/pixels"].astype(int))
    assert diff.max() <= 1, f"{key}: up to {diff.max()} grey levels from MedMNIST-C"
    assert abs(ours.mean() - float(FIXTURE[f"{key}/mean"])) < 0.1


# ----------------------------------------------------------------------------- noise statistics
GREY = np.full((28, 28, 3), 128, np.uint8)  # mid-grey: no clipping, so the added noise is seen whole
X = 128 / 255
DS = "pneumoniamnist"  # its shot noise never clips at mid-grey (derma's λ = 5 would)


def added_noise(name: str, severity: int, reading: str, n: int = 6) -> np.ndarray:
    """out - clean in [0, 1] units over n seeded images, at the reading's own size."""
    clean = to_224(GREY) if reading == "224" else GREY
    outs = [corrupt(GREY, name, severity, seed=0, index=i, dataset=DS, reading=reading) for i in range(n)]
    return np.stack([o.astype(np.float64) - clean for o in outs]) / 255


def expected_std(name: str, param: float) -> float:
    return {"gaussian_noise": param, "speckle_noise": X * param, "shot_noise": np.sqrt(X / param)}[name]


@pytest.mark.parametrize("reading", ["native", "224"])
@pytest.mark.parametrize("name", ["gaussian_noise", "speckle_noise", "shot_noise"])
@pytest.mark.parametrize("severity", [1, 5])
def test_noise_has_medmnistc_mean_and_std_in_each_reading(name, severity, reading):
    """MedMNIST-C's noise is per pixel, so both readings draw it with its own parameters at their size."""
    noise = added_noise(name, severity, reading, n=6 if reading == "native" else 1)
    std = expected_std(name, severity_param(name, severity, DS))
    rounding = 1 / 255 / np.sqrt(12)  # uint8 rounding adds its own variance
    assert abs(noise.mean()) < 0.1 * std + 1e-3
    assert noise.std() == pytest.approx(np.sqrt(std**2 + rounding**2), rel=0.05)


@pytest.mark.parametrize("severity", [1, 5])
def test_224_noise_shrunk_to_file_size_is_about_eight_times_weaker(severity):
    """Why the readings differ: 224-px noise averaged over 8 x 8 blocks keeps 1/8 of its std at 28 px."""
    noise = added_noise("gaussian_noise", severity, "224", n=2)
    shrunk = noise.reshape(2, 28, 8, 28, 8, 3).mean(axis=(2, 4))
    assert shrunk.std() == pytest.approx(noise.std() / 8, rel=0.1)
    native = added_noise("gaussian_noise", severity, "native")
    assert native.std() > 6 * shrunk.std()


@pytest.mark.parametrize("reading", ["native", "224"])
def test_impulse_noise_flips_the_medmnistc_fraction(reading):
    amount = severity_param("impulse_noise", 5, DS)
    noise = added_noise("impulse_noise", 5, reading, n=6 if reading == "native" else 1)
    flipped = np.abs(noise) > 0.4  # to 0 or 1 from mid-grey
    assert flipped.mean() == pytest.approx(amount, rel=0.1)
    assert (noise[flipped] > 0).mean() == pytest.approx(0.5, abs=0.05)  # salt vs pepper 0.5
