"""What the logit cache saves on a hyper-parameter sweep (tiny random models: timings only, no accuracy).

Runs `tcube.harness.evaluate.run` once per γ (each job in a fresh run dir, as `-m method.gamma=...` does) with
the cache off, then with a cold cache (the first job fills it, the others read it), and prints JSON.

    TCUBE_DATA_DIR=../shared/data/medmnist python benchmarks/bench_cache.py --limit 200
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gammas", default="0.25,0.5,1,2")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--protocol", default="corruption")
    parser.add_argument("--methods", default="t3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from common import TINY_CLIP_CFG, perturbed
    from eval_support import compose

    from tcube.harness.evaluate import run
    from tcube.models import build_model, save_local_dir, tokenizer_for

    data_root = Path(os.environ.get("TCUBE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared/data/medmnist")
    tmp = Path(tempfile.mkdtemp(prefix="tcube_bench_cache_"))
    torch.manual_seed(0)
    gen = build_model(TINY_CLIP_CFG)
    tok = tokenizer_for(TINY_CLIP_CFG)
    for name, model in (("gen", gen), ("exp", perturbed(copy.deepcopy(gen), seed=1))):
        save_local_dir(model, tmp / name, model_cfg=TINY_CLIP_CFG, tokenizer=tok)
    base = ["model=local", f"model.generalist=local-dir:{tmp / 'gen'}", f"model.expert=local-dir:{tmp / 'exp'}",
            "data=retina", f"data.root={data_root}", f"protocol={args.protocol}", "method=all",
            f"method.methods=[{args.methods}]", f"limit={args.limit}", "progress=false", "device=cpu",
            "protocol.corruptions=[gaussian_noise,defocus_blur]", "protocol.severities=[1,3,5]",
            f"cache_dir={tmp / 'cache'}"]
    gammas = [float(g) for g in args.gammas.split(",")]
    result = {"limit": args.limit, "protocol": args.protocol, "methods": args.methods, "gammas": gammas,
              "threads": args.threads}
    for mode in ("off", "on"):
        times = []
        for i, g in enumerate(gammas):
            cfg = compose(base + [f"method.gamma={g}", f"cache={'true' if mode == 'on' else 'false'}"])
            start = time.perf_counter()
            run(cfg, tmp / f"run_{mode}_{i}")
            times.append(time.perf_counter() - start)
        result[f"cache_{mode}_seconds"] = times
    off, on = sum(result["cache_off_seconds"]), sum(result["cache_on_seconds"])
    warm_off, warm_on = sum(result["cache_off_seconds"][1:]), sum(result["cache_on_seconds"][1:])
    result.update(sweep_seconds_cache_off=off, sweep_seconds_cache_on=on, sweep_saving_percent=100 * (1 - on / off),
                  warm_job_saving_percent=100 * (1 - warm_on / warm_off))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
