"""Finding (and, when online, downloading) dataset npz files.

Search order for the data folder: explicit ``root`` → ``$TCUBE_DATA_DIR`` → ``~/.medmnist``.
Nothing here creates folders or touches the network unless a download is actually needed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .registry import DatasetSpec, get_dataset_spec

__all__ = ["resolve_data_root", "npz_filename", "find_npz", "file_md5", "is_offline", "md5_check_enabled",
           "MEDMNIST_SIZES"]

DATA_DIR_ENV = "TCUBE_DATA_DIR"
CHECK_MD5_ENV = "TCUBE_CHECK_MD5"  # "0"/"false": accept files whose MD5 differs from the registry's
DEFAULT_ROOT = Path("~/.medmnist")
MEDMNIST_SIZES = (28, 64, 128, 224)
ZENODO_RECORD = "https://zenodo.org/records/10519652"
_OFFLINE_ENVS = ("TCUBE_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}

# (resolved path, mtime_ns, size) -> md5 hex; MD5 of a file is computed once per process.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Data folder: ``root`` if given, else ``$TCUBE_DATA_DIR``, else ``~/.medmnist`` (never created)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    """Folders to look in: only ``root`` when given, else the env folder and then ~/.medmnist."""
    if root is not None and str(root) != "":
        return [Path(root).expanduser()]
    dirs = [resolve_data_root(None), DEFAULT_ROOT.expanduser()]
    return list(dict.fromkeys(dirs))  # dedupe, keep order


def is_offline() -> bool:
    """True when ``TCUBE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in _OFFLINE_ENVS)


def npz_filename(name: str, size: int = 28) -> str:
    """MedMNIST naming: ``{name}.npz`` at 28 px, ``{name}_{size}.npz`` otherwise."""
    return f"{name}.npz" if int(size) == 28 else f"{name}_{int(size)}.npz"


def file_md5(path: str | os.PathLike) -> str:
    """MD5 hex digest of a file, cached per (path, mtime, size) for the life of the process.

    For a folder (an image folder or saved dataset): the MD5 of its files' relative paths and MD5s.
    """
    p = Path(path).resolve()
    if p.is_dir():
        h = hashlib.md5()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_md5(f)}\n".encode())
        return h.hexdigest()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _MD5_CACHE:
        h = hashlib.md5()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def _spec_or_none(name: str) -> DatasetSpec | None:
    try:
        return get_dataset_spec(name)
    except ValueError:
        return None  # a config-described dataset: just a file stem


def md5_check_enabled(check_md5: bool | None = None) -> bool:
    """``check_md5`` if given, else ``$TCUBE_CHECK_MD5`` (on unless set to 0/false/no/off)."""
    if check_md5 is not None:
        return bool(check_md5)
    return os.environ.get(CHECK_MD5_ENV, "").strip().lower() not in {"0", "false", "no", "off"}


def _check_md5(path: Path, spec: DatasetSpec, size: int) -> None:
    expected = (spec.md5 or {}).get(size)
    if expected is None:
        return
    actual = file_md5(path)
    if actual != expected:
        if spec.source == "medmnist":
            origin, fix = "medmnist.INFO", f"delete it and download it again (Zenodo record {ZENODO_RECORD})"
        else:
            origin, fix = "the tcube registry", "re-create it as its provenance notes describe"
        raise ValueError(
            f"MD5 mismatch for {path}: expected {expected} (from {origin}), got {actual}. The file is "
            f"corrupt, truncated or not the expected release; {fix}. If you changed it on purpose, turn the "
            f"check off with the environment variable {CHECK_MD5_ENV}=0 (e.g. `{CHECK_MD5_ENV}=0 python -m "
            "tcube.eval ...`, also for python -m tcube.zoo), or check_md5=False in Python."
        )


def _download(url: str, root: Path, filename: str, md5: str | None) -> None:
    """Download with medmnist's own machinery (torchvision's download_url, MD5-checked).

    Kept as a module-level function so tests can replace it and never touch the network.
    """
    from torchvision.datasets.utils import download_url

    download_url(url=url, root=str(root), filename=filename, md5=md5)


def _missing_message(filename: str, dirs: list[Path], spec: DatasetSpec | None, reason: str) -> str:
    searched = ", ".join(str(d) for d in dirs)
    if spec is not None and spec.source == "medmnist":
        where = (f"Get it from the official MedMNIST release (Zenodo record {ZENODO_RECORD}, or "
                 "`medmnist` with download=True on a machine with internet) and put it in one of those folders")
    else:
        stem = filename[:-len(".npz")] if filename.endswith(".npz") else filename
        where = (f"Custom datasets are never downloaded: place {filename} (keys "
                 "{train,val,test}_{images,labels}) in the data folder, or a folder "
                 f"{stem}/ with train/, val/ and test/ image folders (one subfolder per class) or a saved "
                 "Hugging Face dataset")
    return (f"{filename} not found ({reason}). Searched: {searched}. {where}, "
            f"or set {DATA_DIR_ENV}=<folder containing {filename}>.")


def find_npz(name: str, root: str | os.PathLike | None = None, size: int = 28,
             check_md5: bool | None = None) -> Path:
    """Path of the npz file for dataset ``name`` (flag, alias or custom stem), MD5-checked.

    A dataset outside MedMNIST may instead be a folder ``<root>/<name>/`` (image folder with split folders, or a
    Hugging Face dataset saved with ``save_to_disk``); its path is returned when no ``<name>.npz`` exists.

    ``check_md5=None`` follows ``$TCUBE_CHECK_MD5`` (checked unless it is 0/false), so the check can be
    turned off from any command line (tcube.eval, tcube.zoo, torchrun) for files changed on purpose.

    Missing MedMNIST files are downloaded into the data root when online; otherwise (and for
    custom datasets) a FileNotFoundError says which file, where it was looked for, and how to fix it.
    """
    spec = _spec_or_none(name)
    stem = spec.name if spec is not None else str(name)
    size = int(size)
    if spec is not None and spec.source == "medmnist" and size not in MEDMNIST_SIZES:
        raise ValueError(f"MedMNIST {stem} comes in sizes {MEDMNIST_SIZES}, not {size}; pick one of those")
    filename = npz_filename(stem, size)
    dirs = _search_dirs(root)
    check_md5 = md5_check_enabled(check_md5)
    for d in dirs:
        candidate = d / filename
        if candidate.is_file():
            if check_md5 and spec is not None:
                _check_md5(candidate, spec, size)
            return candidate
    if spec is None or spec.source != "medmnist":  # a config-described dataset may be a folder instead
        from .hf import is_dataset_folder

        for d in dirs:
            if is_dataset_folder(d / stem):
                return d / stem

    if spec is None or spec.source != "medmnist":
        if spec is not None:
            reason = "custom dataset"
        else:
            from .registry import known_datasets

            reason = f"{stem!r} is not a registered dataset (known: {', '.join(known_datasets())})"
        raise FileNotFoundError(_missing_message(filename, dirs, spec, reason))
    if is_offline():
        raise FileNotFoundError(_missing_message(filename, dirs, spec, "offline: TCUBE_OFFLINE/HF_HUB_OFFLINE is set"))

    target = resolve_data_root(root)
    info_key = "" if size == 28 else f"_{size}"
    from .registry import _medmnist_info  # lazy: medmnist imports torch

    info = _medmnist_info(stem)
    try:
        _download(info[f"url{info_key}"], target, filename, info[f"MD5{info_key}"])
    except Exception as exc:  # any network/IO failure becomes the same actionable message
        raise FileNotFoundError(
            _missing_message(filename, dirs, spec, f"download failed: {type(exc).__name__}: {exc}")
        ) from exc
    path = target / filename
    if not path.is_file():
        raise FileNotFoundError(_missing_message(filename, dirs, spec, f"download did not produce {path}"))
    if check_md5:
        _check_md5(path, spec, size)
    return path
