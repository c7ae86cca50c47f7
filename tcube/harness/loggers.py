"""Experiment trackers for the harness: `none` (nothing leaves the run directory) or `wandb`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")


class NullLogger:
    def log_row(self, row: Mapping[str, Any]) -> None:
        pass

    def log_summary(self, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """One wandb run per job: a row per cell as it finishes, then the summary and a results table."""

    def __init__(self, options: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any], name: str):
        import wandb  # only when asked for: importing wandb is slow and logger=none must write nothing

        mode = options.get("mode", "offline")
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be one of {WANDB_MODES}, got {mode!r}")
        self.wandb = wandb
        self.run = wandb.init(project=options.get("project") or "tcube", entity=options.get("entity"),
                              group=options.get("group"), tags=list(options.get("tags") or []), mode=mode,
                              dir=str(run_dir), config=dict(config), name=name)
        self.cells = 0

    def log_row(self, row):
        self.cells += 1
        prefix = "/".join(str(row.get(k)) for k in ("protocol", "dataset", "subset", "corruption", "severity"))
        self.run.log({"cell": self.cells, f"{prefix}/{row['method']}/top1": row["top1"],
                      f"{prefix}/{row['method']}/balanced_acc": row["balanced_acc"]})

    def log_summary(self, summary, rows):
        flat: dict[str, Any] = {}
        for protocol, table in (summary.get("top1") or {}).items():
            flat.update({f"top1/{protocol}/{m}": v for m, v in table.items() if v is not None})
        flat.update({f"mce/{m}": v for m, v in (summary.get("mce") or {}).items() if v is not None})
        for split, table in (summary.get("harmonic_mean") or {}).items():
            flat.update({f"hm/{split}/{m}": v for m, v in table.items() if v is not None})
        self.run.summary.update(flat)
        columns = ["protocol", "split", "dataset", "subset", "corruption", "severity", "method", "n", "top1",
                   "balanced_acc", "lambda_mean", "lambda_std", "seconds"]
        self.run.log({"results": self.wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def finish(self):
        self.wandb.finish()


def make_logger(options: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any]) -> NullLogger:
    name = options.get("name", "none")
    if name == "none":
        return NullLogger()
    if name == "wandb":
        return WandbLogger(options, run_dir, config, name=Path(run_dir).name)
    raise ValueError(f"unknown logger '{name}'; choose logger=none or logger=wandb")
