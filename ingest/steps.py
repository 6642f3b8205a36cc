"""The ingest steps, in order, each one record: its name, the parameters that enter its
fingerprint, and what it runs for one sample. The pipeline (pipeline.py) walks this list;
the tables each step writes are the store's business (store/layout.py, STEP_TABLES).

``register`` runs once for every sample of a call (it chooses one gene panel for all), so it
has no per-sample ``run``; every later step runs per sample and is skipped when finished
under the same fingerprint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asign.ingest.config import IngestConfig
    from asign.ingest.runner import Runner
    from asign.progress import Reporter
    from asign.store import Store

#: (store, cfg, sample_id, fingerprint, reporter, runner) -> what the manifest records
RunStep = Callable[["Store", "IngestConfig", str, str, "Reporter", "Runner"], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    name: str
    params: Callable[[IngestConfig], dict[str, Any]]
    run: RunStep | None = None


def _no_params(cfg: IngestConfig) -> dict[str, Any]:
    return {}  # register fingerprints its inputs and options itself (step_register.py)


def _align_params(cfg: IngestConfig) -> dict[str, Any]:
    return {"align": cfg.align.__dict__}


def _patches_params(cfg: IngestConfig) -> dict[str, Any]:
    from asign.ingest.step_features import stored_patch_px

    params: dict[str, Any] = {"sizes": [cfg.spot_px, cfg.region_px, cfg.global_px]}
    stored = stored_patch_px(cfg)
    if stored != cfg.spot_px:  # only then: fingerprints of existing stores stay valid
        params["stored_px"] = stored
    if cfg.patch_um is not None:  # likewise
        params["patch_um"] = cfg.patch_um
    return params


def _embed_params(cfg: IngestConfig) -> dict[str, Any]:
    params = {"encoder": cfg.encoder, "weights": cfg.weights, "precision": cfg.precision,
              "batch_size": cfg.batch_size, "seed": cfg.seed}
    # only when they change the images: fingerprints of stores embedded without them stay valid
    if cfg.stain_norm != "none":
        params["stain_norm"] = cfg.stain_norm
    if cfg.tta != 1:
        params["tta"] = cfg.tta
    return params


def _graph_params(cfg: IngestConfig) -> dict[str, Any]:
    return {"k_same": cfg.k_same, "top_k_cross": cfg.top_k_cross, "cross_weight": cfg.cross_weight}


# The step modules import the heavy libraries (ANTs, torch): each is imported when its
# step runs, so the CLI and `--steps register` never load them.

def _align(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
           runner: Runner) -> dict[str, Any]:
    from asign.ingest.step_align import run_align

    return run_align(store, cfg, sample_id, rep, runner)


def _patches(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
             runner: Runner) -> dict[str, Any]:
    from asign.hashing import fingerprint
    from asign.ingest.step_features import run_patches

    # embed next in this run: its spot level rides along with the cut (ingest/spot_stream.py)
    embed_fp = fingerprint("embed", fp, _embed_params(cfg)) if "embed" in cfg.steps else None
    return run_patches(store, cfg, sample_id, fp, rep, runner, embed_fp=embed_fp)


def _embed(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
           runner: Runner) -> dict[str, Any]:
    from asign.ingest.step_features import run_embed

    return run_embed(store, cfg, sample_id, fp, rep, runner)


def _graph(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
           runner: Runner) -> dict[str, Any]:
    from asign.ingest.step_graph import run_graph

    return run_graph(store, cfg, sample_id, rep, runner)


PIPELINE: tuple[Step, ...] = (
    Step("register", _no_params),
    Step("align", _align_params, _align),
    Step("patches", _patches_params, _patches),
    Step("embed", _embed_params, _embed),
    Step("graph", _graph_params, _graph),
)
STEPS: tuple[str, ...] = tuple(s.name for s in PIPELINE)
STEP: dict[str, Step] = {s.name: s for s in PIPELINE}


def previous(step: str) -> str:
    """The step whose fingerprint this one's builds on."""
    return STEPS[STEPS.index(step) - 1]
