"""python -m tcube.zoo [--profile default|smoke] [--seed 0] [--data-root DIR] [--data-config YAML ...]
                      [--only NAME ...] [--force]

Trains the zoo models that are missing (or, with --force, the selected ones again) and prints one
row per model: steps, wall seconds, and zero-shot top-1 on the validation split of its own
dataset and of every other dataset (test splits are never touched here).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .build import Zoo
from .recipe import PROFILES
from .store import GENERALIST, model_names, read_manifest


def _own_key(manifest: dict) -> str | None:
    if manifest["kind"] == GENERALIST:
        return None
    return manifest["dataset"] + (":base" if manifest["kind"] == "base_expert" else "")


def format_table(rows: list[tuple[str, dict, bool]]) -> str:
    """Markdown table: model, trained now?, steps, seconds, own val top-1, val top-1 per dataset
    (and per base/novel class subset, for datasets with a class split)."""
    columns = list(dict.fromkeys(k for _, m, _ in rows for k in m["val"]))
    datasets = [c for c in columns if ":" not in c]
    head = ["model", "now", "steps", "seconds", "val top-1 (own)"] + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m, trained in rows:
        val, own = m["val"], _own_key(m)
        own_txt = (f"{val[own]['top1']:.1f}" if own in val
                   else f"mean {sum(val[d]['top1'] for d in datasets if d in val) / max(1, len(datasets)):.1f}")
        cells = [name, "trained" if trained else "cached", str(m["training"]["steps"]), f"{m['wall_seconds']:.0f}",
                 own_txt] + [f"{val[c]['top1']:.1f}" if c in val else "" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        first = rows[0][1]["val"]
        majority = [f"{first[c]['majority']:.1f}" if c in first else "" for c in columns]
        lines.append("| " + " | ".join(["majority class", "", "", "", ""] + majority) + " |")
    return "\n".join(lines)


def _data_config(path: str):
    """The dataset a data config describes (the same keys tcube.eval reads from it)."""
    from omegaconf import OmegaConf

    from tcube.data import spec_from_config

    return spec_from_config(OmegaConf.to_container(OmegaConf.load(path)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcube.zoo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None,
                        help="folder with the npz files (default: $TCUBE_DATA_DIR, else ~/.medmnist)")
    parser.add_argument("--data-config", nargs="+", default=[], metavar="YAML",
                        help="data configs (conf/data/NAME.yaml) of datasets beyond the built-in four: the generalist "
                             "trains on them too, each gets an expert (the same zoo as tcube.eval with those configs)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"models to train, e.g. {model_names()[:2]}")
    parser.add_argument("--force", action="store_true", help="retrain the selected models even if present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    try:
        zoo = Zoo(args.profile, args.seed, args.data_root, [_data_config(f) for f in args.data_config])
        names = [zoo.parse(n).name for n in args.only] if args.only else None
    except (ValueError, OSError) as err:
        parser.error(str(err))
    start, rows = time.perf_counter(), []
    try:
        names = names or model_names(zoo.datasets)
        selected = set(names)
        for name in [GENERALIST] + [n for n in dict.fromkeys(names) if n != GENERALIST]:  # experts need it first
            before = read_manifest(zoo.folder / name)
            folder = zoo.ensure(name, force=args.force and name in selected, progress=not args.no_progress)
            manifest = read_manifest(folder)
            rows.append((name, manifest, before is None or before.get("created_utc") != manifest["created_utc"]))
    except (FileNotFoundError, ValueError) as err:  # missing data, a stale zoo: the message says what to do
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nzoo '{args.profile}' seed {args.seed}: {zoo.folder}  ({time.perf_counter() - start:.0f} s)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
