"""merge_and_predict: every method, its λ convention, and clear errors for bad input."""
from __future__ import annotations

import math

import pytest
import torch
from common import seeded_images

from tcube import Merger, merge_and_predict, method_names
from tcube.core.coefficients import js_divergence, t3_lambda

CLASSES = ["normal lungs", "pneumonia", "malignant mass"]


@pytest.fixture(scope="module")
def merger(any_pair):
    m = Merger(any_pair.generalist, any_pair.expert, any_pair.tokenizer, CLASSES, text_heads="grid")
    m.tune(seeded_images(6, seed=9), torch.tensor([0, 1, 2, 0, 1, 2]))
    return m


def plain_logits(model, tokenizer, images):
    from tcube.models import zero_shot_head

    head = zero_shot_head(model, tokenizer, CLASSES)
    img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    return model.logit_scale.exp() * img @ head.T


def test_generalist_and_expert_equal_plain_models(any_pair):
    images = seeded_images(5)
    for method, model, lam in (("generalist", any_pair.generalist, 1.0), ("expert", any_pair.expert, 0.0)):
        out = merge_and_predict(any_pair.generalist, any_pair.expert, images, CLASSES, tokenizer=any_pair.tokenizer,
                                method=method)
        assert torch.allclose(out.logits, plain_logits(model, any_pair.tokenizer, images), atol=1e-5)
        assert torch.all(out.lambdas == lam)


def test_t3_follows_the_rule_and_t3_batch_uses_the_mean(merger):
    images = seeded_images(6)
    t3 = merger.predict(images, "t3", gamma=5.0)
    lg, le = merger.endpoint_logits(images)
    js = js_divergence(lg.softmax(-1), le.softmax(-1))
    assert torch.allclose(t3.js, js) and not torch.isnan(t3.js).any()
    assert torch.allclose(t3.lambdas, t3_lambda(js, gamma=5.0))
    tb = merger.predict(images, "t3_batch", gamma=5.0)
    assert torch.allclose(tb.lambdas, t3.lambdas.mean().expand(6))
    assert t3.lambdas.std() > 0  # per-sample λ really vary here


def test_fused_t3_equals_naive_t3(any_pair):
    images = seeded_images(4)
    kw = dict(tokenizer=any_pair.tokenizer, method="t3", gamma=20.0)
    fused = merge_and_predict(any_pair.generalist, any_pair.expert, images, CLASSES, engine="fused", **kw)
    naive = merge_and_predict(any_pair.generalist, any_pair.expert, images, CLASSES, engine="naive", **kw)
    assert (fused.logits - naive.logits).abs().max() <= 1e-4
    assert torch.equal(fused.preds, naive.preds)


def test_wise_ft_alpha_is_weight_on_generalist(clip_pair):
    images = seeded_images(3)
    m = Merger(clip_pair.generalist, clip_pair.expert, clip_pair.tokenizer, CLASSES, engine="naive")
    static = m.predict(images, "wise_ft", alpha=0.8)
    dynamic = m.predict(images, "t3", lambda_min=0.8, lambda_max=0.8)  # constant λ = 0.8 through the engine
    assert torch.allclose(static.logits, dynamic.logits, atol=1e-4)
    assert torch.all(static.lambdas == 0.8)


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_and_is_well_formed(merger, method):
    out = merger.predict(seeded_images(4), method)
    assert out.logits.shape == (4, 3) and out.probs.shape == (4, 3) and out.preds.shape == (4,)
    assert torch.allclose(out.probs.sum(-1), torch.ones(4), atol=1e-5)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.js).all()
    if method not in ("ties", "dare"):
        assert torch.isfinite(out.lambdas).all() and ((out.lambdas >= 0) & (out.lambdas <= 1)).all()


def test_calibrated_methods_need_validation_data(clip_pair):
    with pytest.raises(ValueError, match="validation"):
        merge_and_predict(clip_pair.generalist, clip_pair.expert, seeded_images(2), CLASSES,
                          tokenizer=clip_pair.tokenizer, method="t3_cal")


def test_tuning_chooses_from_the_grid(clip_pair):
    out = merge_and_predict(clip_pair.generalist, clip_pair.expert, seeded_images(2), CLASSES,
                            tokenizer=clip_pair.tokenizer, method="wise_ft_cal",
                            validation=(seeded_images(6, seed=3), torch.tensor([0, 1, 2, 2, 1, 0])))
    assert 0.0 <= out.params["alpha"] <= 1.0 and math.isclose(out.lambdas[0].item(), out.params["alpha"], abs_tol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(lambda_min=0.9, lambda_max=0.1), "lambda_min"),
    (dict(method="magic"), "unknown method"),
    (dict(engine="turbo"), "unknown engine"),
    (dict(method="wise_ft", alpha=1.5), "alpha"),
    (dict(bogus=1), "unknown method parameters"),
    (dict(method="wise_ft", gamma=2.0), r"'wise_ft'; it takes alpha=0.5"),
    (dict(method="ties", density="high"), "density must be float"),
])
def test_bad_arguments_raise_clear_errors(clip_pair, bad, match):
    with pytest.raises(ValueError, match=match):
        merge_and_predict(clip_pair.generalist, clip_pair.expert, seeded_images(2), CLASSES,
                          tokenizer=clip_pair.tokenizer, **bad)


def test_nan_images_raise(clip_pair):
    images = seeded_images(2)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        merge_and_predict(clip_pair.generalist, clip_pair.expert, images, CLASSES, tokenizer=clip_pair.tokenizer)


def test_wrong_image_shape_raises(clip_pair):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        merge_and_predict(clip_pair.generalist, clip_pair.expert, torch.zeros(2, 32, 32), CLASSES,
                          tokenizer=clip_pair.tokenizer)


def test_temperature_scaled_js(clip_pair):
    m = Merger(clip_pair.generalist, clip_pair.expert, clip_pair.tokenizer, CLASSES)
    with pytest.raises(ValueError, match="Merger.tune"):
        m.predict(seeded_images(2), "t3", temperature_scaling=True)
    m.tune(seeded_images(8, seed=4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    t_gen, t_exp = m.temperatures
    out = m.predict(seeded_images(3), "t3", temperature_scaling=True)
    lg, le = m.endpoint_logits(seeded_images(3))
    assert torch.allclose(out.js, js_divergence((lg / t_gen).softmax(-1), (le / t_exp).softmax(-1)), atol=1e-6)
    assert {"ece_generalist_before", "ece_expert_after"} <= set(m.temperature_report)
