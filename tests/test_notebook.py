"""notebooks/analysis.ipynb runs end to end (papermill) on a small real run and draws its figures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from eval_support import compose, make_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, clip_pair, one_data_root):
    """Tiny models on one_data_root's retina file: in_domain, base_to_novel (modality), corruption (2 × 2 severities)."""
    import torch

    from tcube.harness.evaluate import run

    tmp = tmp_path_factory.mktemp("nb")
    env = make_env(tmp / "env", clip_pair)
    overrides = ["model=local", f"model.generalist=local-dir:{env['generalist']}",
                 f"model.expert=local-dir:{env['expert']}", "data=retina", f"data.root={one_data_root.path}", "protocol=all",
                 "protocol.split=modality", "protocol.datasets=[retinamnist,ph2]",
                 "protocol.corruptions=[gaussian_noise,pixelate]", "protocol.severities=[1,3]",
                 "method=all", "method.methods=[t3,wise_ft]", "limit=8", "batch_size=8",
                 f"cache_dir={tmp / 'cache'}", "progress=false", "plots=false", "device=cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(compose(overrides), tmp / "run")
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def test_analysis_notebook_executes(small_run, tmp_path, monkeypatch):
    import nbformat
    import papermill  # a test dependency (pyproject [test]): missing means a broken setup, not a skip

    # the kernel is a fresh process: it must import this checkout's tcube, headless and offline
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"run_dirs": [str(small_run)]},
                               cwd=str(NOTEBOOK.parent), kernel_name="python3", progress_bar=False,
                               execution_timeout=300)  # raises PapermillExecutionError if a cell fails
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # accuracy vs severity, λ distribution, λ vs JS and the trade-off all have data in this run
    assert len(images) == 4, [o.get("text", "") for o in outputs if o.get("output_type") == "stream"]
    text = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "in_domain" in text and "base_to_novel" in text and "t3" in text  # the headline pivot table


def test_notebook_has_no_absolute_paths():
    text = NOTEBOOK.read_text()
    assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text
