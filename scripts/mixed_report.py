"""Report the mixed protocol over several runs (seeds): mean ± std per method, paired Δ counts, and a figure.

    python scripts/mixed_report.py RUN_DIR [RUN_DIR ...] --out DIR

Reads each run's results.jsonl (the rows with protocol "mixed"), summarizes each run (tcube.reporting.mixed:
intervals resampled within each dataset, paired Δ macro top-1 vs the run's best static merge and vs
oracle_route), and writes mixed.md and mixed.png to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcube.io import write_text_atomic
from tcube.reporting.mixed import is_mixed, render_seeds_table, seeds_table, summarize_mixed
from tcube.reporting.results import read_rows


def figure(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    clean = [table[m]["macro_top1"] for m in names]
    corrupted = [table[m]["corrupted_macro"] or (float("nan"), 0.0) for m in names]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.2))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [c[0] for c in clean], 0.4, xerr=[c[1] for c in clean], label="clean stream")
    ax.barh([i - 0.2 for i in y], [c[0] for c in corrupted], 0.4, xerr=[c[1] for c in corrupted],
            label="corrupted streams (mean)")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("macro top-1 over the four datasets (%), mean ± std over seeds")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    summaries = []
    for run in args.run_dirs:
        rows = [r for r in read_rows(run / "results.jsonl") if is_mixed(r)]
        if not rows:
            print(f"mixed_report: no mixed rows in {run}", file=sys.stderr)
            return 2
        summaries.append(summarize_mixed(rows))
    table = seeds_table(summaries)
    text = (f"Mixed stream over {len(summaries)} runs ({', '.join(str(r) for r in args.run_dirs)}): mean ± std over "
            "runs; [a↑ b↓ /n] = runs whose paired 95% interval (resampled within each dataset) excludes 0 above / below "
            "the reference.\n\n"
            + render_seeds_table(table, [s["best_static"] for s in summaries]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "mixed.md", text)
    figure(table, args.out / "mixed.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
