"""Report a gap sweep: each method's paired Δ vs WiSE-FT(0.5) by the zoo's in-domain gap (table + figure).

    python scripts/gap_report.py SWEEP_DIR [--out DIR]

Reads every results.jsonl below SWEEP_DIR (finished or partial), groups the runs by `zoo_profile`, and writes
gap.md and gap.png to --out (default SWEEP_DIR).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcube.io import write_text_atomic
from tcube.reporting.aggregate import load_runs
from tcube.reporting.gap import gap_figure, gap_table, render_gap, run_gap
from tcube.reporting.results import method_order

ADAPTIVE = ("t3", "t3_batch", "dawin", "t3_cal", "generalist", "expert")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or args.sweep_dir
    runs = load_runs([args.sweep_dir])
    methods = method_order([r for run in runs for r in run.rows])
    by_profile: dict[str, list] = {}
    for run in runs:
        profile = run.settings.get("zoo_profile", '"default"').strip('"')
        by_profile.setdefault(profile, []).append(run_gap(run.rows, methods))
    table = gap_table(by_profile)
    shown = [m for m in ADAPTIVE if m in methods]
    text = ("Gap sweep: Δ vs WiSE-FT(0.5), mean ± std over seeds; [k/n] = seeds whose paired 95% bootstrap "
            f"interval excludes 0. Runs: {len(runs)} under `{args.sweep_dir}`.\n\n" + render_gap(table, shown))
    write_text_atomic(out / "gap.md", text)
    gap_figure(table, shown).savefig(out / "gap.png", dpi=120)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
