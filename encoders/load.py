"""Loading an encoder for inference: build it, load its weights, freeze it, and collect
the provenance the store records beside its embeddings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asign.encoders.registry import AUTO, get_encoder_spec
from asign.encoders.spec import EncoderSpec, WeightsSource
from asign.encoders.weights import resolve_auto, resolve_weights
from asign.errors import ConfigError
from asign.nets.state_dict import params_sha256

log = logging.getLogger(__name__)


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
