"""Finding npz files: data root resolution, MD5 checks, offline messages, (monkeypatched) download."""

from __future__ import annotations

import os
from pathlib import Path

import medmnist
import numpy as np
import pytest

import tcube.data.files as files
from tcube.data.files import file_md5, find_npz, npz_filename, resolve_data_root


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Isolated environment: no data dir, MD5 checks on, fake HOME, offline unless a test says otherwise."""
    monkeypatch.delenv("TCUBE_DATA_DIR", raising=False)
    monkeypatch.delenv("TCUBE_CHECK_MD5", raising=False)
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
    assert "TCUBE_CHECK_MD5=0 python -m tcube.eval" in msg  # a fix that works from the command line
    assert find_npz("breast", root=tmp_path, check_md5=False) == path
    env.setenv("TCUBE_CHECK_MD5", "0")
    assert find_npz("breast", root=tmp_path) == path
    with pytest.raises(ValueError, match="MD5 mismatch"):
        find_npz("breast", root=tmp_path, check_md5=True)


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


# ----------------------------------------------------------------------------- the four datasets (data_root)


@pytest.mark.parametrize("name", ["retinamnist", "pneumoniamnist", "breastmnist", "ph2"])
def test_files_found_and_md5_checked(env, data_root, name):
    """Real files match medmnist.INFO / the registry; synthetic stand-ins under the official names are caught by
    the same check and accepted only with TCUBE_CHECK_MD5=0."""
    from tcube.data import get_dataset_spec

    expected = get_dataset_spec(name).md5[28]
    env.setenv("TCUBE_DATA_DIR", str(data_root.path))
    alias = {"ph2": "derm"}.get(name, name)
    if data_root.kind == "real":
        path = find_npz(alias)  # raises on any MD5 mismatch
        assert path.name == f"{name}.npz" and file_md5(path) == expected
        if name != "ph2":
            assert expected == medmnist.INFO[name]["MD5"]
        return
    with pytest.raises(ValueError, match="MD5 mismatch.*TCUBE_CHECK_MD5=0"):
        find_npz(alias)
    env.setenv("TCUBE_CHECK_MD5", "0")
    assert find_npz(alias) == data_root.file(name) and file_md5(data_root.file(name)) != expected
