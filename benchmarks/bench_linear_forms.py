"""The two exact per-sample forms of a merged Linear against a plain Linear, by tokens per sample.

    python benchmarks/bench_linear_forms.py [--in 768 --out 3072 --batch 32]

`dual` runs one GEMM against [W_exp; ΔW] (2× FLOPs); `chunked` forms W_exp + λ_i·ΔW per sample and
runs a batched matmul (≈1× FLOPs plus one weight-sized write per sample). The crossover token count
sets the thresholds in tcube.engines.fused_ops (CHUNKED_MIN_TOKENS_SMALL/LARGE).
"""
from __future__ import annotations

import argparse
import time

import torch

from tcube.engines.fused_ops import FusedLinear, RowLambda


def best_of(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--in", dest="d_in", type=int, default=768)
    parser.add_argument("--out", dest="d_out", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", default="1,4,16,32,48,64,96,128,197,256")
    args = parser.parse_args()
    torch.manual_seed(0)
    exp, gen = torch.nn.Linear(args.d_in, args.d_out), torch.nn.Linear(args.d_in, args.d_out)
    rows = RowLambda()
    dual = FusedLinear.from_modules(exp, gen, rows, chunked_min_tokens=10**9, chunk_bytes=64 * 2**20)
    chunked = FusedLinear.from_modules(exp, gen, rows, chunked_min_tokens=0, chunk_bytes=64 * 2**20)
    lam = torch.rand(args.batch)
    print(f"Linear {args.d_in}→{args.d_out}, batch {args.batch}, {torch.get_num_threads()} threads; time ÷ plain")
    print("| tokens | plain ms | dual | chunked | cheaper |\n|---:|---:|---:|---:|---|")
    with torch.inference_mode(), rows.set(lam):
        for n in map(int, args.tokens.split(",")):
            x = torch.randn(args.batch, n, args.d_in)
            plain = best_of(lambda x=x: exp(x))
            d, c = best_of(lambda x=x: dual(x)) / plain, best_of(lambda x=x: chunked(x)) / plain
            print(f"| {n} | {plain * 1e3:.2f} | {d:.2f}× | {c:.2f}× | {'chunked' if c < d else 'dual'} |")


if __name__ == "__main__":
    main()
