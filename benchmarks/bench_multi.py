"""Multi-expert benchmark: cost per image of every way to merge one generalist with K experts, in one run.

    python benchmarks/bench_multi.py [--scales small,vit_b16] [--experts 4] [--batch 32] [--large-batch 16]
                                     [--batches 4] [--out bench_multi.json] [--device auto|cpu|cuda]

What users run: one `MultiMerger` (built once, like a streamed `Merger`) fed --batches batches of a mixed
stream, each `predict(images, method)` call with the method's defaults paying for everything it needs (the
generalist's forward, the experts' forwards where the rule reads them, the merged forward, text heads).
Rows: the static merge (`multi_average`: one merged model, one forward), the `oracle_route` ceiling (needs the
task labels), the cheap `router` (generalist + merged forward), the per-sample rules (`multi_t3`, `multi_dawin`,
`multi_t3` hard), the batch-wise `multi_t3_batch`, and `multi_t3` on the naive engine (one merged model per
image: the reference). Images/s and the ratio to the static merge are measured in this run; max |Δlogit| of
the fused engine against naive on the same batch is printed next to the naive row. At 224 px the two rows whose
text heads are an exact encode per image (multi_t3 soft, multi_dawin) are left out unless --all-large.

Random weights (speed only): expert k = generalist + noise of seed k, logit scale 100 as trained CLIPs have.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import _clock, make_pair  # noqa: E402  (same models, same clock as the pair benchmark)

from tcube.methods.multi_merger import MultiMerger  # noqa: E402
from tcube.runtime.device import resolve_device  # noqa: E402

TASKS = [["no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
          "severe diabetic retinopathy", "proliferative diabetic retinopathy"],
         ["normal lungs", "pneumonia"], ["normal or benign breast tissue", "malignant breast tumour"],
         ["common nevus", "atypical nevus", "melanoma"]]
TEMPLATES = ["a medical image showing {}.", "an image of {}.", "a close-up photograph of {}."]
# (row name, method, engine, params). Rows whose text heads are an exact encode per image (soft weights) take
# minutes per batch at 224 px on 2 CPU cores: left out there unless --all-large.
SOFT = ("multi_t3 soft (task mass)", "multi_dawin")
# (row name, method, engine, params)
ROWS = [("static merge (multi_average)", "multi_average", "fused", {}),
        ("oracle_route (ceiling, reads the task)", "oracle_route", "fused", {}),
        ("router (hard, default)", "router", "fused", {}),
        ("multi_t3_batch", "multi_t3_batch", "fused", {}),
        ("multi_t3 (default: hard task guess)", "multi_t3", "fused", {}),
        ("multi_t3 soft (task mass)", "multi_t3", "fused", {"hard": False}),
        ("multi_dawin", "multi_dawin", "fused", {}),
        ("multi_t3, naive engine (reference)", "multi_t3", "naive", {})]


def make_experts(gen: torch.nn.Module, k: int) -> list[torch.nn.Module]:
    experts = []
    for seed in range(k):
        e = copy.deepcopy(gen)
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in e.parameters():
                if p.numel() > 1:  # logit_scale stays: both at a trained CLIP's 100
                    p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.2)
        experts.append(e.eval())
    return experts


def bench_scale(scale: str, k: int, batch: int, n_batches: int, device: str, tmp: Path,
                all_rows: bool = True) -> list[dict]:
    gen, _, tokenizer, size = make_pair(scale, tmp)
    experts = make_experts(gen, k)
    gen, experts = gen.to(device), [e.to(device) for e in experts]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(n_batches + 1)]
    domains = [torch.randint(0, k, (batch,), generator=g) for _ in batches]
    tasks = TASKS[:k] if k <= len(TASKS) else [TASKS[i % len(TASKS)] for i in range(k)]
    tasks = [[f"{c} ({i})" for c in t] for i, t in enumerate(tasks)]  # distinct classes across repeated tasks
    naive_batches = 1 if scale != "small" else n_batches  # the reference is slow at 224 px
    rows, reference, merger, built = [], None, None, None
    for name, method, engine, params in ROWS:
        if name in SOFT and not all_rows:
            continue
        if engine != built:  # one Merger per engine, the previous one released first (ViT-B/16 × 5 models)
            merger = None
            merger, built = MultiMerger(gen, experts, tokenizer, tasks, TEMPLATES, engine=engine), engine
        merger.predict(batches[0], method, domain=domains[0], **params)  # warm: heads, merged models, caches
        used = batches[1:1 + (naive_batches if engine == "naive" else n_batches)]
        seconds, outs = 0.0, []
        for x, d in zip(used, domains[1:]):
            out, s = _clock(functools.partial(merger.predict, x, method, domain=d, **params), device)
            seconds += s
            outs.append(out)
        row = {"scale": scale, "row": name, "method": method, "engine": engine, "params": params,
               "images_per_s": len(used) * batch / seconds, "batches": len(used)}
        if method == "multi_t3" and not params:
            if engine == "fused":
                reference = outs[0].logits
            else:
                row["max_abs_dlogit_vs_fused"] = float((outs[0].logits - reference).abs().max())
        rows.append(row)
        print(f"{scale:8s} {name:42s} {row['images_per_s']:8.1f} img/s", flush=True)
    static = rows[0]["images_per_s"]
    for r in rows:
        r["x_static"] = r["images_per_s"] / static
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="small,vit_b16")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="batch size at the small scale")
    parser.add_argument("--large-batch", type=int, default=16, help="batch size at vit_b16")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per row (after one warm-up batch)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench_multi.json")
    parser.add_argument("--all-large", action="store_true", help="also the soft-weight rows at 224 px (slow)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales.split(","):
            batch = args.batch if scale == "small" else args.large_batch
            rows += bench_scale(scale, args.experts, batch, args.batches, device, Path(tmp),
                                all_rows=scale == "small" or args.all_large)
    print(f"\n{'scale':8s} {'row':42s} {'img/s':>8s} {'x static':>9s}")
    for r in rows:
        extra = f"  max|Δlogit| naive vs fused {r['max_abs_dlogit_vs_fused']:.1e}" if "max_abs_dlogit_vs_fused" in r else ""
        print(f"{r['scale']:8s} {r['row']:42s} {r['images_per_s']:8.1f} {r['x_static']:8.2f}x{extra}")
    meta = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device, "experts": args.experts}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
