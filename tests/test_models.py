"""load_pair's front door: local-dir round trips, safetensors experts, refusals with clear errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from common import seeded_images

from tcube.models import load_model, load_pair, save_local_dir, save_state_dict_file


@pytest.fixture(scope="module")
def saved(any_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp(any_pair.family)
    save_local_dir(any_pair.generalist, root / "gen", model_cfg=any_pair.model_cfg, tokenizer=any_pair.tokenizer)
    save_local_dir(any_pair.expert, root / "exp", model_cfg=any_pair.model_cfg, tokenizer=any_pair.tokenizer)
    save_state_dict_file(any_pair.expert.state_dict(), root / "expert.safetensors")
    return root


def test_local_dir_round_trip(any_pair, saved):
    pair = load_pair(f"local-dir:{saved / 'gen'}", f"local-dir:{saved / 'exp'}")
    images = seeded_images(3)
    for loaded, original in ((pair.generalist, any_pair.generalist), (pair.expert, any_pair.expert)):
        assert torch.allclose(loaded.encode_image(images), original.encode_image(images), atol=1e-5)
    prompts = ["a chest x-ray with pneumonia", "normal lungs"]
    assert torch.equal(pair.tokenizer(prompts), any_pair.tokenizer(prompts))
    assert torch.allclose(pair.expert.encode_text(pair.tokenizer(prompts)),
                          any_pair.expert.encode_text(any_pair.tokenizer(prompts)), atol=1e-5)


def test_folder_holds_config_weights_and_tokenizer(any_pair, saved):
    files = {p.name for p in (saved / "gen").iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= files
    if any_pair.family == "biomedclip":
        assert {"config.json", "tokenizer_config.json"} <= files


def test_open_clip_itself_loads_the_folder(clip_pair, tmp_path):
    import open_clip

    save_local_dir(clip_pair.generalist, tmp_path / "m", model_cfg=clip_pair.model_cfg)
    model = open_clip.create_model(f"local-dir:{tmp_path / 'm'}")
    images = seeded_images(2)
    assert torch.allclose(model.encode_image(images), clip_pair.generalist.encode_image(images), atol=1e-5)


def test_safetensors_expert_takes_generalist_architecture(any_pair, saved):
    pair = load_pair(f"local-dir:{saved / 'gen'}", str(saved / "expert.safetensors"))
    images = seeded_images(2)
    assert torch.allclose(pair.expert.encode_image(images), any_pair.expert.encode_image(images), atol=1e-5)


def test_weights_only_torch_checkpoint_loads(any_pair, saved, tmp_path):
    path = tmp_path / "expert.pt"
    torch.save({"state_dict": any_pair.expert.state_dict()}, path)
    pair = load_pair(f"local-dir:{saved / 'gen'}", str(path))
    assert torch.equal(pair.expert.logit_scale, any_pair.expert.logit_scale)


class Payload:  # an arbitrary object: unpickling it would run code
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_checkpoint_refused(saved, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weights": Payload()}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pair(f"local-dir:{saved / 'gen'}", str(path))


def test_mismatched_pair_lists_parameters(clip_pair, biomed_pair, tmp_path):
    save_local_dir(clip_pair.generalist, tmp_path / "clip", model_cfg=clip_pair.model_cfg)
    save_local_dir(biomed_pair.generalist, tmp_path / "bio", model_cfg=biomed_pair.model_cfg,
                   tokenizer=biomed_pair.tokenizer)
    with pytest.raises(ValueError, match="identical parameter names and shapes.*(missing|unexpected|shape)"):
        load_pair(f"local-dir:{tmp_path / 'clip'}", f"local-dir:{tmp_path / 'bio'}")


def test_bare_architecture_is_refused():
    with pytest.raises(ValueError, match="no weights"):
        load_model("ViT-B-16")


def test_unknown_spec_and_missing_folder():
    with pytest.raises(ValueError, match="cannot resolve model spec"):
        load_model("not-a-model")
    with pytest.raises(FileNotFoundError):
        load_model("local-dir:/nonexistent/folder")


def test_state_dict_file_needs_an_architecture(saved):
    with pytest.raises(ValueError, match="carries no architecture"):
        load_model(str(saved / "expert.safetensors"))


def test_hub_failure_says_what_to_do_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="local-dir"):
        load_model("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")


def test_tiny_bert_tokenizer_knows_its_words(biomed_pair):
    """Prompts reach the BERT tower as words, not [UNK]s (transformers 5 ignores a fast tokenizer's vocab_file=)."""
    from tcube.models.heads import tokenize_prompts

    tokens, _ = tokenize_prompts(biomed_pair.tokenizer, ["pneumonia", "normal lungs"])
    assert not (tokens == 1).any()  # [UNK]
    assert not torch.equal(tokens[0], tokens[2])  # the class names differ in the tokens, not only in length
