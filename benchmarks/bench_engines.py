"""Engine benchmark: throughput, peak memory and exactness of every way to run T^3, in one run.

    python benchmarks/bench_engines.py [--scales small,vit_b16,biomedclip] [--batch 32] [--large-batch 16]
                                       [--out bench.json]
                                       [--device auto|cpu|cuda] [--precision fp32|bf16|fp16]
                                       [--stream-batches 4] [--configs all|user]

Subsets: `--scales small` runs only the small model (about a minute on 2 cores); `--scales vit_b16` or
`--scales biomedclip` one large scale (tens of minutes on 2 CPU cores); `--configs user` only the rows users
run by default (one-shot and streamed, plus the naive reference).

Three kinds of rows (the × T^3_B column compares rows of the same kind):
- one-shot: `merge_and_predict(...)` with its defaults, one call per batch (builds everything each call); median
  of 15 calls (2 at the 224-px scales), T^3_B and T^3 calls alternating on the same batches;
- streamed: one `Merger(...)` with its defaults, built and then fed --stream-batches batches; seconds per batch
  include the build; the T^3_B and T^3 Mergers' batches alternate;
- warm: a Merger warmed on one batch, then timed per batch (engine against engine, as before).

--device auto (the default) runs on the GPU when one is visible. --precision runs every model forward
under torch.autocast (λ and merge arithmetic stay fp32); Δlogit vs naive compares within that precision.

Random weights (speed only; expert = generalist + noise). Per scale it times one batch end to end
(endpoint JS pass + merged pass) after a warm-up batch, and prints ratios measured in this run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from tcube import Merger, merge_and_predict
from tcube.methods.merger import _plain_logits
from tcube.models import build_model, tokenizer_for
from tcube.runtime.device import resolve_device
from tcube.runtime.precision import PRECISIONS, autocast, check_precision

CLASSES = ["no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
           "severe diabetic retinopathy", "proliferative diabetic retinopathy"]
TEMPLATES = ["a colour fundus photograph showing {}.", "a retinal image with {}."]

SMALL_CFG = {  # the zoo's size: ~8 M parameters, 32 px
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


def biomedclip_cfg(folder: Path) -> dict:
    """BiomedCLIP's architecture (timm ViT-B/16 + PubMedBERT-base, context 256) from a local BERT config."""
    from transformers import BertConfig, BertTokenizerFast

    words = sorted({w for c in CLASSES + TEMPLATES for w in c.replace(".", " ").replace("{}", " ").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= on the fast tokenizer (every word became [UNK]): pass the vocab itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=512).save_pretrained(folder)
    return {"embed_dim": 512,
            "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
            "custom_text": True}


def make_pair(scale: str, tmp: Path):
    import open_clip

    if scale == "small":
        cfg, folder = SMALL_CFG, None
    elif scale == "vit_b16":
        cfg, folder = open_clip.get_model_config("ViT-B-16"), None
    else:
        folder = tmp / "bert"
        folder.mkdir(exist_ok=True)
        cfg = biomedclip_cfg(folder)
    torch.manual_seed(0)
    gen = build_model(cfg)
    exp = copy.deepcopy(gen)
    with torch.no_grad():
        for p in exp.parameters():
            p.add_(torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0) * 0.2)
        # A trained CLIP's temperature (exp(logit_scale) = 100) instead of the init's 14.3: with random
        # features the init gives near-uniform probabilities, JS ≈ 0 and every λ of a batch ≈ 0.5, which
        # would time per-sample T^3 on one λ. At 100 the pair disagrees like trained models do and λ spans
        # most of the paper's [0.5, 0.586] (the printed λ range shows it).
        for m in (gen, exp):
            m.logit_scale.fill_(torch.log(torch.tensor(100.0)).item())
    size = cfg["vision_cfg"].get("image_size", 224)
    return gen.eval(), exp.eval(), tokenizer_for(cfg, folder), size


class PeakMemory:
    """Peak CUDA allocation, or on CPU the peak RSS growth over the block (sampled every 2 ms after
    malloc_trim; short spikes can be missed: --exact-memory re-measures with every large block mmap'd)."""

    def __init__(self, device: str):
        self.cuda, self.peak = device.startswith("cuda"), 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        _trim()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self.running = self._rss(), True
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self._rss() - self.start)


def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: peak memory readings are then upper bounds of nothing; skip trimming
        return None


def _exact_rss() -> None:
    """Make RSS follow live tensors: big blocks always mmap'd (M_MMAP_THRESHOLD fixed at 128 KiB)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 128 * 1024)


def _trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


MEMORY_PASS = False  # set by --memory-pass: one call per config, RSS made exact (slower allocations)


def _clock(fn, device: str):
    """(result, seconds) of one call, synchronized on CUDA so the seconds include the kernels."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def timed(fn, device: str, min_seconds: float = 1.0, max_reps: int = 6):
    """Median seconds of repeated calls (at least one, more while under min_seconds), and peak memory."""
    times, out = [], None
    with PeakMemory(device) as mem:
        while not times or (not MEMORY_PASS and sum(times) < min_seconds and len(times) < max_reps):
            result, seconds = _clock(fn, device)
            if not times:  # keep the first call's output (it ran on the first batch)
                out = result
            times.append(seconds)
    return out, sorted(times)[len(times) // 2], mem.peak / 2**20


def timed_call(fn, device: str):
    """(result, seconds, peak MiB) of one call."""
    with PeakMemory(device) as mem:
        result, seconds = _clock(fn, device)
    return result, seconds, mem.peak / 2**20


def _median(calls) -> float:
    times = sorted(c[1] for c in calls)
    return times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2


def bench_scale(scale: str, batch: int, device: str, tmp: Path, grid_size: int, precision: str = "fp32",
                stream_batches: int = 4, configs: str = "all") -> list[dict]:
    gen, exp, tokenizer, size = make_pair(scale, tmp)
    gen, exp = gen.to(device), exp.to(device)
    g = torch.Generator().manual_seed(1)
    # a fresh batch for every timed call: new λ values, so no engine may reuse merged weights or heads
    one_shot_reps = 1 if MEMORY_PASS else 15 if scale == "small" else 2
    fresh = [torch.randn(batch, 3, size, size, generator=g).to(device)
             for _ in range(max(7, 2 + stream_batches, 1 + one_shot_reps))]
    warm, images = fresh[0], fresh[1]
    rows = []

    def merger(engine, heads="exact", **options):
        return Merger(gen, exp, tokenizer, CLASSES, TEMPLATES, engine=engine, text_heads=heads,
                      grid_size=grid_size, engine_options=options, precision=precision)

    def plain_forward():
        with autocast(device, precision):
            return _plain_logits(exp, head, images)

    def record(kind, name, out, seconds, peak, extra=None):
        rows.append({"scale": scale, "kind": kind, "config": name, "images_per_s": batch / seconds,
                     "seconds": seconds, "peak_mib": peak, "logits": out.logits if hasattr(out, "logits") else out,
                     "lambda_min": float(out.lambdas.min()) if hasattr(out, "lambdas") else None,
                     "lambda_max": float(out.lambdas.max()) if hasattr(out, "lambdas") else None, **(extra or {})})
        print(f"  {scale:10s} {kind:8s} {name:40s} {batch / seconds:9.2f} img/s  peak {peak:8.1f} MiB", flush=True)

    head = merger("batch").head_exp
    plain, seconds, peak = timed(plain_forward, device)
    record("warm", "single model forward", plain, seconds, peak)

    # -- what users run: the library call and a streamed Merger, with their default options ------------------
    # T^3_B and T^3 calls alternate (A, B, A, B, ...) on the same fresh batches, so drift in the machine's speed
    # (a shared VM's is ±20% over minutes) falls on both, and each row is the median over its calls.
    methods = (("t3_batch", "T^3_B"), ("t3", "T^3"))

    def one_shot(method, x):  # a fresh library call: it builds its Merger, engine and heads, and reuses nothing
        if precision == "fp32":
            return merge_and_predict(gen, exp, x, CLASSES, tokenizer=tokenizer, templates=TEMPLATES, method=method)
        return Merger(gen, exp, tokenizer, CLASSES, TEMPLATES, precision=precision).predict(x, method)

    for method, _ in methods:
        one_shot(method, warm)  # warm-up call (allocator, thread pools)
    calls = {m: [] for m, _ in methods}
    for rep in range(one_shot_reps):
        for method, _ in methods:
            calls[method].append(timed_call(lambda m=method, x=fresh[1 + rep]: one_shot(m, x), device))
    for method, label in methods:
        out = calls[method][0][0]
        record("one-shot", f"{label}: merge_and_predict(method='{method}')", out, _median(calls[method]),
               max(c[2] for c in calls[method]))

    mergers, spent, peaks, firsts = {}, {}, {}, {}
    for method, _ in methods:  # built as a user builds it, with its default options; the build is charged
        (mergers[method], spent[method], peaks[method]) = timed_call(
            lambda: Merger(gen, exp, tokenizer, CLASSES, TEMPLATES, precision=precision), device)
    for x in fresh[1:1 + stream_batches]:
        for method, _ in methods:
            out, seconds, peak = timed_call(lambda m=method, x=x: mergers[m].predict(x, m), device)
            firsts.setdefault(method, out)
            spent[method] += seconds
            peaks[method] = max(peaks[method], peak)
    for method, label in methods:
        heads = mergers[method].heads
        stats = {"text_heads": heads.mode, "lambdas_encoded": heads.stats["encoded"],
                 "head_error_measured": heads.describe()["max_error"]}
        record("streamed", f"{label}: Merger, {stream_batches} batches", firsts[method],
               spent[method] / stream_batches, peaks[method], stats)
    mergers.clear()  # free both before the warm rows

    # -- engine against engine (warm Mergers) --------------------------------------------------------------
    engine_configs = [  # name, merger factory, method
        ("T^3_B (batch engine)", lambda: merger("batch"), "t3_batch"),
        ("T^3 fused, text adaptive (default)", lambda: merger("fused", "adaptive"), "t3"),
        ("T^3 fused, text grid (approximate)", lambda: merger("fused", "grid"), "t3"),
        ("T^3 fused, text exact", lambda: merger("fused", "exact"), "t3"),
        ("T^3 bucket K=8 (approximate)", lambda: merger("bucket", num_buckets=8), "t3"),
        ("T^3 naive (reference)", lambda: merger("naive"), "t3"),
    ]
    if configs == "user":
        engine_configs = engine_configs[-1:]
    reference = None
    for name, factory, method in engine_configs:
        m = factory()
        warm_n = batch if name != "T^3 naive (reference)" else 2  # warm caches (grid heads, endpoint heads)
        m.predict(warm[:warm_n], method)
        batches = iter(fresh[1:])
        out, seconds, peak = timed(lambda m=m, it=batches, method=method: m.predict(next(it), method), device)
        if "naive" in name:
            reference = out.logits
        record("warm", name, out, seconds, peak)
        del m
    for row in rows:
        logits = row.pop("logits")
        per_sample = row["config"].startswith("T^3") and "T^3_B" not in row["config"]
        row["max_abs_dlogit_vs_naive"] = float((logits - reference).abs().max()) if per_sample else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="small,vit_b16,biomedclip")
    parser.add_argument("--batch", type=int, default=32, help="batch size at the small scale")
    parser.add_argument("--large-batch", type=int, default=16, help="batch size at the 224-px scales (vit_b16, biomedclip)")
    parser.add_argument("--grid-size", type=int, default=33, help="grid text heads (approximate rows) only")
    parser.add_argument("--stream-batches", type=int, default=4, help="batches fed to one Merger in streamed rows")
    parser.add_argument("--configs", default="all", choices=["all", "user"],
                        help="user: only the one-shot and streamed rows with default options, and the naive reference")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="model forwards under torch.autocast (fp16 needs CUDA)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench_engines.json")
    parser.add_argument("--exact-memory", action="store_true",
                        help="CPU: re-measure peaks in a second pass with every large block mmap'd (slower run, "
                             "exact RSS); by default peaks are sampled RSS growth after malloc_trim")
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        args.device = str(resolve_device(args.device))
        check_precision(args.precision, args.device)
    except ValueError as err:
        parser.error(str(err))
    global MEMORY_PASS
    MEMORY_PASS = args.memory_pass
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
               "precision": args.precision,
               "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None}
    print(f"machine: {machine}")
    rows = []
    if MEMORY_PASS:
        _exact_rss()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for scale in args.scales.split(","):
            rows += bench_scale(scale, args.batch if scale == "small" else args.large_batch, args.device, Path(tmp),
                                args.grid_size, args.precision, args.stream_batches, args.configs)
    if MEMORY_PASS:
        Path(args.out).write_text(json.dumps({(r["scale"] + "|" + r["kind"] + "|" + r["config"]): r["peak_mib"] for r in rows}))
        return
    if args.device == "cpu" and args.exact_memory:  # timings ran with the normal allocator; exact peaks here
        import subprocess

        print("\nmemory pass (exact RSS, one call per config):", flush=True)
        mem_out = Path(args.out).with_suffix(".memory.json")
        subprocess.run([sys.executable, __file__, "--memory-pass", "--scales", args.scales, "--batch", str(args.batch),
                        "--large-batch", str(args.large_batch),
                        "--grid-size", str(args.grid_size), "--out", str(mem_out), "--device", args.device,
                        "--precision", args.precision, "--stream-batches", str(args.stream_batches),
                        "--configs", args.configs]
                       + (["--threads", str(args.threads)] if args.threads else []), check=True)
        peaks = json.loads(mem_out.read_text())
        mem_out.unlink()
        for r in rows:
            r["peak_mib"] = peaks[r["scale"] + "|" + r["kind"] + "|" + r["config"]]
    print("\n| scale | kind | config | images/s | × T^3_B (same kind) | × naive | peak MiB | "
          "max abs Δlogit vs naive | λ range |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for scale in args.scales.split(","):
        r = [row for row in rows if row["scale"] == scale]
        naive = next(row for row in r if row["config"] == "T^3 naive (reference)")["images_per_s"]
        t3b = {row["kind"]: row["images_per_s"] for row in r if row["config"].startswith("T^3_B")}
        for row in r:
            ref = t3b.get(row["kind"])
            ratio = "" if ref is None else f"{row['images_per_s'] / ref:.2f}"
            err = row["max_abs_dlogit_vs_naive"]
            lam = "" if row["lambda_min"] is None else f"[{row['lambda_min']:.3f}, {row['lambda_max']:.3f}]"
            print(f"| {scale} | {row['kind']} | {row['config']} | {row['images_per_s']:.2f} | "
                  f"{ratio} | {row['images_per_s'] / naive:.1f} | "
                  f"{row['peak_mib']:.0f} | {'' if err is None else f'{err:.1e}'} | {lam} |")
    Path(args.out).write_text(json.dumps({"machine": machine, "batch": args.batch, "large_batch": args.large_batch,
                                          "stream_batches": args.stream_batches,
                                          "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
