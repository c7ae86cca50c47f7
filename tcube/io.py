"""Files tcube writes, written one way: atomically (temp file in the same folder + rename), as strict JSON,
under one home folder (``$TCUBE_HOME``)."""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tcube_home() -> Path:
    """``$TCUBE_HOME``, else ``~/.cache/tcube`` (never created here)."""
    return Path(os.environ.get("TCUBE_HOME") or "~/.cache/tcube").expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)``, then move the file onto `path` in one step: readers see all or nothing.

    The temp file sits in the target folder (same file system, so the rename is atomic) and is
    removed if `write` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` (UTF-8), fsync'ed before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def json_safe(value: Any) -> Any:
    """Plain, strict-JSON data: NaN/Inf -> None, tuples -> lists, tensors/arrays -> (nested) lists,
    numpy/torch scalars -> Python numbers, keys -> str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        value = value.tolist()
        if isinstance(value, list):
            return json_safe(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
