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
    encoder: str = "auto"  # resolved once per run (encoders.resolve_auto) before any step uses it
    weights: str = "imagenet"
    allow_download: bool = False  # fetch missing torch-hub weights only when the user asks
    device: str = "cpu"
    precision: str = "auto"
    batch_size: int = 32
    spot_px: int = 224
    region_px: int = 512
    global_px: int = 1024
    k_same: int = 12
    top_k_cross: int = 8
    cross_weight: str = "product"  # product (paper) | sum (reference code)
    section_um: float | None = None  # spacing between consecutive z (µm); overrides the input's
    seed: int = 0
    # where units of work run (asign/cluster.py); never part of a fingerprint: a store is
    # the same whether it was computed serially or on a cluster
    workers: int = 0
    scheduler: str | None = None
    # seconds to wait for another ingest that is writing the same store (store/locks.py)
    wait: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

