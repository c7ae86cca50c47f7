"""Finding npz files: data root resolution, MD5 checks, offline messages, (monkeypatched) download."""

from __future__ import annotations

import os
from pathlib import Path

import medmnist
import numpy as np
import pytest

import tcube.data.files as files
from tcube.data.files import file_md5, find_npz, npz_filename, resolve_data_root

REAL_FILES = ("retinamnist.npz", "pneumoniamnist.npz", "breastmnist.npz", "ph2.npz")
_ENV_DATA_DIR = os.environ.get("TCUBE_DATA_DIR")  # read before fixtures clear it


def real_data_dir() -> Path:
    """$TCUBE_DATA_DIR first, then the checkout's sibling ``shared/data/medmnist``; else skip."""
    env = _ENV_DATA_DIR
    candidates = ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared/data/medmnist"]
    for c in candidates:
        if all((c / f).is_file() for f in REAL_FILES):
            return c
    pytest.skip(f"real data not found in {[str(c) for c in candidates]}; set TCUBE_DATA_DIR to the folder "
                f"holding {', '.join(REAL_FILES)}")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Isolated environment: no data dir, fake HOME, offline unless a test says otherwise."""
    monkeypatch.delenv("TCUBE_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TCUBE_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    files._MD5_CACHE.clear()
    return monkeypatch


def write_npz(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return path


# ----------------------------------------------------------------------------- root resolution


def test_resolve_data_root_precedence(env, tmp_path):
    home = Path(os.environ["HOME"])
    assert resolve_data_root() == home / ".medmnist"
    assert not (home / ".medmnist").exists(), "resolving must not create folders"
    env.setenv("TCUBE_DATA_DIR", str(tmp_path / "fromenv"))
    assert resolve_data_root() == tmp_path / "fromenv"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert not (tmp_path / "fromenv").exists()


def test_npz_filename():
    assert npz_filename("retinamnist") == "retinamnist.npz"
    assert npz_filename("retinamnist", 224) == "retinamnist_224.npz"
    assert npz_filename("ph2", 64) == "ph2_64.npz"


# ----------------------------------------------------------------------------- finding


def test_find_custom_and_unregistered_files(env, tmp_path):
    write_npz(tmp_path / "mydata.npz")
    assert find_npz("mydata", root=tmp_path) == tmp_path / "mydata.npz"
    env.setenv("TCUBE_DATA_DIR", str(tmp_path))
    assert find_npz("mydata") == tmp_path / "mydata.npz"


def test_find_falls_back_to_home_medmnist(env):
    home_root = Path(os.environ["HOME"]) / ".medmnist"
    write_npz(home_root / "mydata_64.npz")
    env.setenv("TCUBE_DATA_DIR", str(home_root.parent / "empty"))
    assert find_npz("mydata", size=64) == home_root / "mydata_64.npz"


def test_md5_mismatch_names_file_expected_and_actual(env, tmp_path):
    path = write_npz(tmp_path / "breastmnist.npz")
    with pytest.raises(ValueError) as e:
        find_npz("breast", root=tmp_path)
    msg = str(e.value)
    assert str(path) in msg and medmnist.INFO["breastmnist"]["MD5"] in msg and file_md5(path) in msg
    assert find_npz("breast", root=tmp_path, check_md5=False) == path


def test_md5_is_cached_per_path_mtime_and_size(env, tmp_path, monkeypatch):
    path = write_npz(tmp_path / "x.npz")
    calls = []
    real_md5 = files.hashlib.md5

    def counting_md5(*a, **k):
        calls.append(1)
        return real_md5(*a, **k)

    monkeypatch.setattr(files.hashlib, "md5", counting_md5)
    first = file_md5(path)
    assert file_md5(path) == first and len(calls) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # file changed on disk
    assert file_md5(path) == first and len(calls) == 2


def test_unsupported_medmnist_size(env, tmp_path):
    with pytest.raises(ValueError, match="28, 64, 128, 224"):
        find_npz("retinamnist", root=tmp_path, size=32)


# ----------------------------------------------------------------------------- missing files


def test_missing_offline_message(env, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_download", lambda *a, **k: pytest.fail("must not download when offline"))
    with pytest.raises(FileNotFoundError) as e:
        find_npz("retina", root=tmp_path / "data", size=224)
    msg = str(e.value)
    assert "retinamnist_224.npz" in msg and str(tmp_path / "data") in msg
    assert "10519652" in msg and "TCUBE_DATA_DIR=" in msg and "offline" in msg
    assert not (tmp_path / "data").exists()


def test_missing_custom_is_never_downloaded(env, tmp_path, monkeypatch):
    env.delenv("TCUBE_OFFLINE")
    monkeypatch.setattr(files, "_download", lambda *a, **k: pytest.fail("custom datasets are never downloaded"))
    with pytest.raises(FileNotFoundError) as e:
        find_npz("derm", root=tmp_path)
    msg = str(e.value)
    assert "place ph2.npz" in msg and "TCUBE_DATA_DIR=" in msg and str(tmp_path) in msg
    with pytest.raises(FileNotFoundError, match="notregistered.npz"):
        find_npz("notregistered", root=tmp_path)


def test_online_download_uses_medmnist_info(env, tmp_path, monkeypatch):
    env.delenv("TCUBE_OFFLINE")
    seen = {}

    def fake_download(url, root, filename, md5):
        seen.update(url=url, root=root, filename=filename, md5=md5)
        write_npz(Path(root) / filename)

    monkeypatch.setattr(files, "_download", fake_download)
    root = tmp_path / "dl"
    path = find_npz("pneumonia", root=root, check_md5=False)
    assert path == root / "pneumoniamnist.npz" and path.is_file()
    assert seen["url"] == medmnist.INFO["pneumoniamnist"]["url"] and "10519652" in seen["url"]
    assert seen["md5"] == medmnist.INFO["pneumoniamnist"]["MD5"] and seen["filename"] == "pneumoniamnist.npz"
    # the fake file is not the official one: with the check on, the mismatch is caught
    path.unlink()
    with pytest.raises(ValueError, match="MD5 mismatch"):
        find_npz("pneumonia", root=root)


def test_hf_hub_offline_also_blocks_download(env, tmp_path, monkeypatch):
    env.delenv("TCUBE_OFFLINE")
    env.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(files, "_download", lambda *a, **k: pytest.fail("offline"))
    with pytest.raises(FileNotFoundError, match="offline"):
        find_npz("breastmnist", root=tmp_path)


def test_failed_download_becomes_file_not_found(env, tmp_path, monkeypatch):
    env.delenv("TCUBE_OFFLINE")

    def failing(*a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(files, "_download", failing)
    with pytest.raises(FileNotFoundError, match="download failed: OSError: no route to host") as e:
        find_npz("breastmnist", root=tmp_path)
    assert "breastmnist.npz" in str(e.value) and "TCUBE_DATA_DIR" in str(e.value)


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", ["retinamnist", "pneumoniamnist", "breastmnist"])
def test_real_medmnist_md5_match_info(env, name):
    root = real_data_dir()
    path = find_npz(name, root=root)  # raises on any MD5 mismatch
    assert file_md5(path) == medmnist.INFO[name]["MD5"]


def test_real_ph2_found_and_checked(env):
    root = real_data_dir()
    env.setenv("TCUBE_DATA_DIR", str(root))
    path = find_npz("derm")
    assert path.name == "ph2.npz" and file_md5(path) == "1a760532d876fa90d1f9e3e48df5b008"
