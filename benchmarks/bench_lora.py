"""LoRA benchmark: per-sample T^3 with a LoRA expert against a plain forward and T^3_B, in one run.

    python benchmarks/bench_lora.py [--scales small,vit_b16] [--rank 8] [--batch 32] [--large-batch 16]
                                    [--reps 15] [--large-reps 3] [--out bench_lora.json] [--device auto|cpu|cuda]

Rows per scale (images/s, × the plain forward and × T^3_B of the same kind, all measured in this run):
- one-shot: `merge_and_predict` with its defaults (each call builds its Merger, engine and heads, as a user's
  call does): T^3_B (method='t3_batch'); T^3 with the LoRA expert (the fused engine keeps its task vector as
  the factors); T^3 with the same expert stripped of its factors (identical weights: the fused engine's dense,
  full-rank path); T^3 on the naive engine (the reference, on the first batch only at 224 px). Max |Δlogit| of
  both fused T^3 rows against naive on the same batch. A T^3 call also runs both endpoint models (two plain
  forwards) to choose λ, and builds its engine and text heads, so it costs several plain forwards;
- warm: the plain forward of one model (image tower and cosine logits: the cost floor), and the fused engine's
  image forward alone at the batch's per-sample λ and at their mean (one shared λ: T^3_B's merged pass), for the
  factored and the stripped expert, and with no deltas at all (expert = generalist: the fused modules' own
  plain forward). This merged pass is what the factors bring to a plain forward plus low-rank terms.
Calls of one kind alternate on the same fresh batches (median over --reps), so the VM's drift falls on all.
Then the shared-row forms of ViT-B/16-sized matrices (U·V folded into the one merged weight, or the plain
weight plus the low-rank term) against the tokens in the batch: the rule `FusedLinear.fold_min_tokens` uses.

Random weights (speed only): the LoRA expert is the generalist plus rank-r adapters on every attention and MLP
matrix (A as initialized, B random, scaled so each update's rms is 0.2·std(W) as bench_engines' expert noise);
logit scale 100 as trained CLIPs have (bench_engines.make_pair).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import CLASSES, TEMPLATES, _clock, make_pair  # noqa: E402  (same models and clock)

from tcube import Merger, merge_and_predict  # noqa: E402
from tcube.engines import FusedEngine  # noqa: E402
from tcube.engines.fused_ops import FusedLinear, RowCoefficients  # noqa: E402
from tcube.methods.merger import _plain_logits  # noqa: E402
from tcube.models.lora import LoraConfig, LoraFactors, LowRank, add_lora, attach_factors, lora_factors, merge_lora  # noqa: E402
from tcube.runtime.device import resolve_device  # noqa: E402


def lora_expert(gen: torch.nn.Module, rank: int, seed: int = 0) -> torch.nn.Module:
    """generalist + rank-r adapters on attn and mlp, B random (update rms 0.2·std(W)), merged, factors attached."""
    model = copy.deepcopy(gen)
    torch.manual_seed(seed)
    add_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, targets=("attn", "mlp")))
    with torch.no_grad():
        for module in model.modules():
            for chain in getattr(module, "parametrizations", {}).values():
                adapter = next(p for p in chain if isinstance(p, LowRank))
                adapter.lora_B.normal_()
                update = adapter.scale * adapter.lora_B @ adapter.lora_A
                weight = chain.original
                adapter.lora_B.mul_(0.2 * weight.std() / update.pow(2).mean().sqrt())
    factors = lora_factors(model)
    return attach_factors(merge_lora(model).eval(), LoraFactors(factors, "bench generalist"))


def stripped(expert: torch.nn.Module) -> torch.nn.Module:
    """The same weights without the factors: the fused engine's dense path."""
    model = copy.deepcopy(expert)
    del model.tcube_lora
    return model


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def rounds(calls: dict, batches: list[torch.Tensor], device: str, only_first: dict | None = None):
    """Each call once per batch, the calls alternating within a round (a shared VM's speed drifts by ±20% over
    minutes: drift falls on every row alike). Calls in `only_first` (name -> n) run in the first n rounds only.
    Returns {name: seconds per call} and {name: the first call's result}."""
    times, first = {name: [] for name in calls}, {}
    for i, x in enumerate(batches):
        for name, fn in calls.items():
            if only_first and i >= only_first.get(name, len(batches)):
                continue
            out, seconds = _clock(lambda f=fn, x=x: f(x), device)
            first.setdefault(name, out)
            times[name].append(seconds)
    return times, first


def bench_scale(scale: str, rank: int, batch: int, reps: int, device: str, tmp: Path) -> list[dict]:
    gen, _, tokenizer, size = make_pair(scale, tmp)
    expert = lora_expert(gen, rank)
    dense = stripped(expert)
    gen, expert, dense = gen.to(device), expert.to(device), dense.to(device)
    g = torch.Generator().manual_seed(1)
    fresh = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(reps + 1)]
    rows = []

    def record(kind, name, seconds, **extra):
        rows.append({"scale": scale, "kind": kind, "row": name, "images_per_s": batch / median(seconds),
                     "seconds": seconds, **extra})
        print(f"  {scale:8s} {kind:9s} {name:48s} {batch / median(seconds):9.2f} img/s", flush=True)

    # -- what users run: merge_and_predict with its defaults (each call builds its Merger, engine and heads) -------
    def one_shot(model, method, engine="fused"):
        return lambda x: merge_and_predict(gen, model, x, CLASSES, tokenizer=tokenizer, templates=TEMPLATES,
                                           method=method, engine=engine)

    calls = {"T^3_B (t3_batch)": one_shot(expert, "t3_batch"),
             "T^3, LoRA expert (factored)": one_shot(expert, "t3"),
             "T^3, factors stripped (dense)": one_shot(dense, "t3"),
             "T^3 naive (reference)": one_shot(expert, "t3", "naive")}
    for fn in calls.values():
        fn(fresh[0])  # warm-up call (allocator, thread pools)
    naive_reps = 1 if scale != "small" else 3  # the reference is slow at 224 px
    times, first = rounds(calls, fresh[1:], device, {"T^3 naive (reference)": naive_reps})
    naive = first["T^3 naive (reference)"].logits  # all rows' first calls ran on the same batch
    for name in calls:
        err = float((first[name].logits - naive).abs().max()) if name.startswith("T^3,") else None
        lam = first[name].lambdas
        record("one-shot", name, times[name], max_abs_dlogit_vs_naive=err,
               lambda_range=[float(lam.min()), float(lam.max())])

    # -- the merged pass alone (warm engines) against the plain forward, alternating ---------------------------------
    head = Merger(gen, expert, tokenizer, CLASSES, TEMPLATES, engine="batch").head_exp
    lam = first["T^3, LoRA expert (factored)"].lambdas.to(device)
    engines = {"factored": FusedEngine(gen, expert), "dense": FusedEngine(gen, dense),
               "no deltas": FusedEngine(gen, gen)}  # expert = generalist: the fused modules' own plain forward
    passes = {"plain forward (one model)": lambda x: _plain_logits(expert, head, x)}
    for form, eng in engines.items():
        for label, coef in (("per-sample λ", lam), ("shared λ (mean)", lam.mean().expand_as(lam))):
            if form != "no deltas" or label == "per-sample λ":
                passes[f"merged pass, {label}, {form}"] = lambda x, e=eng, c=coef: e.image_features(x, c)
    for fn in passes.values():
        fn(fresh[0])
    times, _ = rounds(passes, fresh[1:], device)
    for name in passes:
        form = name.rsplit(", ", 1)[-1]
        record("warm", name, times[name], **({"delta_forms": engines[form].fused.delta_forms()}
                                             if form in engines else {}))
    floor = next(r["images_per_s"] for r in rows if r["row"].startswith("plain forward"))
    same_kind_t3b = {"one-shot": next(r["images_per_s"] for r in rows if r["row"].startswith("T^3_B")),
                     "warm": next(r["images_per_s"] for r in rows if r["row"].endswith("shared λ (mean), factored"))}
    for r in rows:
        r["x_plain"], r["x_t3_batch"] = r["images_per_s"] / floor, r["images_per_s"] / same_kind_t3b[r["kind"]]
    return rows


def shared_forms(device: str, rank: int, reps: int = 5) -> list[dict]:
    """ms per call of a ViT-B/16-sized FusedLinear with one shared row of coefficients: U·V folded into the
    merged weight vs the plain weight plus the low-rank term, by tokens in the batch."""
    rows = []
    for out, inn in ((768, 768), (3072, 768), (2304, 768)):
        g = torch.Generator().manual_seed(0)
        gen = torch.randn(out, inn, generator=g) * 0.02
        u, v = torch.randn(out, rank, generator=g) * 0.01, torch.randn(rank, inn, generator=g)
        coef = RowCoefficients()
        op = FusedLinear(gen + u @ v, None, [gen], [None], coef, factors=((u, v), [None])).to(device)
        for tokens in (64, 256, 512, 1024, 3152):
            x = torch.randn(1, tokens, inn, generator=g).to(device)
            timing = {}
            with coef.set(torch.full((1,), 0.5, device=device)):
                for form, threshold in (("fold", 0), ("low-rank term", 10**9)):
                    op.fold_min_tokens = threshold
                    op(x)
                    timing[form] = median([_clock(lambda o=op, x=x: o(x), device)[1] for _ in range(reps)]) * 1e3
            rows.append({"out": out, "in": inn, "tokens": tokens, "fold_ms": timing["fold"],
                         "lowrank_ms": timing["low-rank term"], "rule": "fold" if tokens >= -(-out * inn // (out + inn))
                         else "low-rank term"})
            print(f"  shared row {out:5d}×{inn:<4d} {tokens:5d} tokens: fold {timing['fold']:7.2f} ms, low-rank term "
                  f"{timing['low-rank term']:7.2f} ms (rule: {rows[-1]['rule']})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="small,vit_b16")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="batch size at the small scale")
    parser.add_argument("--large-batch", type=int, default=16, help="batch size at vit_b16")
    parser.add_argument("--reps", type=int, default=15, help="timed batches per row at the small scale")
    parser.add_argument("--large-reps", type=int, default=3, help="timed batches per row at vit_b16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench_lora.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    meta = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device, "rank": args.rank,
            "batch": args.batch, "large_batch": args.large_batch}
    print(f"machine: {meta}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for scale in args.scales.split(","):
            small = scale == "small"
            rows += bench_scale(scale, args.rank, args.batch if small else args.large_batch,
                                args.reps if small else args.large_reps, device, Path(tmp))
        forms = shared_forms(device, args.rank)
    print("\n| scale | kind | row | images/s | × plain forward | × T^3_B (same kind) | max abs Δlogit vs naive |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        err = r.get("max_abs_dlogit_vs_naive")
        print(f"| {r['scale']} | {r['kind']} | {r['row']} | {r['images_per_s']:.2f} | {r['x_plain']:.2f} | "
              f"{r['x_t3_batch']:.2f} | {'' if err is None else f'{err:.1e}'} |")
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "shared_row_forms": forms}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
