"""A new dataset is one data config, for the zoo too: a 7-class dataset of a modality tcube has no entry for,
described by a YAML file in the user's own config folder, gets a generalist that saw it, an expert and a
base-class expert trained on first use, and rows in in_domain and base_to_novel (smoke zoo, synthetic data)."""
from __future__ import annotations

import json
import os

import pytest
from synthetic import CHECK_MD5_OFF, write_synthetic, write_synthetic_dataset

from tcube.harness.evaluate import run
from tcube.zoo import Zoo, read_manifest, zoo_dir

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = "capsulesynth"
CLASSES = [f"finding {i}" for i in range(7)]
DATA_CONFIG = f"""\
name: {NEW}
modality: capsule_endoscopy        # not a registered modality: templates say how to prompt it
classes: [{", ".join(CLASSES)}]
templates: ["a capsule endoscopy frame showing {{}}.", "a wireless capsule endoscopy image of {{}}."]
"""


def compose(overrides: list[str], config_dir):
    """The run's config as `python -m tcube.eval --config-dir DIR` would compose it (DIR adds data/NAME.yaml)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tcube.harness.evaluate import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[f"hydra.searchpath=[file://{config_dir}]"] + overrides)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """A data root with BreastMNIST (synthetic) and the new 7-class dataset; the user's config folder; a zoo home."""
    base = tmp_path_factory.mktemp("new_dataset")
    data = base / "data"
    write_synthetic(data, "breastmnist")
    write_synthetic_dataset(data, NEW, 7, rgb=True, sizes=(56, 28, 28))
    (base / "conf" / "data").mkdir(parents=True)
    (base / "conf" / "data" / f"{NEW}.yaml").write_text(DATA_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**CHECK_MD5_OFF, "TCUBE_HOME": str(base / "home")}.items():
            mp.setenv(key, value)
        yield base


def _overrides(base, *extra: str) -> list[str]:
    return ["model=zoo", "model.zoo_profile=smoke", f"data={NEW}", f"data.root={base / 'data'}", "protocol=all",
            "protocol.protocols=[in_domain,base_to_novel]", "protocol.datasets=[breastmnist]", "method=t3",
            "limit=8", "batch_size=8", f"cache_dir={base / 'cache'}", "progress=false", "plots=false", "device=cpu",
            *extra]


@pytest.fixture(scope="module")
def new_run(new_data):
    run_dir = new_data / "run"
    summary = run(compose(_overrides(new_data), new_data / "conf"), run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return summary, rows, run_dir


def test_the_generalist_saw_the_new_dataset_and_its_manifest_says_so(new_data, new_run):
    with pytest.raises(ValueError, match="describe it in a data config"):   # a bare name is not enough
        Zoo("smoke", 0, new_data / "data", [NEW])
    folders = list((new_data / "home" / "zoo" / "smoke").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("seed0-")        # keyed by its dataset set
    gen = read_manifest(folders[0] / "generalist")
    assert list(gen["trained_on"]) == ["breastmnist", NEW]                   # built-in present, then configured
    seen = gen["trained_on"][NEW]
    assert seen["class_names"] == CLASSES and len(seen["md5"]) == 32
    assert seen["fraction"] == 0.1 and seen["images"] == 7  # a 10% share: ceil(0.1 · 8) = 1 image of each class
    assert seen["templates"][0] == "a capsule endoscopy frame showing {}."
    assert gen["datasets_key"] == folders[0].name.removeprefix("seed0-")
    assert [d["modality"] for d in gen["datasets"]] == ["breast_ultrasound", "capsule_endoscopy"]
    assert {f"{NEW}", f"{NEW}:base", f"{NEW}:novel", "breastmnist"} <= set(gen["val"])


def test_experts_for_the_new_dataset_were_trained_on_first_use(new_data, new_run):
    folder = next((new_data / "home" / "zoo" / "smoke").iterdir())
    gen, exp, base = (read_manifest(folder / n) for n in ("generalist", f"expert-{NEW}", f"expert-{NEW}-base"))
    assert list(exp["trained_on"]) == [NEW] and exp["trained_on"][NEW]["classes"] == list(range(7))
    assert exp["trained_on"][NEW]["images"] == 56 and exp["trained_on"][NEW]["fraction"] == 1.0  # experts: all
    assert base["trained_on"][NEW]["classes"] == [0, 1, 2, 3]                 # base = first ⌈7/2⌉ classes
    assert exp["parent"]["weights_sha256"] == base["parent"]["weights_sha256"] == gen["weights_sha256"]


def test_rows_exist_for_the_new_dataset(new_data, new_run):
    summary, rows, run_dir = new_run
    cells = {(r["protocol"], r["split"], r["role"], r["dataset"]) for r in rows}
    assert cells == {("in_domain", None, None, NEW), ("base_to_novel", "modality", "base", NEW),
                     ("base_to_novel", "modality", "novel", "breastmnist"), ("base_to_novel", "class", "base", NEW),
                     ("base_to_novel", "class", "novel", NEW)}
    assert {r["method"] for r in rows} == {"generalist", "expert", "t3"} and all(r["n"] > 0 for r in rows)
    assert {r["modality"] for r in rows if r["dataset"] == NEW} == {"capsule_endoscopy"}
    assert len({r["zoo_datasets"] for r in rows}) == 1                        # another set: other cell keys
    assert f"The generalist was trained on breastmnist, {NEW} (zoo manifest)" in (run_dir / "report.md").read_text()


def test_the_cli_reaches_the_same_zoo_with_the_data_config(new_data, new_run):
    from tcube.zoo.__main__ import main

    folder = next((new_data / "home" / "zoo" / "smoke").iterdir())
    stamp = (folder / "generalist" / "manifest.json").stat().st_mtime_ns
    assert main(["--profile", "smoke", "--data-root", str(new_data / "data"), "--data-config",
                 str(new_data / "conf" / "data" / f"{NEW}.yaml"), "--only", f"expert-{NEW}-base", "--no-progress"]) == 0
    assert (folder / "generalist" / "manifest.json").stat().st_mtime_ns == stamp   # nothing retrained
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_an_unknown_expert_names_the_data_config_that_is_missing(new_data, tmp_path):
    cfg = compose(_overrides(new_data, "model.expert=zoo:expert-otherdata"), new_data / "conf")
    with pytest.raises(ValueError, match=r"model.expert=zoo:expert-otherdata: unknown zoo model.*"
                                         r"valid names: .*expert-capsulesynth-base.*data config.*data=NAME"):
        run(cfg, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_the_built_in_four_keep_their_zoo_and_a_stale_generalist_is_refused(tmp_path, monkeypatch):
    """The default set keeps the unkeyed folder (existing zoos and cell keys stay valid); a generalist stored
    there that saw other datasets is refused before any cell, with the command that retrains it."""
    for name in ("retinamnist", "pneumoniamnist", "breastmnist", "ph2"):
        write_synthetic(tmp_path / "data", name)
    monkeypatch.setenv("TCUBE_HOME", str(tmp_path / "home"))
    for key, value in CHECK_MD5_OFF.items():
        monkeypatch.setenv(key, value)
    assert Zoo("smoke", 0, tmp_path / "data").folder == zoo_dir("smoke", 0) == tmp_path / "home/zoo/smoke/seed0"
    assert Zoo("smoke", 0, tmp_path / "data", ["ph2", "breast"]).key is None   # configured built-ins: same set
    from tcube.harness.config import to_settings
    from tcube.harness.evaluate import build_plan

    base = ["model=zoo", "model.zoo_profile=smoke", "data=breast", f"data.root={tmp_path / 'data'}",
            "protocol=in_domain", "method=t3", "progress=false", "plots=false", "device=cpu"]
    # other prompts for a built-in dataset change what is evaluated, not the zoo it is evaluated with
    plan = build_plan(to_settings(compose(base + ["data.templates=['an ultrasound of {}.']"], tmp_path)))
    assert plan.parts[0].zoo.key is None and not any("zoo_datasets" in c.identity for c in plan.cells)
    stale = zoo_dir("smoke", 0) / "generalist"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps({"trained_on": {"breastmnist": {}}}))
    with pytest.raises(ValueError, match=r"trained on \['breastmnist'\].*--data-root .*--only generalist --force"):
        run(compose(base, tmp_path), tmp_path / "run")
    assert os.listdir(zoo_dir("smoke", 0)) == ["generalist"]                  # nothing was trained
