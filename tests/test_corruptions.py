"""MedMNIST-C corruptions: registry, determinism, shapes, monotone strength, reference equality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tcube.data.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    MEDMNISTC_PARAMS,
    READINGS,
    _correlate,
    _disk,
    _motion_kernel,
    check_reading,
    corrupt,
    corruptions_for,
    medmnistc_reference,
    severity_param,
    to_224,
)


def scene(size: int, rgb: bool) -> np.ndarray:
    """A real-looking test image: smooth gradient plus a bright disc with a soft shading."""
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    base = 0.25 + 0.5 * xx * (0.6 + 0.4 * yy)
    disc = ((xx - 0.5) ** 2 + (yy - 0.45) ** 2) < 0.08
    base = np.where(disc, 0.85 - 0.3 * yy, base)
    img = np.stack([base, 0.8 * base + 0.1 * yy, 0.6 * base + 0.2 * xx], -1) if rgb else base
    return np.rint(img * 255).astype(np.uint8)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def strength(img, name, severity, dataset=None, n_random=8, first=None, reading="native") -> float:
    """Mean abs distance from the clean image (at the corrupted size); averaged over images for random ones.

    ``first`` is an already computed output for index 0 (saves one call).
    """
    n = n_random if CORRUPTIONS[name].random else 1
    outs = [first] if first is not None else []
    outs += [corrupt(img, name, severity, seed=0, index=i, dataset=dataset, reading=reading)
             for i in range(len(outs), n)]
    clean = to_224(img) if reading == "224" else img
    return float(np.mean([distance(o, clean) for o in outs]))


def monotone(values) -> bool:
    """Non-decreasing up to 0.05 grey levels + 5 %: some consecutive MedMNIST-C severities are
    nearly equal in strength (motion blur (10, 5) -> (15, 5): the sigma-5 Gaussian makes taps
    beyond 10 px negligible), so only their random draws (angle) differ."""
    return all(b >= a - (0.05 + 0.05 * a) for a, b in zip(values, values[1:]))


# ----------------------------------------------------------------------------- registry


def test_registry_matches_medmnistc_families_and_lists():
    family_names = {n for names in FAMILIES.values() for n in names}
    assert set(CORRUPTIONS) == family_names
    for name, c in CORRUPTIONS.items():
        assert name in FAMILIES[c.family]
        assert len(c.params) == 5
        assert c.source.startswith("medmnistc/corruptions/")
    assert len(MEDMNISTC_PARAMS) == 12
    for ds, table in MEDMNISTC_PARAMS.items():
        for name, params in table.items():
            assert name in CORRUPTIONS, (ds, name)
            assert len(params) == 5, (ds, name)


def test_lists_for_the_four_datasets_here():
    assert corruptions_for("retinamnist") == [
        "pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "defocus_blur", "motion_blur",
        "brightness_down", "contrast_down"]
    assert corruptions_for("pneumoniamnist") == [
        "pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise",
        "gaussian_blur", "brightness_up", "brightness_down", "contrast_up", "contrast_down", "gamma_corr_up",
        "gamma_corr_down"]
    assert corruptions_for("breastmnist") == [
        "pixelate", "jpeg_compression", "speckle_noise", "motion_blur", "brightness_up", "brightness_down",
        "contrast_down"]
    derma = corruptions_for("dermamnist")
    assert "black_corner" in derma and "characters" in derma and "zoom_blur" in derma and len(derma) == 15
    # ph2 (dermoscopy, not in MedMNIST-C) uses dermamnist's list; aliases resolve too.
    assert corruptions_for("ph2") == derma == corruptions_for("derm")
    assert medmnistc_reference("retina") == "retinamnist"
    assert medmnistc_reference("PneumoniaMNIST") == "pneumoniamnist"


def test_dataset_params_are_medmnistc_values():
    assert severity_param("pixelate", 1, "breastmnist") == 0.30
    assert severity_param("pixelate", 5, "pneumoniamnist") == 0.40
    assert severity_param("motion_blur", 2, "retinamnist") == (15, 5)
    assert severity_param("jpeg_compression", 3, "ph2") == 15  # dermamnist's
    assert severity_param("gaussian_blur", 5, "pneumoniamnist") == 11  # 6th list entry is unused
    assert severity_param("pixelate", 1) == 0.7  # default: dermamnist's parameters
    with pytest.raises(ValueError, match="does not apply"):
        severity_param("zoom_blur", 1, "breastmnist")


def test_dataset_params_change_the_result():
    img = scene(28, rgb=False)
    a = corrupt(img, "pixelate", 1, seed=0, index=0, dataset="breastmnist", reading="native")  # factor 0.30
    b = corrupt(img, "pixelate", 1, seed=0, index=0, reading="native")  # factor 0.7
    assert distance(a, img) > distance(b, img)


# ----------------------------------------------------------------------------- per corruption


# (file size, reading): the 224 reading of a 224-px file is the native one, so three cases cover both
CASES = [(28, "native"), (224, "native"), (28, "224")]


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize("size,reading", CASES, ids=[f"{s}px-{r}" for s, r in CASES])
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_contract(name, size, reading, rgb):
    img = scene(size, rgb)
    c = CORRUPTIONS[name]
    # severity 0 is the identity (and a copy), in either reading
    out0 = corrupt(img, name, 0, seed=0, index=0, reading=reading)
    assert np.array_equal(out0, img) and out0 is not img
    shape = img.shape if reading == "native" else (224, 224) + img.shape[2:]
    strengths = [0.0]
    for sev in range(1, 6):
        out = corrupt(img, name, sev, seed=0, index=0, reading=reading)
        assert out.shape == shape and out.dtype == np.uint8
        assert np.array_equal(out, corrupt(img, name, sev, seed=0, index=0, reading=reading)), "not deterministic"
        if c.random:  # several draws: at 28 px a motion kernel of a few taps is the same for nearby angles
            others = [corrupt(img, name, sev, seed=0, index=i, reading=reading) for i in (1, 2, 3)]
            assert any(not np.array_equal(out, o) for o in others), "different images must get different draws"
            seeds = [corrupt(img, name, sev, seed=s, index=0, reading=reading) for s in (1, 2, 3)]
            assert any(not np.array_equal(out, o) for o in seeds), "seed ignored"
        strengths.append(strength(img, name, sev, first=out, reading=reading))
    if (name, size, reading) == ("gaussian_blur", 28, "native"):
        # MedMNIST-C's Gaussian blurs (σ ≤ 2.6 px at 224) scale to σ ≤ 0.33 px: no visible change at 28 px
        assert strengths[5] < 0.5
        return
    assert strengths[5] > 0.0, "severity 5 left the image unchanged"
    if name == "black_corner":
        # MedMNIST-C's own parameters (1.10, 1.05, 1.00, 0.90, 0.95) make severity 5 milder than 4.
        assert monotone(strengths[:5])
        assert strengths[5] < strengths[4]
    else:
        assert monotone(strengths), strengths


@pytest.mark.parametrize("dataset,rgb", [("retinamnist", True), ("pneumoniamnist", False),
                                         ("breastmnist", False), ("ph2", True)])
@pytest.mark.parametrize("reading", READINGS)
def test_dataset_lists_are_monotone_at_28px(dataset, rgb, reading):
    img = scene(28, rgb)
    for name in corruptions_for(dataset):
        s = [strength(img, name, sev, dataset=dataset, n_random=12, reading=reading) for sev in range(1, 6)]
        if name == "black_corner":
            s = s[:4]
        assert monotone(s), (name, s)
        assert s[-1] > 0 or (name, reading) == ("gaussian_blur", "native")  # sub-pixel at 28 px, as above


def test_gray_follows_medmnistc_pipeline():
    """Gray images go RGB -> corrupt -> 'L', like medmnistc/dataset_manager.py."""
    img = scene(224, rgb=False)
    ours = corrupt(img, "contrast_down", 3, seed=0, index=0, dataset="pneumoniamnist")
    pil = Image.fromarray(img).convert("RGB")
    ref = np.asarray(Image.fromarray(np.asarray(ImageEnhance.Contrast(pil).enhance(0.7))).convert("L"))
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_gaussian_blur_matches_torchvision_at_224():
    import torchvision.transforms.functional as TF

    img = scene(224, rgb=True)
    ours = corrupt(img, "gaussian_blur", 5, seed=0, index=0, dataset="pneumoniamnist")  # kernel 11
    ref = np.asarray(TF.gaussian_blur(Image.fromarray(img), kernel_size=11))
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_gamma_matches_torchvision():
    import torchvision.transforms.functional as TF

    img = scene(224, rgb=True)
    ours = corrupt(img, "gamma_corr_up", 5, seed=0, index=0, dataset="pneumoniamnist")  # gamma 1.6
    ref = np.asarray(TF.adjust_gamma(Image.fromarray(img), 1.6, gain=1))
    assert np.array_equal(ours, ref)


def _shift_edge(x, dx, dy):
    """imagecorruptions' ``shift`` (edge-replicating roll), the numpy port of ImageMagick's blur."""
    h, w = x.shape[:2]
    yy = np.clip(np.arange(h) - dy, 0, h - 1)
    xx = np.clip(np.arange(w) - dx, 0, w - 1)
    return x[yy][:, xx]


def test_motion_kernel_matches_imagemagick_port_at_224():
    x = scene(224, rgb=True).astype(np.float64)
    radius, sigma, angle = 15, 8, 30.0
    width = 2 * radius + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    k /= k.sum()
    point = (width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle)))
    hyp = math.hypot(*point)
    ref = np.zeros_like(x)
    for i in range(width):
        dy = -math.ceil(i * point[0] / hyp - 0.5)
        dx = -math.ceil(i * point[1] / hyp - 0.5)
        ref += k[i] * _shift_edge(x, dx, dy)
    ours = _correlate(x, _motion_kernel(radius, sigma, angle), "edge")
    assert np.abs(ours - ref).max() < 1e-9


def test_readings_resize_and_scale_as_stated():
    img = scene(28, rgb=False)
    # 224: bicubic to 224 px, then MedMNIST-C's own operation there (s = 1)
    up = to_224(img)
    assert up.shape == (224, 224)
    assert np.array_equal(up, np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC)))
    assert np.array_equal(corrupt(img, "defocus_blur", 5, seed=0, index=0, reading="224"),
                          corrupt(up, "defocus_blur", 5, seed=0, index=0, reading="native"))
    # native: spatial parameters x 28/224 (radius 8 -> 1 px), scale-free ones unchanged
    native = corrupt(img, "defocus_blur", 5, seed=0, index=0, reading="native")  # dermamnist's (8, 0.5)
    x = np.repeat(img[..., None], 3, axis=2).astype(np.float64) / 255
    ref = np.rint(np.clip(_correlate(x, _disk(1.0, 0.5 / 8), "reflect"), 0, 1) @ [0.299, 0.587, 0.114] * 255)
    assert distance(native, img) > 0 and np.abs(native.astype(int) - ref).max() <= 1
    ours = corrupt(img, "contrast_down", 3, seed=0, index=0, dataset="pneumoniamnist", reading="native")
    pil = Image.fromarray(img).convert("RGB")
    assert np.abs(ours.astype(int) - np.asarray(ImageEnhance.Contrast(pil).enhance(0.7).convert("L"))).max() <= 1


def test_reading_is_checked():
    assert check_reading(224) == "224" and check_reading("native") == "native"
    with pytest.raises(ValueError, match=r"protocol.reading must be one of \['224', 'native'\]"):
        check_reading("mixed")
    with pytest.raises(ValueError, match="protocol.reading"):
        corrupt(scene(28, True), "pixelate", 1, seed=0, index=0, reading="28")


def test_global_rng_untouched():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    corrupt(scene(28, True), "shot_noise", 3, seed=0, index=0)
    assert np.random.rand() == expected


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="fog"), "unknown corruption"),
    (dict(severity=6), "severity"),
    (dict(severity=-1), "severity"),
    (dict(seed=-1), "seed"),
    (dict(index=1.5), "index"),
])
def test_bad_arguments(kwargs, match):
    args = dict(name="pixelate", severity=1, seed=0, index=0) | kwargs
    with pytest.raises(ValueError, match=match):
        corrupt(scene(28, True), args.pop("name"), args.pop("severity"), **args)


def test_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        corrupt(scene(28, True).astype(np.float32), "pixelate", 1, seed=0, index=0)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((28, 28, 4), np.uint8), "pixelate", 1, seed=0, index=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        corruptions_for("nosuchmnist")
