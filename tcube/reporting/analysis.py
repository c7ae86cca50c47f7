"""Analysis API: results of one or many runs as a pandas DataFrame."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .results import RESULTS_NAME, read_rows


def _result_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    direct = target / RESULTS_NAME
    if direct.is_file():
        return [direct]
    return sorted(target.rglob(RESULTS_NAME))  # a multirun sweep folder: every job below it


def load_results(run_dir_or_dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Rows of results.jsonl under one or more run directories (or sweep folders, or the files themselves).

    A partial last line left by a killed run is ignored. Adds `run_dir` (the folder of each file) and
    one `param_<name>` column per configured method parameter (e.g. param_gamma for a γ sweep).
    """
    targets = [run_dir_or_dirs] if isinstance(run_dir_or_dirs, (str, os.PathLike)) else list(run_dir_or_dirs)
    records = []
    for target in targets:
        files = _result_files(Path(target))
        if not files:
            raise FileNotFoundError(f"no {RESULTS_NAME} in or below {target}; pass a run directory of tcube.eval")
        for path in files:
            for row in read_rows(path):
                row = dict(row, run_dir=str(path.parent))
                row.update({f"param_{k}": v for k, v in (row.get("config_params") or {}).items()})
                records.append(row)
    return pd.DataFrame.from_records(records)
