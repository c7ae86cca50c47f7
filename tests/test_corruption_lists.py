"""A data config names its corruption list: borrowed from a MedMNIST-C dataset, or its own; errors name the fix."""
from __future__ import annotations

import pytest
from eval_support import compose, write_npz

from tcube.data.corruptions import corruptions_for, severity_param
from tcube.data.registry import dataset_spec_from_config

THERMAL = ["data.name=thermal", "data.modality=thermal", "data.classes=[cold,warm]", "data.descriptions=null",
           "data.templates=['a thermal image of {}.']"]


@pytest.fixture()
def root(tmp_path):
    write_npz(tmp_path, "thermal", 2, rgb=False)  # a modality MedMNIST-C has no list for
    return tmp_path


def _plan(root, *extra):
    from tcube.harness.evaluate import build_plan, to_settings

    return build_plan(to_settings(compose(["model=local", "model.generalist=g", "model.expert=e", "data=ph2",
                                           *THERMAL, f"data.root={root}", "protocol=corruption",
                                           "method=wise_ft", *extra])))


def _views(plan) -> set:
    return {(c.eval_set.corruption, c.eval_set.severity) for c in plan.cells}


def test_a_new_modality_without_a_list_gets_the_fix_named(root):
    with pytest.raises(ValueError, match=r"modality 'thermal'.*no MedMNIST-C corruption list") as err:
        _plan(root)
    assert "corruptions: pneumoniamnist" in str(err.value) and "data.corruptions=pneumoniamnist" in str(err.value)


def test_a_data_config_borrows_a_medmnistc_list(root):
    plan = _plan(root, "data.corruptions=pneumoniamnist")
    assert {c for c, _ in _views(plan) if c} == set(corruptions_for("pneumoniamnist"))
    noisy = next(c for c in plan.cells if c.eval_set.corruption == "gaussian_noise" and c.eval_set.severity == 5)
    assert noisy.identity["corruption_param"] == 0.08  # pneumoniamnist's, not the default list's


def test_a_data_config_gives_its_own_list(root):
    plan = _plan(root, "data.corruptions={gaussian_noise:[0.01,0.02,0.03,0.04,0.05],pixelate:[0.9,0.8,0.7,0.6,0.5]}",
                 "protocol.severities=[2]")
    assert _views(plan) == {(None, 0), ("gaussian_noise", 2), ("pixelate", 2)}
    assert {c.identity.get("corruption_param") for c in plan.cells} == {None, 0.02, 0.8}


@pytest.mark.parametrize("value,match", [
    ("nosuchmnist", r"data.corruptions='nosuchmnist' is not a MedMNIST-C dataset.*corruptions: pneumoniamnist"),
    ("{gaussian_noise:[0.1,0.2]}", r"data.corruptions.gaussian_noise needs 5 severity parameters"),
    ("{fog:[1,2,3,4,5]}", r"unknown corruption 'fog'"),
])
def test_a_bad_list_is_refused_with_the_fix(root, value, match):
    with pytest.raises(ValueError, match=match):
        _plan(root, f"data.corruptions={value}")


def test_a_registered_dataset_may_borrow_another_list():
    spec = dataset_spec_from_config("pneumoniamnist", "chest_xray", ["normal", "pneumonia"],
                                    corruptions="chestmnist")
    assert corruptions_for(spec) == corruptions_for("chestmnist")
    assert severity_param("gaussian_noise", 5, spec) == 0.26  # chestmnist's, not pneumoniamnist's 0.08
