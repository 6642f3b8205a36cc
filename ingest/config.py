"""Typed configuration of one `asign ingest` invocation (built by the CLI)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asign.ingest.steps import STEPS
from asign.schemas.vocabulary import NORMALISATIONS
from asign.store.manifest import jsonable

TRANSFORMS = ("rigid", "affine")
CROSS_WEIGHTS = ("product", "sum")  # IoU × cosine (the paper) | IoU + cosine (reference code)


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
    bin_um: float | None = None  # binned platforms: bin side in µm (None = platform default)
    patch_um: float | None = None  # spot patch field of view in µm (None: from the spot size)
    seed: int = 0
    # where units of work run (asign/cluster.py); never part of a fingerprint: a store is
    # the same whether it was computed serially or on a cluster
    workers: int = 0
    # torch threads of a serial run's encoder (None: the cores idle at start, cluster.idle_cores;
    # torch's all-cores default measured 3.75× slower in embed beside other jobs, bench/scale.py)
    threads: int | None = None
    scheduler: str | None = None
    # seconds to wait for another ingest that is writing the same store (store/locks.py)
    wait: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @property
    def runs_encoder(self) -> bool:
        """Patches or embeddings are made in this run (they decide the encoder's input)."""
        return bool({"patches", "embed"} & set(self.steps))



def validate(cfg: IngestConfig) -> None:
    """Collect every invalid option into one ConfigErrors before any work starts: a typo
    found after register, align, patches and embed have run costs hours on a real stack.
    Weights are checked next, still before the store exists (pipeline.resolve_encoder:
    encoders.check_weights); options that need the input to check (--reference, --init,
    --panel-from against the sample's layers, the gene list) as soon as the input is read."""
    from asign.cluster import DEVICES
    from asign.encoders import AUTO, get_encoder_spec
    from asign.errors import AsignError, ConfigErrors, not_one_of
    from asign.ingest.embed import PRECISIONS
    from asign.ingest.readers import READERS

    problems: list[str] = []

    bad_steps = [s for s in cfg.steps if s not in STEPS]
    if bad_steps or not cfg.steps:
        problems.append(f"--steps {','.join(cfg.steps)!r} must be a non-empty subset of {','.join(STEPS)}")
    problems += not_one_of(cfg.format, ("auto", *READERS), "--format")
    problems += not_one_of(cfg.normalisation, NORMALISATIONS, "--normalisation")
    problems += not_one_of(cfg.align.transform, TRANSFORMS, "--transform")
    problems += not_one_of(cfg.cross_weight, CROSS_WEIGHTS, "--cross-weight")
    problems += not_one_of(cfg.device, DEVICES, "--device")
    problems += not_one_of(cfg.precision, PRECISIONS, "precision")
    if cfg.encoder != AUTO:
        try:
            get_encoder_spec(cfg.encoder)
        except AsignError as err:
            problems.append(f"--encoder: {err}")
    if not cfg.panel_from.strip():
        problems.append("--panel-from must be first, middle, a layer number or a section id")
    if not cfg.genes and cfg.n_genes < 1:
        problems.append(f"--n-genes must be ≥ 1, got {cfg.n_genes}")
    for flag, value in (("--batch-size", cfg.batch_size), ("spot_px", cfg.spot_px),
                        ("region_px", cfg.region_px), ("global_px", cfg.global_px),
                        ("k_same", cfg.k_same), ("top_k_cross", cfg.top_k_cross)):
        if value < 1:
            problems.append(f"{flag} must be ≥ 1, got {value}")
    if cfg.section_um is not None and not (math.isfinite(cfg.section_um) and cfg.section_um > 0):
        problems.append(f"--section-um {cfg.section_um} must be a positive number of µm")
    if cfg.bin_um is not None and not (math.isfinite(cfg.bin_um) and cfg.bin_um >= 0):
        problems.append(f"--bin-um {cfg.bin_um} must be ≥ 0 µm (0: Xenium cells as spots)")
    if cfg.patch_um is not None and not (math.isfinite(cfg.patch_um) and cfg.patch_um > 0):
        problems.append(f"--patch-um {cfg.patch_um} must be a positive number of µm")
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"--threads must be ≥ 1, got {cfg.threads}")
    if cfg.workers < 0:
        problems.append(f"--workers must be ≥ 0, got {cfg.workers}")
    if cfg.workers and cfg.scheduler:
        problems.append("give --workers (a local cluster) or --scheduler (a running one), not both")
    if not (math.isfinite(cfg.wait) and cfg.wait >= 0):
        problems.append(f"--wait must be ≥ 0 seconds, got {cfg.wait}")
    if problems:
        raise ConfigErrors(problems, what="asign ingest options", fix="see `asign ingest --help`")
