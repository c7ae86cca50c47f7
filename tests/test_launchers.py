"""A Hydra sweep through a parallel launcher: protocols × modalities × γ, one results.jsonl per job.

joblib (loky worker processes, reused across jobs) is the local launcher tested here; submitit_local
and submitit_slurm take the same command line (README, "Sweeps on a workstation or a cluster").
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_support import make_env

from tcube.reporting.analysis import load_results

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS, DATASETS, GAMMAS = ("in_domain", "corruption"), {"retina": "retinamnist", "ph2": "ph2"}, (0.25, 1.0)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, clip_pair, one_data_root):
    tmp = tmp_path_factory.mktemp("sweep")
    env = make_env(tmp / "env", clip_pair)
    sweep_dir = tmp / "multirun"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
            "model=local", f"model.generalist=local-dir:{env['generalist']}", f"model.expert=local-dir:{env['expert']}",
            "protocol=" + ",".join(PROTOCOLS), "++protocol.corruptions=[gaussian_noise]", "++protocol.severities=[1]",
            "data=" + ",".join(DATASETS), "method=t3", "method.gamma=" + ",".join(map(str, GAMMAS)),
            "limit=8", "batch_size=8", f"cache_dir={tmp / 'cache'}", "progress=false", "plots=false", "device=cpu"]
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
                 "OMP_NUM_THREADS": "1", "TCUBE_DATA_DIR": str(one_data_root.path), **one_data_root.env,
                 "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tcube.eval", *args], cwd=tmp, env=child_env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def _jobs(sweep_dir: Path) -> dict[tuple, Path]:
    """(protocol, data option, γ) -> the job's folder, read from Hydra's own record of its overrides."""
    jobs = {}
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        o = dict(item.split("=", 1) for item in yaml.safe_load(overrides_file.read_text()))
        jobs[(o["protocol"], o["data"], float(o["method.gamma"]))] = overrides_file.parents[1]
    return jobs


def test_each_job_writes_its_own_results(sweep):
    jobs = _jobs(sweep)
    assert set(jobs) == set(itertools.product(PROTOCOLS, DATASETS, GAMMAS))
    for (protocol, data, gamma), job in jobs.items():
        rows = [json.loads(line) for line in (job / "results.jsonl").read_text().splitlines()]
        # references + t3, on the clean set (+ one corruption at severity 1 under protocol=corruption)
        assert len(rows) == (6 if protocol == "corruption" else 3)
        assert {r["protocol"] for r in rows} == {protocol}
        assert {r["dataset"] for r in rows} == {DATASETS[data]}
        t3 = [r for r in rows if r["method"] == "t3"]
        assert all(r["params"]["gamma"] == gamma and r["n"] == 8 for r in t3)
        assert (job / "summary.json").is_file() and (job / "report.md").is_file()

    df = load_results(sweep)  # the sweep folder: every job below it
    assert df["run_dir"].nunique() == len(jobs) == 8
    t3 = df[df["method"] == "t3"]
    assert t3.groupby(["protocol", "dataset", "param_gamma"]).size().to_dict() == {
        (p, DATASETS[d], g): (2 if p == "corruption" else 1) for p, d, g in jobs}


# -- merged report of a sweep ---------------------------------------------------------------------------
def test_report_cli_merges_the_sweep(sweep, tmp_path):
    """`python -m tcube.report RUN_DIR [RUN_DIR ...] [--out DIR]` merges the sweep's jobs."""
    from tcube.report import main

    out = tmp_path / "merged"
    assert main([str(sweep), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for protocol, data, gamma in _jobs(sweep):
        for setting in (protocol, DATASETS[data], f"{gamma:g}"):
            assert setting in report, f"merged report does not mention {setting}"
