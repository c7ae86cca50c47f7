"""The README's fine-tuning table from scripts/finetune_demo.sh's folder: each expert's manifest (cost, size,
validation curve) and its evaluation summary (every method on in-domain, novel modalities and corruptions).

    python scripts/finetune_report.py runs/finetune [--data retina] [--out runs/finetune/finetune.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20


def expert_rows(root: Path, data: str) -> list[str]:
    rows = ["| expert | saved as | on disk | trainable | fine-tune | val top-1: generalist → selected (step) |",
            "|---|---|---:|---:|---:|---|"]
    for mode in ("full", "lora"):
        folder = root / f"{data}-{mode}"
        m = json.loads((folder / "manifest.json").read_text())
        v = m["validation"]
        rank = f", r={m['recipe']['lora']['rank']} on {len(m['adapted'])} matrices" if mode == "lora" else ""
        trainable = "all" if mode == "full" else f"{_factor_params(folder):,}"
        rows.append(f"| {mode}{rank} | {m['saved_as']} | {_size_mib(folder):.1f} MiB | {trainable} | "
                    f"{m['training']['seconds']:.0f} s ({m['training']['steps']} steps, {m['device']}) | "
                    f"{v['generalist']['top1']:.1f} → {v['selected']['top1']:.1f} ({v['selected_step']}) |")
    return rows


def _factor_params(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "lora.safetensors"), framework="pt") as f:
        return sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())


def method_rows(root: Path, data: str) -> list[str]:
    summaries = {mode: json.loads((root / f"eval-{data}-{mode}" / "summary.json").read_text()) for mode in ("full", "lora")}
    methods = summaries["full"]["methods"]
    rows = ["| method | " + " | ".join(f"{mode}: in-domain / novel HM / corrupted" for mode in summaries) + " |",
            "|---|" + "---:|" * len(summaries)]
    for method in methods:
        cells = []
        for s in summaries.values():
            top1, hm, cor = s["top1"]["in_domain"], s["harmonic_mean"].get("modality", {}), s["top1"]["corruption"]
            cells.append(" / ".join(f"{d[method]:.1f}" if method in d else "–" for d in (top1, hm, cor)))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--data", default="retina", help="the data config the demo fine-tuned on")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = "\n".join(expert_rows(args.root, args.data) + [""] + method_rows(args.root, args.data)) + "\n"
    (args.out or args.root / "finetune.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
