"""The premise on the validation splits, from zoo manifests over seeds (trains missing models first).

    python scripts/zoo_premise.py [--profile default] [--seeds 0 1 2] [--data-root DIR] [--out FILE.md]

Prints, per expert dataset, val top-1 of the generalist and the expert in-domain and on the other
datasets (mean ± std over seeds). Test splits are never read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcube.io import write_text_atomic
from tcube.zoo import Zoo, read_manifest
from tcube.zoo.premise import format_premise, premise_rows
from tcube.zoo.recipe import PROFILES
from tcube.zoo.store import model_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    zoos = []
    for seed in args.seeds:
        zoo = Zoo(args.profile, seed, args.data_root)
        names = [n for n in model_names(zoo.datasets) if not n.endswith("-base")]
        zoos.append({n: read_manifest(zoo.ensure(n)) for n in names})
    recipe = PROFILES[args.profile]
    text = (f"Zoo profile `{args.profile}` (generalist_fraction {recipe.generalist_fraction:g}), seeds "
            f"{', '.join(map(str, args.seeds))}: validation top-1, mean ± std over seeds.\n\n"
            + format_premise(premise_rows(zoos)) + "\n")
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
