"""`torchrun --nproc_per_node=2 -m tcube.eval` (gloo, CPU) writes the same results.jsonl as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_support import make_env

from tcube.harness.distributed import Dist, init_from_env

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("seconds", "endpoint_seconds", "time")


def test_batch_blocks_cover_every_batch_once():
    for n, bs, world in ((20, 4, 2), (21, 4, 3), (3, 4, 2), (0, 4, 2), (64, 8, 5)):
        blocks = [Dist(r, world).batch_block(n, bs) for r in range(world)]
        covered = [i for b in blocks for i in range(n)[b]]
        assert covered == list(range(n))  # contiguous, in rank order, nothing twice
        assert all(b.start % bs == 0 for b in blocks if b.start < n)  # whole batches only


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, created = init_from_env("cpu")
    assert not dist.active and dist.is_main and not created
    assert dist.gather(3) == [3] and dist.from_main(lambda: 5) == 5 and dist.all_true(True)


def _overrides(env, data: Path, run_dir: Path, cache: Path) -> list[str]:
    return ["model=local", f"model.generalist=local-dir:{env['generalist']}",
            f"model.expert=local-dir:{env['expert']}", "data=retina", f"data.root={data}",
            "protocol=corruption", "protocol.corruptions=[gaussian_noise]", "protocol.severities=[2]",
            "method=all", "method.methods=[t3,t3_batch,t3_cal]", "limit=18", "batch_size=4",
            f"cache_dir={cache}", "progress=false", "device=cpu", "plots=false", f"hydra.run.dir={run_dir}"]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path, clip_pair, one_data_root):
    root = one_data_root
    env = make_env(tmp_path / "env", clip_pair)
    # one thread per process in both runs: GEMM results can depend on the thread count
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
                 "OMP_NUM_THREADS": "1", **root.env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    single, multi = tmp_path / "single", tmp_path / "multi"
    one = subprocess.run([sys.executable, "-m", "tcube.eval", *_overrides(env, root.path, single, tmp_path / "c1")],
                         cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "tcube.eval"]
    two = subprocess.run(torchrun + _overrides(env, root.path, multi, tmp_path / "c2"), cwd=tmp_path, env=child_env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = _rows(single), _rows(multi)
    # 2 eval sets (clean, gaussian_noise@2) × (generalist, expert, t3, t3_batch, t3_cal); 18 images = 5 batches
    assert len(a) == 10 and all(r["n"] == 18 for r in a)
    assert not any(r["cached_endpoints"] for r in a + b)  # both computed their endpoints (separate caches)
    assert a == b  # same rows, same order, same numbers (per-image `correct` bits, λ, JS, calibration)
    assert (multi / "summary.json").is_file() and (multi / "report.md").is_file()
    # rank 0 alone wrote the endpoint cache: the same files as the single process
    assert sorted(p.name for p in (tmp_path / "c2").rglob("*") if p.is_file()) == \
        sorted(p.name for p in (tmp_path / "c1").rglob("*") if p.is_file())

    again = subprocess.run(torchrun + _overrides(env, root.path, multi, tmp_path / "c2"), cwd=tmp_path, env=child_env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rows(multi) == b  # resumed: every rank skipped the finished cells, nothing appended
