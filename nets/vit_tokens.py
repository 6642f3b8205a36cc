"""Pathology ViTs as pooled feature extractors: the token pooling each model card asks for,
and the key maps from a published checkpoint's naming to timm's.

The networks themselves are timm ``VisionTransformer``s; this module adds only what the
published recipes put after them (CLS token, or CLS concatenated with the mean of the patch
tokens, registers excluded) and the renaming of checkpoints that were not saved from timm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _cls(tokens: torch.Tensor, n_prefix: int) -> torch.Tensor:
    return tokens[:, 0]


def _cls_mean(tokens: torch.Tensor, n_prefix: int) -> torch.Tensor:
    # Patch tokens only: the CLS token and any register tokens come first.
    return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=1)


POOLINGS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "cls": _cls,
    "cls+mean": _cls_mean,
}
"""name → pooling of the final-norm token sequence (CLS first, then registers, then patches)."""


class PooledViT(nn.Module):
    """A timm ViT's final-norm tokens → one vector per image, pooled as its card says."""

    def __init__(self, vit: nn.Module, pooling: str):
        super().__init__()
        self.vit = vit
        self.pooling = pooling
        self._pool = POOLINGS[pooling]
        self.n_prefix = int(vit.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.vit.forward_features(x), self.n_prefix)


def _identity(state: dict[str, Any]) -> dict[str, Any]:
    return state


# Hugging Face ``Dinov2Model`` → timm ``VisionTransformer`` (same maths: pre-norm blocks with
# LayerScale, final LayerNorm, eps 1e-6). Query/key/value are separate linears there and one
# fused ``qkv`` linear in timm, concatenated in that order.
_DINOV2_RENAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.mask_token", "mask_token"),  # pre-training only; the loader drops it
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.", "blocks."),
    (".attention.output.dense.", ".attn.proj."),
    (".layer_scale1.lambda1", ".ls1.gamma"),
    (".layer_scale2.lambda1", ".ls2.gamma"),
    ("layernorm.", "norm."),
)


def _dinov2_to_timm(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        name = key.removeprefix("dinov2.")
        if ".attention.attention." in name:
            prefix, part = name.split(".attention.attention.")
            which, kind = part.split(".")  # query|key|value, weight|bias
            qkv.setdefault(f"{prefix}.attn.qkv.{kind}", {})[which] = value
            continue
        for old, new in _DINOV2_RENAMES:
            name = name.replace(old, new)
        out[name] = value
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            out[name + f".incomplete({','.join(sorted(parts))})"] = next(iter(parts.values()))
            continue
        out[name.replace("encoder.layer.", "blocks.")] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out


KEY_MAPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "timm": _identity,
    "hf-dinov2": _dinov2_to_timm,
}
"""How a published checkpoint's keys become timm's; unmapped keys stay as they are, so the
strict load reports them."""
