"""Tiny real models built in fixtures (mergekit style), so tests never download anything.

Two families, the two the fused engine supports: a small custom open_clip CLIP, and a
BiomedCLIP-shaped CustomTextCLIP (timm ViT image tower + Hugging Face BERT text tower built from
a local config). Experts are the generalist plus a non-trivial perturbation of every parameter.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

WORDS = ("a medical image showing an of the chest x-ray with pneumonia normal lungs malignant benign "
         "mass lesion tumour tumor fundus photograph retina diabetic retinopathy dermoscopy melanoma nevus "
         "class photo cat dog ultrasound breast").split()


def register_tiny_timm_vit() -> str:
    """A 2-layer, 32-px timm ViT with the same class as BiomedCLIP's image trunk."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = "vit_tcube_tiny_patch8_32"
    if name not in timm.list_models(name):
        @register_model
        def vit_tcube_tiny_patch8_32(pretrained=False, **kwargs):  # noqa: ANN001
            kwargs.pop("pretrained_cfg", None)
            kwargs.pop("pretrained_cfg_overlay", None)
            kwargs.pop("cache_dir", None)
            model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                                      **{k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")})
            model.pretrained_cfg = model.default_cfg = {}  # what timm's builder would attach
            return model
    return name


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT config and a WordPiece tokenizer, saved like a Hugging Face model folder."""
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "'"]
    vocab += sorted(set(WORDS)) + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= on the fast tokenizer (every word became [UNK]): pass the vocab itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    BertConfig(vocab_size=len(vocab), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=96, max_position_embeddings=64, pad_token_id=0).save_pretrained(folder)
    return folder


def tiny_biomedclip_cfg(bert_dir: Path) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": register_tiny_timm_vit(), "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24},
        "custom_text": True,
    }


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """expert = generalist + noise on every parameter (relative to the parameter's own spread)."""
    expert = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in expert.parameters():
            spread = p.std().item() if p.numel() > 1 else 1.0
            noise = torch.randn(p.shape, generator=gen) * max(spread, 0.05) * scale
            p.add_(noise)
    return expert.eval()


def seeded_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
