"""Importing torchvision's model zoo on CPU torch with PyPI's CUDA torchvision build."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from asign.errors import ConfigError

log = logging.getLogger(__name__)

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
