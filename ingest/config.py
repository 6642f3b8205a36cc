"""Typed configuration of one `asign ingest` invocation (built by the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asign.ingest.steps import STEPS
from asign.options import opt, shared
from asign.options import problems as declared_problems

TRANSFORMS = ("rigid", "affine")
CROSS_WEIGHTS = ("product", "sum")  # IoU × cosine (the paper) | IoU + cosine (reference code)

_ALIGN, _FEAT, _GRAPH, _RUN = "Alignment", "Features", "Graph", "Runtime"


def _readers() -> tuple[str, ...]:
    from asign.ingest.readers import READERS

    return ("auto", *READERS)


def _normalisations() -> tuple[str, ...]:
    from asign.schemas.vocabulary import NORMALISATIONS

    return NORMALISATIONS


def _precisions() -> tuple[str, ...]:
    from asign.ingest.embed import PRECISIONS

    return PRECISIONS


def _stain_norms() -> tuple[str, ...]:
    from asign.encoders.stain import STAIN_NORMS

    return STAIN_NORMS


def _devices() -> tuple[str, ...]:
    from asign.cluster import DEVICES

    return DEVICES


def parse_init(items: list[str]) -> dict[str, tuple[float, bool]]:
    """``MOVING:FIXED:DEGREES[:flip]`` hints → ``{"MOVING:FIXED": (degrees, flip)}``."""
    from asign.errors import ConfigError

    out: dict[str, tuple[float, bool]] = {}
    for item in items:
        parts = item.split(":")
        try:
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("flip", "noflip")):
                raise ValueError
            flip = len(parts) == 4 and parts[3] == "flip"
            out[f"{parts[0]}:{parts[1]}"] = (float(parts[2]), flip)
        except ValueError:
            raise ConfigError(f"--init {item!r} is malformed",
                              fix="use MOVING:FIXED:DEGREES or MOVING:FIXED:DEGREES:flip, "
                                  "e.g. C4:C3:-12:flip") from None
    return out


@dataclass(frozen=True)
class AlignOptions:
    transform: str = opt("rigid", help="Registration transform.", choices=lambda: TRANSFORMS,
                         group=_ALIGN)
    syn: bool = opt(False, help="Refine with ANTs SyN on grayscale.", negatable=True,
                    group=_ALIGN)
    reference: str | None = opt(None, help="Reference section id (default: middle).",
                                group=_ALIGN)
    # user hints for pairs that automatic matching gets wrong: "MOVING:FIXED" -> (deg, flip)
    init: dict[str, tuple[float, bool]] = opt(
        factory=dict, repeat=True, parse=parse_init, group=_ALIGN, metavar="TEXT",
        help="Initial guess for a pair: MOVING:FIXED:DEGREES[:flip], repeatable.")


# identity role in ingest: "run" — the option enters the fingerprint of the step it changes
# (ingest/steps.py, step_register.py), so a changed value redoes that step; "never" — it
# does not change what is stored (inputs are identified by their hashes, not by path).
@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[Path, ...] = opt(
        argument=True, identity="never",
        help="Sample folder(s): her2st layout, Visium outs/, or a manifest (.toml/.csv).")
    store: Path = shared("--store")
    format: str = shared("--format", "auto", choices=_readers, identity="never",
                         help="Input layout: auto (detected) or a reader listed by "
                              "`asign doctor`.")
    samples: str | None = shared("--samples", None, identity="never",
                                 help="Sample name(s) or glob, comma-separated (e.g. C or 'C,B').")
    extra_2d: tuple[str, ...] = shared("--extra-2d", ())
    steps: tuple[str, ...] = opt(STEPS, listed=True, choices=lambda: STEPS, identity="never",
                                 help="Steps to run, comma-separated (a subset).")
    n_genes: int = opt(250, ge=1, help="Gene panel size (top by mean count on training layers).")
    genes: tuple[str, ...] = shared(
        "--genes", (), help="Explicit gene panel: comma-separated names, or a file with one "
                            "gene per line (overrides --n-genes).")
    normalisation: str = opt("log_ratio", choices=_normalisations,
                             help="log_ratio (reference/paper scale) or log1p_cp10k "
                                  "(TRIPLEX/HEST).")
    panel_from: str = opt("first", help="Layer of each sample counted as training for the "
                                        "panel: first | middle | Z | section id.")
    align: AlignOptions = field(default_factory=AlignOptions)
    encoder: str = shared(
        "--encoder", "auto", group=_FEAT,
        help="Encoder from the registry, 'a+b' to concatenate, or 'auto': resnet50-l3 when "
             "its ImageNet weights are local, else effnet-lite0 (bundled weights). See "
             "`asign doctor`.")
    weights: str = opt("imagenet", group=_FEAT,
                       help="PATH to a state dict (.safetensors or torch), 'imagenet'/"
                            "'pretrained' (the encoder's published weights: bundled, torch hub "
                            "or Hugging Face cache) or 'random' (pipeline tests).")
    allow_download: bool = opt(False, flag="--download", negatable=True, group=_FEAT,
                               identity="never",
                               help="Allow downloading missing published weights (torch hub; "
                                    "Hugging Face with your token).")
    device: str = shared("--device", "cpu", choices=_devices, group=_RUN, identity="never")
    precision: str = opt("auto", choices=_precisions, group=_FEAT,
                         help="Number format of the encoder's forward pass.")
    batch_size: int = opt(32, ge=1, group=_FEAT, help="Patches per forward pass of the encoder.")
    stain_norm: str = opt("macenko", choices=_stain_norms, group=_FEAT,
                          help="Stain normalisation of every patch and tile before encoding: "
                               "macenko (each sample's reference stain fitted on its panel "
                               "layer's tissue; torchstain), or none (images as scanned).")
    tta: int = opt(1, ge=1, le=8, group=_FEAT,
                   help="Test-time augmentation: features averaged over 1, 2, 4 or 8 dihedral "
                        "views (flips/rotations) of each image; costs that many encoder passes.")
    spot_px: int = opt(224, ge=1, group=_FEAT, help="Side of a spot patch in pixels.")
    region_px: int = opt(512, ge=1, group=_FEAT, help="Side of a region tile in pixels.")
    global_px: int = opt(1024, ge=1, group=_FEAT, help="Side of a global tile in pixels.")
    k_same: int = opt(12, ge=1, group=_GRAPH, help="Same-layer neighbours per spot.")
    top_k_cross: int = opt(8, ge=1, group=_GRAPH, help="Cross-layer neighbours per spot.")
    cross_weight: str = opt("product", choices=lambda: CROSS_WEIGHTS, group=_GRAPH,
                            help="Cross-layer edge weight: product (IoU×cosine, the paper) or "
                                 "sum (reference code).")
    section_um: float | None = opt(
        None, gt=0, help="Spacing between consecutive sections (z) in µm; overrides the "
                         "input's section_um (default 10, recorded in the store).")
    bin_um: float | None = opt(
        None, ge=0, help="Binned platforms: Visium HD bin level in µm (2, 8, 16; default 16); "
                         "Xenium bin side in µm (default 55; 0 = cells as spots).")
    patch_um: float | None = opt(
        None, gt=0, group=_FEAT,
        help="Spot patch field of view in µm; region and global tiles keep their ratio "
             "(default: 112 µm for spots, 2.04 × the bin side for bins).")
    seed: int = shared("--seed", 0)
    # where units of work run (asign/cluster.py); never part of a fingerprint: a store is
    # the same whether it was computed serially or on a cluster
    workers: int = shared("--workers", 0)
    # torch threads of a serial run's encoder (None: the cores idle at start, cluster.idle_cores;
    # torch's all-cores default measured 3.75× slower in embed beside other jobs, bench/scale.py)
    threads: int | None = shared("--threads", None)
    scheduler: str | None = shared("--scheduler", None)
    # seconds to wait for another ingest that is writing the same store (store/locks.py)
    wait: float = shared("--wait", 10.0)
    # a re-ingest that changes what existing runs were trained on is refused unless this is
    # set; then those runs are marked stale (store/binding.py)
    invalidate_runs: bool = opt(False, group=_RUN, identity="never",
                                help="Allow a re-ingest that changes what existing runs were "
                                     "trained on; those runs are marked stale (export and "
                                     "report refuse them).")
    # `asign check --repair` re-hashes every file to decide what is intact
    verify: bool = opt(False, cli=False, identity="never",
                       help="Re-hash every stored file to decide what is intact (repair).")

    def to_json(self) -> dict[str, Any]:
        from asign.jsonable import jsonable

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
    from asign.encoders import AUTO, get_encoder_spec
    from asign.errors import AsignError, ConfigErrors

    problems = declared_problems(cfg)  # choices and bounds of every declared option
    if not cfg.steps:
        problems.append(f"--steps must be a non-empty subset of {','.join(STEPS)}")
    if cfg.encoder != AUTO:
        try:
            get_encoder_spec(cfg.encoder)
        except AsignError as err:
            problems.append(f"--encoder: {err}")
    if not cfg.panel_from.strip():
        problems.append("--panel-from must be first, middle, a layer number or a section id")
    from asign.encoders.stain import TTA_VIEWS

    if cfg.tta not in TTA_VIEWS:
        problems.append(f"--tta must be one of {', '.join(map(str, TTA_VIEWS))}, got {cfg.tta}")
    if cfg.workers and cfg.scheduler:
        problems.append("give --workers (a local cluster) or --scheduler (a running one), not both")
    if problems:
        raise ConfigErrors(problems, what="asign ingest options", fix="see `asign ingest --help`")
