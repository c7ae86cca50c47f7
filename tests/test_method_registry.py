"""The method registry: user methods from their own module (library and harness), the Hydra method configs
checked against the params dataclasses, and clear errors for wrong names and values."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import user_methods  # noqa: F401  (registers linear_mix and js_step, as a user's module would)
import yaml
from common import seeded_images
from eval_support import compose, make_env, overrides

from tcube import Kind, Merger, merge_and_predict
from tcube.harness.evaluate import CONF_DIR, method_variants, run
from tcube.methods import Method, get_method, method_names, methods, register

CLASSES = ["normal lungs", "pneumonia", "malignant mass"]
BUILTIN = [m for m in methods() if m.fn is None or m.fn.__module__ == "tcube.methods.builtin"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_user_static_merge_runs_through_merge_and_predict(clip_pair):
    images, p = seeded_images(3), clip_pair
    out = merge_and_predict(p.generalist, p.expert, images, CLASSES, tokenizer=p.tokenizer, method="linear_mix",
                            weight=0.8)
    ref = merge_and_predict(p.generalist, p.expert, images, CLASSES, tokenizer=p.tokenizer, method="wise_ft",
                            alpha=0.8)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5) and torch.all(out.lambdas == 0.8)
    assert out.params == {"weight": 0.8}


def test_user_lambda_rule_runs_per_sample(clip_pair):
    p, images = clip_pair, seeded_images(4)
    m = Merger(p.generalist, p.expert, p.tokenizer, CLASSES, engine="naive")
    out = m.predict(images, "js_step", threshold=-1.0)  # every sample "disagrees": λ = high = 0.8
    ref = m.predict(images, "t3", lambda_min=0.8, lambda_max=0.8)
    assert torch.allclose(out.logits, ref.logits, atol=1e-4) and torch.all(out.lambdas == 0.8)
    split = m.predict(images, "js_step", threshold=float(out.js.median()))
    assert {round(v, 6) for v in split.lambdas.tolist()} == {0.2, 0.8}  # one λ per sample


def test_user_methods_run_in_the_harness(tmp_path, clip_pair):
    env = make_env(tmp_path, clip_pair)
    cfg = compose(overrides(env, methods=("linear_mix", "js_step"),
                            extra=["plugins=[user_methods]", "+method.params.linear_mix.weight=0.6", "limit=4"]))
    run(cfg, tmp_path / "run")
    rows = {r["method"]: r for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())}
    assert set(rows) == {"generalist", "expert", "linear_mix", "js_step"}
    assert rows["linear_mix"]["method_kind"] == "static" and rows["linear_mix"]["lambda_mean"] == pytest.approx(0.6)
    assert rows["js_step"]["method_kind"] == "per_sample" and rows["js_step"]["lambda_per_image"] is not None
    assert rows["generalist"]["method_kind"] == "endpoint"


def _yaml(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "method" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("method", BUILTIN, ids=lambda m: m.name)
def test_method_configs_match_the_params_dataclass(method):
    """conf/method/<name>.yaml and all.yaml's params.<name> have the dataclass's keys and defaults (seed: the run's)."""
    defaults = {**method.defaults(), **({"seed": "${seed}"} if "seed" in method.result_keys else {})}
    own = _yaml(method.name)
    assert own.pop("name") == method.name and own == defaults
    assert (_yaml("all")["params"].get(method.name) or {}) == defaults


def test_shared_keys_of_all_are_parameters_and_default_to_each_methods_own():
    shared = {k: v for k, v in _yaml("all").items() if k not in ("name", "methods", "params")}
    assert all(v is None and any(k in m.result_keys for m in BUILTIN) for k, v in shared.items())


def test_every_method_config_is_a_registered_method():
    files = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")} - {"all"}
    assert files == {m.name for m in BUILTIN}


def test_one_method_override_keeps_its_namespace():
    """method=ties method.scale=… is TIES's scale; in `all`, params.<method> sets one method, a shared key many."""
    cfg = compose(["method=ties", "method.scale=0.8"])
    (ties,) = [v for v in method_variants(dict(cfg.method), []) if v.method == "ties"]
    assert ties.kwargs == {"density": 0.2, "scale": 0.8}
    from omegaconf import OmegaConf

    cfg = compose(["method=all", "method.params.ties.scale=0.7", "method.gamma=2.0"])
    by = {v.method: v.kwargs for v in method_variants(OmegaConf.to_container(cfg.method, resolve=True), [])}
    assert by["ties"]["scale"] == 0.7 and by["dare"]["scale"] == 1.0 and by["task_arithmetic"]["scale"] == 0.5
    assert by["t3"]["gamma"] == by["t3_batch"]["gamma"] == 2.0 and by["t3_cal"] == {"temperature_scaling": False}


@pytest.mark.parametrize("method, match", [
    ({"name": "ties", "merge_scale": 0.8, "bogus": 1}, r"unknown method parameters \['bogus'\] for method 'ties'; "
                                                       r"it takes density=0.2, scale=1.0"),
    ({"name": "ties", "density": "high"}, "method 'ties': density must be float"),
    ({"name": "t3", "gamma": float("nan")}, "gamma must be finite"),
    ({"name": "t3", "lambda_min": 0.9, "lambda_max": 0.1}, r"lambda_min \(0.9\) must not exceed"),
    ({"name": "all", "params": {"tiez": {"scale": 1.0}}}, "unknown method 'tiez'"),
    ({"name": "all", "bogus": 1}, r"method parameters \['bogus'\] are unknown"),
])
def test_wrong_keys_and_values_name_the_parameters(method, match):
    with pytest.raises(ValueError, match=match):
        method_variants(method, [])


def test_old_parameter_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="now 'scale'"):
        assert get_method("dare").make_params(merge_scale=0.8).scale == 0.8


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register(Method("t3", Kind.STATIC, fn=lambda g, e, p: g))
    with pytest.raises(ValueError, match="needs a grid"):
        register(Method("t3_cal2", Kind.TUNED, base="t3"))

    @dataclasses.dataclass  # not frozen: merges are cached on the params
    class Loose:
        x: float = 1.0

    with pytest.raises(ValueError, match="frozen"):
        register(Method("loose", Kind.STATIC, fn=lambda g, e, p: g, params=Loose))
    assert "loose" not in method_names()


def test_readme_example_is_the_tested_user_module():
    """The README's "Adding a method" block is tests/user_methods.py (tested above), so it works as printed."""
    from pathlib import Path

    readme = (CONF_DIR.parent / "README.md").read_text()
    block = readme.split("### Adding a method", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert block.strip() in (Path(__file__).parent / "user_methods.py").read_text()
