"""K experts through the library call: every multi-expert method against a slow, obvious reference."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from common import perturbed, seeded_images

from tcube import Kind, load_pair, merge_and_predict, method_names, register_method
from tcube.core.merging import combine
from tcube.methods import registry
from tcube.methods.multi_merger import MultiMerger
from tcube.models import save_local_dir
from tcube.models.heads import zero_shot_head

pytestmark = pytest.mark.usefixtures("one_thread")
TASKS = [["normal lungs", "pneumonia"], ["benign mass", "malignant mass", "lesion"], ["melanoma", "nevus"]]


@pytest.fixture(scope="module")
def trio(any_pair):
    """A generalist and three experts that really differ from it and from each other."""
    gen = any_pair.generalist
    return gen, [perturbed(gen, seed=10 + k, scale=0.2) for k in range(3)], any_pair.tokenizer


def _union_logits(model, tokenizer, images):
    """The obvious way: each task's head with its own templates, concatenated; cosine logits."""
    head = torch.cat([zero_shot_head(model, tokenizer, t) for t in TASKS])
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    return model.logit_scale.exp() * img @ head.T


def _reference(gen, experts, tokenizer, images, weights):
    """θ(x_i) = θ_gen + Σ_k w_ik τ_k built for each image, run on it alone."""
    rows = []
    for x, w in zip(images, weights):
        model = copy.deepcopy(gen)
        model.load_state_dict(combine(gen.state_dict(), [e.state_dict() for e in experts], w.tolist()))
        rows.append(_union_logits(model.eval(), tokenizer, x.unsqueeze(0)))
    return torch.cat(rows)


@pytest.mark.parametrize("method, params", [("multi_t3", {}), ("multi_t3", {"hard": False}), ("multi_dawin", {}),
                                            ("router", {}), ("multi_t3_batch", {}), ("router", {"hard": False})])
@torch.no_grad()
def test_per_sample_methods_equal_the_naive_reference(trio, method, params):
    gen, experts, tok = trio
    images = seeded_images(6, seed=3)
    out = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method=method, **params)
    assert out.weights.shape == (6, 3) and torch.isfinite(out.weights).all()
    assert (out.logits - _reference(gen, experts, tok, images, out.weights)).abs().max() <= 1e-4
    torch.testing.assert_close(out.lambdas, 1 - out.weights.sum(-1))
    if method.endswith("_batch"):
        assert torch.equal(out.weights, out.weights[:1].expand(6, -1))
    if method in ("router", "multi_t3") and not params:  # hard routing: one expert per image
        assert ((out.weights != 0).sum(-1) == 1).all()
    if method == "router" and not params:  # at 1 − α
        assert ((out.weights > 0).sum(-1) == 1).all() and torch.allclose(out.weights.sum(-1), torch.tensor(0.5))
        assert torch.isnan(out.js).all()  # no expert ran


@torch.no_grad()
def test_references_and_static_merges(trio):
    gen, experts, tok = trio
    images = seeded_images(5, seed=4)
    g = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="multi_generalist")
    torch.testing.assert_close(g.logits, _union_logits(gen, tok, images), atol=1e-4, rtol=0)
    e1 = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="multi_expert", index=1)
    torch.testing.assert_close(e1.logits, _union_logits(experts[1], tok, images), atol=1e-4, rtol=0)
    avg = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="multi_average")
    uniform = torch.full((5, 3), 0.25)  # θ_gen + Σ τ_k / (K + 1)
    assert (avg.logits - _reference(gen, experts, tok, images, uniform)).abs().max() <= 1e-4


@torch.no_grad()
def test_oracle_reads_the_domain_and_only_it_does(trio, monkeypatch):
    gen, experts, tok = trio
    images, domain = seeded_images(4, seed=5), torch.tensor([2, 0, 1, 0])
    out = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="oracle_route", domain=domain)
    torch.testing.assert_close(out.weights, 0.5 * F.one_hot(domain, 3).float())
    with pytest.raises(ValueError, match="domain="):
        merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="oracle_route")
    seen = []
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test's method leaves with it

    @register_method("test_records_domain", Kind.MULTI_PER_SAMPLE, replace=True)
    def records(view, p):
        seen.append(view.domain)
        return torch.zeros(view.logits_gen.shape[0], view.num_experts)

    MultiMerger(gen, experts, tok, TASKS).predict(images, "test_records_domain", domain=domain)
    assert seen == [None]  # a method that does not declare needs_domain never sees it


@torch.no_grad()
def test_tuned_scale_is_chosen_on_validation(trio):
    gen, experts, tok = trio
    images, labels = seeded_images(8, seed=6), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    with pytest.raises(ValueError, match="validation="):
        merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="multi_task_arithmetic_cal")
    out = merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="multi_task_arithmetic_cal",
                            validation=(images, labels))
    assert set(out.params) == {"scale"}


def test_bad_calls_name_the_fix(trio):
    gen, experts, tok = trio
    images = seeded_images(2)
    with pytest.raises(ValueError, match="one list of class names per expert"):
        merge_and_predict(gen, experts, images, ["a", "b"], tokenizer=tok)
    with pytest.raises(ValueError, match="merges a generalist with one expert"):
        merge_and_predict(gen, experts, images, TASKS, tokenizer=tok, method="wise_ft")
    with pytest.raises(ValueError, match="K experts"):
        merge_and_predict(gen, experts[0], images, ["a", "b"], tokenizer=tok, method="multi_t3")
    with pytest.raises(ValueError, match="3 experts but 2 tasks"):
        MultiMerger(gen, experts, tok, TASKS[:2])
    assert "multi_t3" in method_names(multi=True) and "multi_t3" not in method_names()


def test_load_pair_takes_a_list_of_experts(tmp_path, clip_pair):
    folders = [save_local_dir(m, tmp_path / name, model_cfg=clip_pair.model_cfg, tokenizer=clip_pair.tokenizer)
               for name, m in (("g", clip_pair.generalist), ("e0", clip_pair.expert),
                               ("e1", perturbed(clip_pair.generalist, seed=3)))]
    pair = load_pair(f"local-dir:{folders[0]}", [f"local-dir:{f}" for f in folders[1:]])
    assert pair.expert is None and len(pair.experts) == 2 and len(pair.sources) == 3
    for loaded, original in zip(pair.experts, (clip_pair.expert, None)):
        if original is not None:
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    out = merge_and_predict(pair.generalist, pair.experts, seeded_images(3), TASKS[:2], tokenizer=pair.tokenizer)
    assert out.weights.shape == (3, 2)
