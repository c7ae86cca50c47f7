"""Session fixtures: tiny real generalist/expert pairs of both supported families; data roots (tests/synthetic.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

from common import TINY_CLIP_CFG, perturbed, tiny_biomedclip_cfg, write_tiny_bert  # noqa: E402
from synthetic import data_root, one_data_root, synthetic_root  # noqa: E402,F401  (fixtures: synthetic data, + real when present)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models gain
    nothing from 2, and on a shared 2-core machine they lose ~100× to contention. Restored afterwards, since
    the zoo's determinism check compares against weights trained at the default thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Pair:
    def __init__(self, generalist, expert, tokenizer, model_cfg, family):
        self.generalist, self.expert, self.tokenizer = generalist, expert, tokenizer
        self.model_cfg, self.family = model_cfg, family


@pytest.fixture(scope="session")
def clip_pair():
    from tcube.models import build_model, tokenizer_for

    torch.manual_seed(0)
    gen = build_model(TINY_CLIP_CFG)
    return Pair(gen, perturbed(gen, seed=1), tokenizer_for(TINY_CLIP_CFG), TINY_CLIP_CFG, "open_clip")


@pytest.fixture(scope="session")
def biomed_pair(tmp_path_factory):
    from tcube.models import build_model, tokenizer_for

    bert = write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
    cfg = tiny_biomedclip_cfg(bert)
    torch.manual_seed(0)
    gen = build_model(cfg)
    return Pair(gen, perturbed(gen, seed=2), tokenizer_for(cfg, bert), cfg, "biomedclip")


@pytest.fixture(scope="session", params=["open_clip", "biomedclip"])
def any_pair(request):
    return request.getfixturevalue("clip_pair" if request.param == "open_clip" else "biomed_pair")
