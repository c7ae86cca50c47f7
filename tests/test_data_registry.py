"""Dataset/modality registry: MedMNIST facts read from INFO, aliases, config-described datasets."""

from __future__ import annotations

import dataclasses

import medmnist
import pytest

from tcube.data.registry import (
    ALIASES,
    MEDMNIST_2D,
    MODALITIES,
    DatasetSpec,
    Modality,
    dataset_spec_from_config,
    get_dataset_spec,
    known_datasets,
    prompts_for,
)

TWELVE = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
          "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")


def test_all_twelve_2d_medmnist_datasets_and_ph2_are_known():
    assert set(MEDMNIST_2D) == set(TWELVE)
    assert set(known_datasets()) == set(TWELVE) | {"ph2"}


@pytest.mark.parametrize("flag", TWELVE)
def test_medmnist_specs_come_from_info(flag):
    spec = get_dataset_spec(flag)
    info = medmnist.INFO[flag]
    assert spec.classes == tuple(info["label"][str(i)] for i in range(len(info["label"])))
    assert spec.task == info["task"]
    assert spec.source == "medmnist"
    assert spec.md5[28] == info["MD5"] and spec.md5[224] == info["MD5_224"]
    assert dict(spec.n_samples) == info["n_samples"]
    assert len(spec.descriptions) == spec.num_classes
    assert all(d and d.strip() == d for d in spec.descriptions)
    assert spec.modality.name in MODALITIES


def test_classes_are_read_at_lookup_time_not_copied(monkeypatch):
    labels = dict(medmnist.INFO["breastmnist"]["label"])
    monkeypatch.setitem(medmnist.INFO["breastmnist"], "label", {"0": "bad", "1": "good"})
    assert get_dataset_spec("breastmnist").classes == ("bad", "good")
    monkeypatch.setitem(medmnist.INFO["breastmnist"], "label", labels)
    assert get_dataset_spec("breastmnist").classes == ("malignant", "normal, benign")


def test_clinical_descriptions():
    assert get_dataset_spec("pneumoniamnist").descriptions == ("normal lungs with no consolidation", "pneumonia")
    retina = get_dataset_spec("retinamnist")
    assert retina.classes == ("0", "1", "2", "3", "4")
    assert retina.descriptions[0] == "no diabetic retinopathy"
    assert retina.descriptions[1] == "mild non-proliferative diabetic retinopathy"
    assert retina.descriptions[4] == "proliferative diabetic retinopathy"
    assert "malignant" in get_dataset_spec("breastmnist").descriptions[0]


def test_modalities_of_the_four_datasets_here():
    assert get_dataset_spec("retinamnist").modality.name == "fundus"
    assert get_dataset_spec("pneumoniamnist").modality.name == "chest_xray"
    assert get_dataset_spec("breastmnist").modality.name == "breast_ultrasound"
    assert get_dataset_spec("ph2").modality.name == "dermoscopy"
    assert set(MODALITIES) == {"fundus", "chest_xray", "breast_ultrasound", "dermoscopy", "pathology", "oct",
                               "blood", "kidney_cortex", "abdominal_ct"}
    for m in MODALITIES.values():
        assert m.phrase and len(m.templates) >= 2
        assert all(t.count("{}") == 1 for t in m.templates)


def test_ph2_is_custom_with_provenance_classes():
    spec = get_dataset_spec("ph2")
    assert spec.classes == ("common nevus", "atypical nevus", "melanoma")
    assert spec.num_classes == 3 and spec.source == "custom" and spec.task == "multi-class"
    assert dict(spec.n_samples) == {"train": 140, "val": 20, "test": 40}


@pytest.mark.parametrize("alias,name", [("retina", "retinamnist"), ("pneumonia", "pneumoniamnist"),
                                        ("breast", "breastmnist"), ("derm", "ph2"), ("ph2", "ph2"),
                                        ("RetinaMNIST", "retinamnist"), (" Breast ", "breastmnist")])
def test_aliases(alias, name):
    assert get_dataset_spec(alias).name == name


def test_aliases_cover_the_four_modalities_with_data():
    assert {get_dataset_spec(a).modality.name for a in ALIASES.values()} == {
        "fundus", "chest_xray", "breast_ultrasound", "dermoscopy"}


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as e:
        get_dataset_spec("retinamnsit")
    msg = str(e.value)
    assert "retinamnsit" in msg and "retinamnist" in msg and "ph2" in msg and "dataset_spec_from_config" in msg


def test_chestmnist_is_refused_for_single_label_zero_shot():
    spec = get_dataset_spec("chestmnist")
    assert spec.is_multi_label
    with pytest.raises(ValueError, match="multi-label"):
        prompts_for(spec)
    with pytest.raises(ValueError, match="chestmnist"):
        spec.require_single_label()
    descriptions, _ = prompts_for(spec, allow_multi_label=True)
    assert len(descriptions) == 14


def test_prompts_for_uses_modality_templates():
    descriptions, templates = prompts_for(get_dataset_spec("pneumonia"))
    assert templates == MODALITIES["chest_xray"].templates
    assert templates[0].format(descriptions[1]) == "a chest X-ray showing pneumonia."


def test_spec_from_config_with_known_modality():
    spec = dataset_spec_from_config("mydata", "fundus", ["healthy", "glaucoma"])
    assert isinstance(spec, DatasetSpec) and spec.source == "custom" and spec.md5 is None
    assert spec.descriptions == ("healthy", "glaucoma")  # default: the class names
    assert prompts_for(spec)[1] == MODALITIES["fundus"].templates


def test_spec_from_config_templates_and_descriptions_override():
    spec = dataset_spec_from_config("thyroid", "thyroid_ultrasound", ["benign", "malignant"],
                                    templates=["a thyroid ultrasound showing {}."],
                                    descriptions=["a benign nodule", "a malignant nodule"])
    assert spec.modality.name == "thyroid_ultrasound"
    assert prompts_for(spec) == (("a benign nodule", "a malignant nodule"), ("a thyroid ultrasound showing {}.",))
    spec2 = dataset_spec_from_config("x", "fundus", ["a", "b"], templates=["fundus: {}."])
    assert prompts_for(spec2)[1] == ("fundus: {}.",)


@pytest.mark.parametrize("kwargs,match", [
    (dict(modality="thyroid_ultrasound"), "templates"),
    (dict(templates=["no placeholder"]), r"\{\}"),
    (dict(descriptions=["only one"]), "one description per class"),
    (dict(classes=[]), "empty"),
    (dict(classes=["a", "a"]), "duplicates"),
    (dict(name=""), "non-empty"),
    (dict(task="regression"), "task"),
])
def test_spec_from_config_errors(kwargs, match):
    args = dict(name="d", modality="fundus", classes=["a", "b"]) | kwargs
    with pytest.raises(ValueError, match=match):
        dataset_spec_from_config(**args)


def test_specs_are_frozen():
    spec = get_dataset_spec("ph2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="template"):
        Modality("m", "m", ())
