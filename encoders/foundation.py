"""Pathology foundation models: each one's published architecture (timm arguments), input,
normalisation, pooling, and where its weights are published. Data only; ``registry`` turns
each record into an ``EncoderSpec`` and ``builders.timm_vit`` builds it.

The weights are gated on the Hugging Face Hub (accept the terms on the model's page, log in
once): asign finds them in the Hugging Face cache, reads a file given with ``--weights PATH``,
or downloads them with ``--download``. Architectures follow each model card's own
``timm.create_model`` call (Phikon-v2, published for ``transformers``, is the same DINOv2
ViT-L/16 in timm's layout, its keys renamed one to one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asign.encoders.spec import IMAGENET_MEAN, IMAGENET_STD

_SWIGLU: dict[str, Any] = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}


@dataclass(frozen=True)
class FoundationModel:
    """One published pathology encoder. ``timm_kwargs`` are passed to
    ``timm.create_model(arch, pretrained=False, num_classes=0, **timm_kwargs)``;
    ``mlp_layer`` names a class in ``timm.layers``."""

    name: str
    arch: str
    timm_kwargs: dict[str, Any]
    dim: int  # output width after pooling, as the model card gives it
    pooling: str  # a key of asign.nets.vit_tokens.POOLINGS
    hf_repo: str
    hf_files: tuple[str, ...]  # as published, preferred first
    licence: str
    params_m: float  # published parameter count, millions (checked by the tests)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_px: int = 224
    key_map: str = "timm"  # a key of asign.nets.vit_tokens.KEY_MAPS
    # Checkpoint keys the encoder does not use (pre-training leftovers): dropped, not loaded.
    unused: tuple[str, ...] = ()
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


FOUNDATION_MODELS: dict[str, FoundationModel] = {m.name: m for m in (
    FoundationModel(
        name="uni", arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "dynamic_img_size": True},
        dim=1024, pooling="cls", hf_repo="MahmoodLab/UNI",
        hf_files=("pytorch_model.bin",), params_m=303.3,
        licence="CC-BY-NC-ND 4.0, gated (academic research; accept terms on the Hub)",
        summary="UNI (Mahmood Lab): DINOv2-trained ViT-L/16 on 100k slides, CLS token"),
    FoundationModel(
        name="uni2-h", arch="vit_giant_patch14_224",
        timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                     "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                     "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True,
                     **_SWIGLU},
        dim=1536, pooling="cls", hf_repo="MahmoodLab/UNI2-h",
        hf_files=("pytorch_model.bin",), params_m=681.4,
        licence="CC-BY-NC-ND 4.0, gated (academic research; accept terms on the Hub)",
        summary="UNI2-h (Mahmood Lab): ViT-H/14 with 8 register tokens, SwiGLU, CLS token"),
    FoundationModel(
        name="virchow2", arch="vit_huge_patch14_224",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                     "reg_tokens": 4, "global_pool": "", "dynamic_img_size": True, **_SWIGLU},
        dim=2560, pooling="cls+mean", hf_repo="paige-ai/Virchow2",
        hf_files=("model.safetensors", "pytorch_model.bin"), params_m=631.2,
        licence="CC-BY-NC-ND 4.0, gated (non-commercial; accept terms on the Hub)",
        summary="Virchow2 (Paige): ViT-H/14 with 4 register tokens, SwiGLU; CLS token "
        "concatenated with the mean of the 256 patch tokens (2560-d)"),
    FoundationModel(
        name="h-optimus-0", arch="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        dim=1536, pooling="cls", hf_repo="bioptimus/H-optimus-0",
        hf_files=("model.safetensors", "pytorch_model.bin"), params_m=1134.8,
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
        licence="Apache 2.0, gated (accept terms on the Hub)",
        summary="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, its own H&E mean/std, "
        "CLS token"),
    FoundationModel(
        name="prov-gigapath", arch="vit_giant_patch14_dinov2",
        timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                     "depth": 40, "num_heads": 24, "init_values": 1e-5,
                     "mlp_ratio": 5.33334},
        dim=1536, pooling="cls", hf_repo="prov-gigapath/prov-gigapath",
        hf_files=("pytorch_model.bin",), params_m=1134.8,
        licence="Apache 2.0 (research use), gated (accept terms on the Hub)",
        summary="Prov-GigaPath tile encoder (Providence/Microsoft): ViT-g/16 DINOv2, "
        "CLS token (the slide encoder is not used)"),
    FoundationModel(
        name="phikon-v2", arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1.0},
        dim=1024, pooling="cls", hf_repo="owkin/phikon-v2",
        hf_files=("model.safetensors",), params_m=303.3, key_map="hf-dinov2",
        unused=("mask_token",),
        licence="Owkin non-commercial licence (not gated)",
        summary="Phikon-v2 (Owkin): DINOv2 ViT-L/16 published for transformers, loaded "
        "into timm's ViT-L/16 with its keys renamed one to one; CLS token"),
)}
