"""One front door for every way a model is named: `load_model(spec)` and `load_pair(generalist, expert)`.

Accepted specs:
  "local-dir:DIR" or a directory   open_clip folder (open_clip_config.json + weights + tokenizer files), or a
                                   LoRA expert saved as factors (lora.safetensors; expert only, next to its generalist)
  "hf-hub:ORG/REPO"                open_clip model on the Hugging Face Hub (needs internet)
  "ARCH:TAG"                       open_clip built-in architecture with a pretrained tag (needs internet)
  "ARCH:FILE" or "FILE"            a state-dict file (.safetensors, or torch.load(weights_only=True));
                                   a bare FILE takes the architecture of the generalist (expert only)
A bare built-in "ARCH" is refused: it would silently mean random weights.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import (
    STATE_DICT_SUFFIXES,
    check_compatible,
    load_state_dict_file,
    save_state_dict_file,
)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"  # the name open_clip's local-dir loader looks for first


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Callable
    preprocess: Callable
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    source: str


@dataclass
class ModelPair:
    """A generalist and an expert with identical architecture, sharing tokenizer and preprocessing.

    Loaded with a list of experts, `experts` holds all K and `expert` is None (pass `pair.experts` on).
    """

    generalist: nn.Module
    expert: nn.Module | None
    tokenizer: Callable
    preprocess: Callable
    model_cfg: dict[str, Any] = field(default_factory=dict)
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ("", "")
    experts: tuple[nn.Module, ...] = ()

    def __post_init__(self):
        if not self.experts and self.expert is not None:
            self.experts = (self.expert,)


def build_model(model_cfg: dict[str, Any], *, hf_text_dir: str | Path | None = None) -> nn.Module:
    """Instantiate an open_clip CLIP / CustomTextCLIP from its config dict (random init, eval mode)."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        if hf_text_dir is not None:  # build the text tower offline from a local config.json
            text_cfg["hf_model_name"] = str(hf_text_dir)
        text_cfg["hf_model_pretrained"] = False
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if "multimodal_cfg" in cfg:
        raise ValueError("CoCa models (multimodal_cfg) are not supported by tcube")
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return model_class(**cfg).eval()


def preprocess_from_cfg(preprocess_cfg: dict[str, Any]) -> Callable:
    from open_clip.transform import (
        PreprocessCfg,
        image_transform_v2,
        merge_preprocess_dict,
    )

    return image_transform_v2(PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)), is_train=False)


def default_preprocess_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return {"size": size}


def tokenizer_for(model_cfg: dict[str, Any], folder: str | Path | None = None) -> Callable:
    """open_clip's tokenizer for a config: HF tokenizer files from `folder` if the text tower is HF."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        source = str(folder) if folder is not None else text_cfg["hf_tokenizer_name"]
        return HFTokenizer(source, context_length=context_length, **text_cfg.get("tokenizer_kwargs", {}))
    return open_clip.SimpleTokenizer(context_length=context_length)


def save_local_dir(model: nn.Module, folder: str | Path, *, model_cfg: dict[str, Any],
                   preprocess_cfg: dict[str, Any] | None = None, tokenizer: Callable | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write an open_clip `local-dir:` folder (config, safetensors weights, tokenizer files), atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or default_preprocess_cfg(model_cfg)}
    if extra:
        config["tcube"] = extra
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_state_dict_file(model.state_dict(), tmp / WEIGHTS_NAME)
    hf_text = getattr(getattr(model, "text", None), "config", None)
    if hf_text is not None:  # the HF text tower is rebuilt from this config.json when loading offline
        hf_text.save_pretrained(tmp)
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "save_pretrained"):
        inner.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def _load_local_dir(folder: Path, device, source: str, reference: LoadedModel | None = None) -> LoadedModel:
    from .lora import FACTORS_FILE, attach_factors, load_factors

    config_path = folder / CONFIG_NAME
    factors = load_factors(folder / FACTORS_FILE) if (folder / FACTORS_FILE).is_file() else None
    if factors is not None and not config_path.is_file():  # a LoRA expert saved as factors only
        return _lora_on(reference, factors, source)
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an open_clip local-dir folder: {CONFIG_NAME} is missing")
    config = json.loads(config_path.read_text())
    if "model_cfg" not in config:
        raise ValueError(f"{config_path} has no 'model_cfg' entry")
    model_cfg = config["model_cfg"]
    hf_dir = folder if (folder / "config.json").is_file() else None
    model = build_model(model_cfg, hf_text_dir=hf_dir)
    weights = next((folder / n for n in (WEIGHTS_NAME, "open_clip_pytorch_model.safetensors",
                                         "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
                    if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds a config but no weights ({WEIGHTS_NAME}); refusing random weights")
    _load_weights(model, load_state_dict_file(weights), what=f"{source}")
    if factors is not None:  # merged LoRA expert: its factors let the fused engine merge it at low rank
        attach_factors(model, factors)
    preprocess_cfg = {**default_preprocess_cfg(model_cfg), **config.get("preprocess_cfg", {})}
    return LoadedModel(model.to(device), tokenizer_for(model_cfg, folder), preprocess_from_cfg(preprocess_cfg),
                       model_cfg, preprocess_cfg, source)


def _lora_on(reference: LoadedModel | None, factors, source: str) -> LoadedModel:
    """The expert `generalist + U·V` of a factors-only folder; only next to the generalist it was tuned from."""
    from .fingerprint import model_fingerprint
    from .lora import apply_factors

    if reference is None:
        raise ValueError(f"'{source}' is a LoRA expert stored as factors: it needs its generalist. Load it with "
                         f"load_pair(generalist, '{source}') (or as model.expert next to model.generalist)")
    found = model_fingerprint(reference.model)
    if found != factors.generalist:
        raise ValueError(f"LoRA expert '{source}' was fine-tuned from the generalist with fingerprint "
                         f"{factors.generalist}, but '{reference.source}' has fingerprint {found}; pass the "
                         "generalist it was fine-tuned from (its spec is in the expert's manifest.json)")
    return LoadedModel(apply_factors(reference.model, factors), reference.tokenizer, reference.preprocess,
                       reference.model_cfg, reference.preprocess_cfg, source)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    check_compatible(model.state_dict(), state, what)
    model.load_state_dict(state, strict=True)


def _load_open_clip_named(spec: str, pretrained: str | None, device, source: str) -> LoadedModel:
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(spec)
    except Exception as err:  # hub or download failures: say what to do offline
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise RuntimeError(
            f"could not load '{source}' from the network ({type(err).__name__}: {err}). "
            + ("HF_HUB_OFFLINE=1 is set. " if offline else "")
            + "Download the model once where there is internet, save it as an open_clip folder, and pass "
            "'local-dir:/path/to/folder'."
        ) from err
    model_cfg, preprocess_cfg = open_clip.get_model_config(spec) or {}, {}
    if spec.startswith("hf-hub:"):  # the hub's open_clip_config.json, already fetched by create_model above
        config = open_clip.factory._get_hf_config(spec[len("hf-hub:"):])
        model_cfg, preprocess_cfg = config.get("model_cfg", {}), config.get("preprocess_cfg", {})
    return LoadedModel(model.eval(), tokenizer, preprocess, model_cfg, preprocess_cfg, source)


def load_model(spec: str, *, reference: LoadedModel | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load one model from any spec listed in this module's docstring."""
    import open_clip

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    if spec.startswith("local-dir:"):
        return _load_local_dir(Path(spec[len("local-dir:"):]).expanduser(), device, spec, reference)
    if spec.startswith("hf-hub:"):
        return _load_open_clip_named(spec, None, device, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_local_dir(path, device, spec, reference)
    if path.suffix in STATE_DICT_SUFFIXES or path.is_file():
        if reference is None:
            raise ValueError(
                f"'{spec}' is a state-dict file and carries no architecture. Give it as the expert (it takes "
                "the generalist's architecture), or as 'ARCH:FILE', or save the model as a local-dir folder."
            )
        model = copy.deepcopy(reference.model)
        _load_weights(model, load_state_dict_file(path), what=f"expert '{spec}' vs generalist '{reference.source}'")
        return LoadedModel(model.eval(), reference.tokenizer, reference.preprocess, reference.model_cfg,
                           reference.preprocess_cfg, spec)
    arch, _, tag = spec.partition(":")
    if arch in open_clip.list_models():
        if not tag:
            raise ValueError(
                f"'{spec}' names an architecture but no weights; tcube never loads random weights implicitly. "
                f"Use '{arch}:<pretrained tag>' (tags: {open_clip.list_pretrained_tags_by_model(arch) or 'none'}) "
                f"or '{arch}:/path/to/weights.safetensors'."
            )
        if Path(tag).expanduser().is_file():
            model_cfg = open_clip.get_model_config(arch)
            model = build_model(model_cfg)
            _load_weights(model, load_state_dict_file(Path(tag).expanduser()), what=spec)
            pre_cfg = default_preprocess_cfg(model_cfg)
            return LoadedModel(model.to(device), open_clip.get_tokenizer(arch), preprocess_from_cfg(pre_cfg),
                               model_cfg, pre_cfg, spec)
        return _load_open_clip_named(arch, tag, device, spec)
    raise ValueError(
        f"cannot resolve model spec '{spec}': expected 'local-dir:DIR', an open_clip folder, 'hf-hub:ORG/REPO', "
        "'ARCH:TAG' with ARCH an open_clip built-in (open_clip.list_models()), or a state-dict file"
    )


def load_pair(generalist: str, expert: str | Sequence[str], *, device: str | torch.device = "cpu") -> ModelPair:
    """Load a generalist and an expert fine-tuned from it; their parameter names and shapes must match.

    `expert` may be a list of specs (one expert per task): the pair then holds them in `experts`.
    """
    gen = load_model(generalist, device=device)
    if not isinstance(expert, str):
        specs = list(expert)
        if not specs:
            raise ValueError("expert is an empty list: give one spec per expert")
        experts = [load_model(spec, reference=gen, device=device) for spec in specs]
        for spec, e in zip(specs, experts):
            check_compatible(gen.model.state_dict(), e.model.state_dict(), f"generalist '{generalist}' and expert '{spec}'")
        return ModelPair(gen.model.eval(), None, gen.tokenizer, gen.preprocess, gen.model_cfg, gen.preprocess_cfg,
                         (generalist, *specs), tuple(e.model.eval() for e in experts))
    exp = load_model(expert, reference=gen, device=device)
    check_compatible(gen.model.state_dict(), exp.model.state_dict(),
                     f"generalist '{generalist}' and expert '{expert}'")
    return ModelPair(gen.model.eval(), exp.model.eval(), gen.tokenizer, gen.preprocess, gen.model_cfg,
                     gen.preprocess_cfg, (generalist, expert))
