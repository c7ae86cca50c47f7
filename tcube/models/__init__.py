"""Models: loading pairs from any spec, checkpoint I/O, zero-shot heads."""
from .checkpoints import check_compatible, load_state_dict_file, save_state_dict_file
from .heads import (
                      DEFAULT_TEMPLATES,
                      build_prompts,
                      head_from_text_features,
                      tokenize_prompts,
                      zero_shot_head,
)
from .loading import (
                      LoadedModel,
                      ModelPair,
                      build_model,
                      load_model,
                      load_pair,
                      preprocess_from_cfg,
                      save_local_dir,
                      tokenizer_for,
)

__all__ = [
    "DEFAULT_TEMPLATES", "LoadedModel", "ModelPair", "build_model", "build_prompts", "check_compatible",
    "head_from_text_features", "load_model", "load_pair", "load_state_dict_file", "preprocess_from_cfg",
    "save_local_dir", "save_state_dict_file", "tokenize_prompts", "tokenizer_for", "zero_shot_head",
]
