"""Typed configuration of one `asign ingest` invocation (built by the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asign.store.manifest import jsonable

STEPS = ("register", "align", "patches", "embed", "graph")
NORMALISATIONS = ("log_ratio", "log1p_cp10k")


@dataclass(frozen=True)
class AlignOptions:
    transform: str = "rigid"  # rigid | affine
    syn: bool = False
    reference: str | None = None  # section id; default the middle section
    # user hints for pairs that automatic matching gets wrong: "MOVING:FIXED" -> (deg, flip)
    init: dict[str, tuple[float, bool]] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[Path, ...]
    store: Path
    format: str = "auto"
    samples: str | None = None
    extra_2d: tuple[str, ...] = ()  # single-section samples kept as extra 2D training data
    steps: tuple[str, ...] = STEPS
    n_genes: int = 250
    genes: tuple[str, ...] = ()  # explicit panel (names, or the path of a gene list file); overrides n_genes
    normalisation: str = "log_ratio"
    panel_from: str = "first"  # which layer of each sample is labelled "training" for the panel
    align: AlignOptions = field(default_factory=AlignOptions)
    encoder: str = "resnet50-l3"
    weights: str = "imagenet"
    device: str = "cpu"
    precision: str = "auto"
    batch_size: int = 32
    spot_px: int = 224
    region_px: int = 512
    global_px: int = 1024
    k_same: int = 12
    top_k_cross: int = 8
    cross_weight: str = "product"  # product (paper) | sum (reference code)
    seed: int = 0
    # where units of work run (asign/cluster.py); never part of a fingerprint: a store is
    # the same whether it was computed serially or on a cluster
    workers: int = 0
    scheduler: str | None = None

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

