"""Declarative registry of modalities, datasets, class descriptions and prompt templates.

In the spirit of ``medmnist/info.py``: one table describes every dataset tcube knows. For the
MedMNIST entries only what MedMNIST does not provide is written here (modality, clinical class
descriptions); class names, task, split sizes and MD5s are read from ``medmnist.INFO`` when a
spec is looked up, so they can never drift from the installed package.

A dataset outside MedMNIST is described by configuration alone with
:func:`dataset_spec_from_config` (DESIGN §4); ``ph2`` is registered here as a convenience.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

__all__ = [
    "Modality",
    "DatasetSpec",
    "MODALITIES",
    "ALIASES",
    "MEDMNIST_2D",
    "known_datasets",
    "get_modality",
    "get_dataset_spec",
    "dataset_spec_from_config",
    "spec_from_config",
    "prompts_for",
]

SINGLE_LABEL_TASKS = ("multi-class", "binary-class", "ordinal-regression")
MULTI_LABEL_TASK = "multi-label, binary-class"


@dataclass(frozen=True)
class Modality:
    """An imaging modality and the clinically worded prompt templates used for it."""

    name: str
    phrase: str
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"modality {self.name!r} needs at least one prompt template")
        for t in self.templates:
            if t.count("{}") != 1:
                raise ValueError(
                    f"template {t!r} of modality {self.name!r} must contain exactly one '{{}}' "
                    "where the class description goes"
                )


@dataclass(frozen=True)
class DatasetSpec:
    """Everything tcube needs to know about one dataset (index in ``classes`` = label)."""

    name: str
    modality: Modality
    classes: tuple[str, ...]
    descriptions: tuple[str, ...]
    task: str
    source: str  # "medmnist" or "custom"
    md5: Mapping[int, str] | None = None  # image size -> expected MD5 of the npz file
    templates: tuple[str, ...] | None = None  # overrides the modality's templates
    n_samples: Mapping[str, int] | None = None  # split -> size, where known
    # corruption list: a MedMNIST-C dataset's name to borrow, or {corruption: 5 severity parameters};
    # None = its own MedMNIST-C list, else its modality's (tcube.data.corruptions.corruption_params)
    corruptions: str | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError(f"dataset {self.name!r} needs at least one class")
        if len(self.descriptions) != len(self.classes):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.descriptions)} descriptions for "
                f"{len(self.classes)} classes; give exactly one description per class"
            )
        if self.source not in ("medmnist", "custom"):
            raise ValueError(f"dataset {self.name!r}: source must be 'medmnist' or 'custom', got {self.source!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_multi_label(self) -> bool:
        return self.task.startswith("multi-label")

    def require_single_label(self) -> None:
        """Raise if this dataset cannot be scored with single-label (softmax) zero-shot evaluation."""
        if self.is_multi_label:
            raise ValueError(
                f"dataset {self.name!r} is {self.task!r}: single-label zero-shot evaluation "
                "(softmax over classes, top-1) does not apply to it. Choose a single-label dataset "
                "(e.g. pneumoniamnist for chest X-ray) or evaluate it with a multi-label protocol."
            )


def _modality(name: str, phrase: str, *templates: str) -> Modality:
    return Modality(name=name, phrase=phrase, templates=tuple(templates))


MODALITIES: Mapping[str, Modality] = MappingProxyType({
    m.name: m
    for m in (
        _modality("fundus", "colour fundus photograph",
                  "a colour fundus photograph showing {}.",
                  "a retinal fundus image with {}.",
                  "a fundus photograph of the retina with signs of {}."),
        _modality("chest_xray", "chest X-ray",
                  "a chest X-ray showing {}.",
                  "a frontal chest radiograph with {}.",
                  "a paediatric chest X-ray with findings of {}."),
        _modality("breast_ultrasound", "breast ultrasound image",
                  "a breast ultrasound image showing {}.",
                  "a B-mode ultrasound of the breast with {}.",
                  "a breast sonogram showing {}."),
        _modality("dermoscopy", "dermoscopic image",
                  "a dermoscopic image of {}.",
                  "a dermatoscopy photograph of a skin lesion: {}.",
                  "a close-up dermoscopy image showing {}."),
        _modality("pathology", "H&E-stained histopathology patch",
                  "an H&E-stained histopathology image of {}.",
                  "a colorectal histology patch showing {}.",
                  "a microscopy image of tissue with {}."),
        _modality("oct", "retinal optical coherence tomography scan",
                  "a retinal OCT scan showing {}.",
                  "an optical coherence tomography image of the macula with {}.",
                  "a retinal OCT B-scan with {}."),
        _modality("blood", "peripheral blood smear micrograph",
                  "a blood smear micrograph of {}.",
                  "a microscopic image of a peripheral blood cell: {}.",
                  "a stained blood cell image showing {}."),
        _modality("kidney_cortex", "kidney cortex microscopy image",
                  "a microscopy image of kidney cortex showing {}.",
                  "a kidney cortex tissue image of {}.",
                  "a renal cortex cell image showing {}."),
        _modality("abdominal_ct", "abdominal CT slice",
                  "an abdominal CT slice showing {}.",
                  "a computed tomography image of the abdomen centred on {}.",
                  "a CT scan crop of {}."),
    )
})

# name -> (modality, clinically worded descriptions, one per INFO label index).
_ORGANS = ("the urinary bladder", "the left femur", "the right femur", "the heart", "the left kidney",
           "the right kidney", "the liver", "the left lung", "the right lung", "the pancreas", "the spleen")
_MEDMNIST_TABLE: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType({
    "pathmnist": ("pathology", (
        "adipose tissue", "slide background with no tissue", "necrotic debris", "a dense lymphocytic infiltrate",
        "extracellular mucus", "smooth muscle", "normal colonic mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium")),
    "chestmnist": ("chest_xray", (
        "atelectasis", "cardiomegaly", "a pleural effusion", "pulmonary infiltration", "a lung mass",
        "a pulmonary nodule", "pneumonia", "a pneumothorax", "consolidation", "pulmonary edema",
        "emphysema", "pulmonary fibrosis", "pleural thickening", "a hernia")),
    "dermamnist": ("dermoscopy", (
        "an actinic keratosis or intraepithelial carcinoma", "a basal cell carcinoma",
        "a benign keratosis-like lesion", "a dermatofibroma", "melanoma", "a melanocytic nevus",
        "a vascular skin lesion")),
    "octmnist": ("oct", (
        "choroidal neovascularization", "diabetic macular edema", "drusen", "a normal retina")),
    "pneumoniamnist": ("chest_xray", ("normal lungs with no consolidation", "pneumonia")),
    "retinamnist": ("fundus", (
        "no diabetic retinopathy", "mild non-proliferative diabetic retinopathy",
        "moderate non-proliferative diabetic retinopathy", "severe non-proliferative diabetic retinopathy",
        "proliferative diabetic retinopathy")),
    "breastmnist": ("breast_ultrasound", ("a malignant breast tumour", "normal breast tissue or a benign lesion")),
    "bloodmnist": ("blood", (
        "a basophil", "an eosinophil", "an erythroblast",
        "an immature granulocyte (myelocyte, metamyelocyte or promyelocyte)", "a lymphocyte", "a monocyte",
        "a neutrophil", "a platelet")),
    "tissuemnist": ("kidney_cortex", (
        "collecting duct and connecting tubule cells", "distal convoluted tubule cells",
        "glomerular endothelial cells", "interstitial endothelial cells", "leukocytes", "podocytes",
        "proximal tubule segment cells", "thick ascending limb cells")),
    "organamnist": ("abdominal_ct", _ORGANS),
    "organcmnist": ("abdominal_ct", _ORGANS),
    "organsmnist": ("abdominal_ct", _ORGANS),
})
MEDMNIST_2D: tuple[str, ...] = tuple(_MEDMNIST_TABLE)

# Custom datasets in the MedMNIST npz layout. PH2: classes and split sizes from
# ../shared/data/medmnist/PROVENANCE.md ("Clinical Diagnosis" columns); MD5 of the 28x28 file
# as recorded there (the conversion is byte-reproducible).
_CUSTOM: Mapping[str, DatasetSpec] = MappingProxyType({
    "ph2": DatasetSpec(
        name="ph2",
        modality=MODALITIES["dermoscopy"],
        classes=("common nevus", "atypical nevus", "melanoma"),
        descriptions=("a common nevus", "an atypical nevus", "melanoma"),
        task="multi-class",
        source="custom",
        md5=MappingProxyType({28: "1a760532d876fa90d1f9e3e48df5b008"}),
        n_samples=MappingProxyType({"train": 140, "val": 20, "test": 40}),
    ),
})

# Short names used by the data configs (the four modalities with data here).
ALIASES: Mapping[str, str] = MappingProxyType({
    "retina": "retinamnist",
    "pneumonia": "pneumoniamnist",
    "breast": "breastmnist",
    "derm": "ph2",
})


def known_datasets() -> tuple[str, ...]:
    """All registered dataset names (MedMNIST flags first, then custom datasets)."""
    return MEDMNIST_2D + tuple(_CUSTOM)


def get_modality(name: str) -> Modality:
    """Look up a registered modality by name."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known modalities: {sorted(MODALITIES)}") from None


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def _medmnist_info(flag: str) -> Mapping:
    import medmnist  # lazy: importing medmnist pulls in torch and PIL

    return medmnist.INFO[flag]


def _medmnist_spec(flag: str) -> DatasetSpec:
    modality, descriptions = _MEDMNIST_TABLE[flag]
    info = _medmnist_info(flag)
    labels = info["label"]
    classes = tuple(labels[str(i)] for i in range(len(labels)))
    md5 = {28: info["MD5"]}
    md5.update({int(k.split("_")[1]): v for k, v in info.items() if k.startswith("MD5_")})
    return DatasetSpec(
        name=flag,
        modality=MODALITIES[modality],
        classes=classes,
        descriptions=descriptions,
        task=info["task"],
        source="medmnist",
        md5=MappingProxyType(md5),
        n_samples=MappingProxyType(dict(info["n_samples"])),
    )


def get_dataset_spec(name: str) -> DatasetSpec:
    """Spec of a registered dataset, by MedMNIST flag, custom name or alias (case-insensitive)."""
    key = _canonical(name)
    if key in _MEDMNIST_TABLE:
        return _medmnist_spec(key)
    if key in _CUSTOM:
        return _CUSTOM[key]
    raise ValueError(
        f"unknown dataset {name!r}. Known datasets: {list(known_datasets())}; aliases: {dict(ALIASES)}. "
        "For a dataset outside this registry, describe it in a data config "
        "(data.name, data.modality, data.classes) and build it with dataset_spec_from_config()."
    )


def dataset_spec_from_config(
    name: str,
    modality: str | Modality,
    classes: Sequence[str],
    templates: Sequence[str] | None = None,
    descriptions: Sequence[str] | None = None,
    task: str = "multi-class",
    corruptions: str | Mapping[str, Any] | None = None,
) -> DatasetSpec:
    """Describe a dataset outside MedMNIST (same npz layout) from configuration values alone.

    ``modality`` may name a registered modality or a new one; a new modality needs ``templates``.
    ``descriptions`` default to the class names themselves. ``corruptions`` names the corruption list
    (a MedMNIST-C dataset to borrow from, or a mapping); needed for corruption runs of a new modality.
    """
    if not name or not str(name).strip():
        raise ValueError("data.name must be a non-empty file stem (the npz file is '<name>.npz')")
    classes = tuple(str(c) for c in classes)
    if not classes:
        raise ValueError(f"dataset {name!r}: data.classes is empty; list the class names, index = label")
    if len(set(classes)) != len(classes):
        raise ValueError(f"dataset {name!r}: data.classes has duplicates: {list(classes)}")
    tmpl = tuple(str(t) for t in templates) if templates else None
    if isinstance(modality, Modality):
        mod = modality
    elif modality in MODALITIES:
        mod = MODALITIES[modality]
    elif tmpl:
        mod = Modality(name=str(modality), phrase=str(modality).replace("_", " "), templates=tmpl)
    else:
        raise ValueError(
            f"dataset {name!r}: modality {modality!r} is not registered (known: {sorted(MODALITIES)}); "
            "either use a known modality or give data.templates, e.g. ['an image of {}.']"
        )
    if tmpl is not None:  # validate placeholders the same way modality templates are checked
        Modality(name=mod.name, phrase=mod.phrase, templates=tmpl)
    desc = tuple(str(d) for d in descriptions) if descriptions else classes
    if task not in SINGLE_LABEL_TASKS + (MULTI_LABEL_TASK,):
        raise ValueError(f"dataset {name!r}: unknown task {task!r}; use one of {SINGLE_LABEL_TASKS + (MULTI_LABEL_TASK,)}")
    return DatasetSpec(name=str(name), modality=mod, classes=classes, descriptions=desc, task=task,
                       source="custom", md5=None, templates=tmpl, corruptions=_frozen(corruptions))


def _frozen(corruptions: str | Mapping[str, Any] | None) -> str | Mapping[str, Any] | None:
    if corruptions is None or isinstance(corruptions, str):
        return corruptions
    return MappingProxyType({str(k): tuple(v) for k, v in dict(corruptions).items()})


def spec_from_config(entry: str | Mapping[str, Any]) -> DatasetSpec:
    """A registered dataset by name, or one described by a mapping (name, modality, classes, ...)."""
    if isinstance(entry, str):
        return get_dataset_spec(entry)
    entry = dict(entry)
    if not entry.get("classes"):  # a registered dataset, optionally with other prompts or corruption list
        spec = get_dataset_spec(entry["name"])
        if entry.get("templates") or entry.get("descriptions") or entry.get("corruptions"):
            spec = dataset_spec_from_config(spec.name, spec.modality, spec.classes,
                                            templates=entry.get("templates") or spec.templates,
                                            descriptions=entry.get("descriptions") or spec.descriptions,
                                            task=spec.task, corruptions=entry.get("corruptions"))
        return spec
    return dataset_spec_from_config(name=entry["name"], modality=entry.get("modality") or "",
                                    classes=list(entry["classes"]), templates=entry.get("templates"),
                                    descriptions=entry.get("descriptions"),
                                    task=entry.get("task") or "multi-class", corruptions=entry.get("corruptions"))


def entry_from_config(data: Mapping[str, Any]) -> str | dict[str, Any]:
    """A data config as spec_from_config takes it: a registered name, or its own description (name, modality,
    classes, ...)."""
    described = {k: data.get(k) for k in ("name", "modality", "classes", "descriptions", "templates", "task",
                                          "corruptions")
                 if data.get(k) is not None}
    return described if len(described) > 1 else data["name"]


def prompts_for(spec: DatasetSpec, *, allow_multi_label: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class descriptions, prompt templates) for a zero-shot head.

    Multi-label datasets (chestmnist) are refused unless ``allow_multi_label=True``, because a
    softmax head over their labels would silently score the wrong task.
    """
    if not allow_multi_label:
        spec.require_single_label()
    templates = spec.templates if spec.templates is not None else spec.modality.templates
    return spec.descriptions, templates
