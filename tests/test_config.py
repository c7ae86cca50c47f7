"""The typed configuration: Hydra rejects bad keys and values; a user's own --config-dir groups work."""
from __future__ import annotations

import subprocess
import sys

import pytest
from eval_support import compose
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tcube.harness.config import check_settings, to_settings

BASE = ["model=local", "model.generalist=local-dir:/g", "model.expert=local-dir:/e"]


@pytest.mark.parametrize("override, names", [
    ("batch_size=abc", "abc"), ("precision=fp8", "fp8"), ("tuning_data=test", "test"),
    ("engine.name=turbo", "turbo"), ("bogus_key=1", "bogus_key"), ("data.not_a_key=1", "not_a_key"),
])
def test_hydra_rejects_bad_overrides(override, names):
    with pytest.raises((ValidationError, ConfigCompositionException)) as info:
        to_settings(compose(BASE + [override]))
    assert names in str(info.value)


def test_defaults_come_from_the_schema_for_plain_dicts_too():
    composed = to_settings(compose(BASE + ["data=retina", "protocol=in_domain", "method=t3"]))
    assert composed["engine"]["grid_size"] == 33 and composed["data"]["size"] == 28
    assert composed["tuning_data"] == "expert" and composed["precision"] == "fp32"
    plain = to_settings({"model": {"generalist": "g", "expert": "e"}, "data": {"name": "retinamnist"},
                         "method": {"name": "t3"}, "engine": {"name": "fused"}, "protocol": {"name": "in_domain"}})
    assert plain["batch_size"] == 64 and plain["tuning_data"] == "expert" and plain["engine"]["grid_size"] == 33
    with pytest.raises(ValidationError):
        to_settings({**plain, "precision": "fp8"})
    with pytest.raises(ConfigKeyError):
        to_settings({**plain, "batchsize": 3})


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("limit", 0), ("seed", -1), ("tuning_limit", 0)])
def test_ranges_a_type_cannot_say_are_checked(key, value):
    s = to_settings(compose(BASE + ["data=retina", "protocol=in_domain", "method=t3"]))
    with pytest.raises(ValueError, match=key):
        check_settings({**s, key: value})


def test_a_users_own_config_dir_adds_a_data_group_option(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("name: mine\nmodality: dermoscopy\nclasses: [a, b, c, d, e, f, g]\n")
    out = subprocess.run([sys.executable, "-m", "tcube.eval", "--config-dir", str(tmp_path), *BASE, "data=mine",
                          "--cfg", "job", "--package", "data"], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "name: mine" in out.stdout and "- g" in out.stdout


def test_an_unknown_group_option_lists_the_choices():
    out = subprocess.run([sys.executable, "-m", "tcube.eval", *BASE, "data=nope", "--cfg", "job"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode != 0 and "Could not find 'data/nope'" in out.stderr and "retina" in out.stderr


def test_the_run_dir_names_the_choices_not_their_enum_types(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tcube.eval", *BASE, "data=retina", "protocol=in_domain", "method=t3",
                          "--cfg", "all", "--resolve"], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "retinamnist/in_domain/t3-fused" in out.stdout and "EngineName" not in out.stdout
