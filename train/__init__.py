"""`asign train`: read a feature store, train/evaluate one model or baseline, write results.

``run(cfg)`` plans the folds (protocol.py), loads each sample once from the store
(data.py), trains the neural models (loop.py) or computes a baseline (baselines.py),
scores every hidden section (metrics.py) and writes the ``runs``, ``metrics`` and
``predictions`` tables, one Parquet file per run (results.py). A per-epoch checkpoint makes
``--resume`` continue an interrupted run; a finished run can be resumed to re-predict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from asign.train.config import MODELS, TrainConfig, validate

if TYPE_CHECKING:
    from asign.train.results import RunResult

__all__ = ["MODELS", "RunResult", "TrainConfig", "run"]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``RunResult`` on demand: importing this package (as every config import does) must
    not load the store and Arrow (``asign --help`` reads the configs)."""
    if name == "RunResult":
        from asign.train.results import RunResult

        return RunResult
    raise AttributeError(name)


def run(cfg: TrainConfig, *, reporter: Any = None, max_epochs: int | None = None,
        cluster: Any = None) -> RunResult:
    """Run one model on a store and record the results (see the module docstring).

    ``reporter``: an ``asign.progress.Reporter`` (default: rich bars on a terminal, log
    lines otherwise). ``max_epochs``: stop after this many epochs in this call; the run is
    recorded as ``interrupted`` and ``resume=True`` continues it (time-boxed sessions).
    ``cluster``: an ``asign.cluster.ClusterConfig``; with K ≥ 2 folds each fold is a Dask
    task (the driver writes the run's files, as serially).
    """
    from asign.store import open_store
    from asign.store.locks import reader_lock

    validate(cfg)
    _check_device(cfg)
    on_cluster = (cluster is not None and cluster.distributed and cfg.folds >= 2
                  and max_epochs is None)
    if on_cluster and cfg.threads is None and not cluster.scheduler:
        from asign.cluster import threads_per_worker

        cfg = cfg.with_(threads=threads_per_worker(cluster.workers, cluster.cores))
    if not on_cluster and cfg.threads is None and cfg.device == "cpu" and cfg.spec.uses_torch:
        from asign.cluster import idle_cores

        # Not part of the run id; recorded in the run's config (pass --threads to fix it).
        cfg = cfg.with_(threads=idle_cores())
    store = open_store(cfg.store)
    # Shared with other trains, excluded by an ingest (which rewrites what a train reads).
    with reader_lock(store.layout.ingest_lock, wait=cfg.wait):
        return _run_read(cfg, store, reporter, max_epochs, cluster, on_cluster)


def _run_read(cfg: TrainConfig, store: Any, reporter: Any, max_epochs: int | None,
              cluster: Any, on_cluster: bool) -> RunResult:
    from asign.cluster import here
    from asign.store.atomic import remove_stale_temps
    from asign.store.locks import run_lock
    from asign.train import results as res
    from asign.train.protocol import SectionInfo, fold_assignment, plan_folds, plan_transfer

    remove_stale_temps(store.root)  # e.g. the checkpoint a killed run was writing
    created = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    infos = [SectionInfo(str(r["sample_id"]), str(r["section_id"]), int(r["z"]),
                         bool(r["has_counts"]), bool(r["has_image"]), bool(r.get("has_coords")))
             for r in store.read("sections").to_pylist()]
    # a store written before ids were vetted may hold two samples in one file: refuse it
    from asign.store.names import check_names

    check_names("sample id", sorted({i.sample_id for i in infos}), where=store.root,
                fix="re-ingest these samples under distinct ids into a new --store",
                portable=False)
    plan_args = dict(known=cfg.known, samples=cfg.samples, extra_2d=cfg.extra_2d)
    fold_of = None
    if cfg.test_samples:
        folds = plan_transfer(infos, test_samples=cfg.test_samples, samples=cfg.samples)
    elif cfg.folds >= 2:
        targets = [p.sample_id for p in plan_folds(infos, folds=1, **plan_args)[0].test]
        con = store.duckdb()
        try:
            fold_of = fold_assignment(con, targets, cfg.folds, cfg.seed)
        finally:
            con.close()
    if not cfg.test_samples:
        folds = plan_folds(infos, folds=cfg.folds, fold_of=fold_of, **plan_args)
    _check_images(cfg, infos, folds)

    store_fp = res.store_hash(store)
    rid = res.run_id(cfg, store_fp)
    commit = res.git_commit()
    timings: dict[str, Any] = {}
    row = dict(store_fp=store_fp, commit=commit, created_at=created, timings=timings,
               plan=res.plan_summary(folds), where=here(), binding=_binding(cfg, store, folds))
    # Held while this process lives: a `running` row nobody holds this for reads as
    # `interrupted` (store/locks.py), however the process ended.
    with run_lock(store.layout.writable(store.layout.run_lock(rid))):
        return _run_locked(cfg, store, rid, folds, row, timings, t0, reporter, max_epochs,
                           cluster if on_cluster else None)


def _run_locked(cfg: TrainConfig, store: Any, rid: str, folds: list, row: dict[str, Any],
                timings: dict[str, Any], t0: float, reporter: Any, max_epochs: int | None,
                cluster: Any) -> RunResult:
    from asign.progress import reporter as make_reporter
    from asign.train import results as res

    res.write_run_row(store, rid, cfg, status="running", seconds=None, **row)
    for name in ("metrics", "predictions"):  # results of an earlier run of this id are stale
        store.remove(name, rid)
    log.info("run %s: %s, %s, %d fold(s)", rid, cfg.model, cfg.setting, len(folds))
    status = "failed"
    try:
        ctx = make_reporter() if reporter is None else contextlib.nullcontext(reporter)
        with ctx as rep, deterministic(cfg), _client(cluster) as client:
            outcome, metric_rows, blocks, genes = _execute(
                cfg, store, rid, folds, rep, timings, max_epochs, client)
        if outcome == "done":
            table = res.write_metrics(store, rid, metric_rows)
            if cfg.save_predictions:
                res.write_predictions(store, rid, genes, blocks)
        else:
            table = res.write_metrics(store, rid, [])  # interrupted: no scores yet
        status = outcome  # only once every result is written
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            status = "interrupted"
        # A run that did not finish keeps none of its results: metrics written before its
        # predictions failed (a full disk at 800k bins) read as a finished run's. The
        # error raised is what the user needs, not a second one from the clean-up.
        with contextlib.suppress(Exception):
            for name in ("metrics", "predictions"):
                store.remove(name, rid)
        raise
    finally:
        seconds = time.perf_counter() - t0
        timings["total_s"] = round(seconds, 3)
        res.write_run_row(store, rid, cfg, status=status, seconds=seconds, **row)
    from asign.train.results import RunResult

    return RunResult(rid, cfg.run, cfg.model, cfg.setting, status, seconds, table, timings)


@contextlib.contextmanager
def _client(cluster: Any) -> Iterator[Any]:
    if cluster is None:
        yield None
        return
    from asign.cluster import connect

    with connect(cluster) as client:
        yield client


def _binding(cfg: TrainConfig, store: Any, folds: list) -> dict[str, Any]:
    """The store state this run reads (store/binding.py): export and report refuse the run
    once a re-ingest changes it. Same reads as ``load_samples``."""
    from asign.store.binding import binding_of, state_of

    needed = {p.sample_id for f in folds for p in f.samples}
    return binding_of(state_of(store), needed,
                      features=cfg.spec.images or cfg.finetune_spot_encoder,
                      graph=cfg.spec.neural or cfg.spec.cross_layer)


def load_samples(cfg: TrainConfig, store: Any, folds: list) -> tuple[dict, Any]:
    """The samples the folds need, each loaded once, and the spot-encoder recipe (or None)."""
    from asign.train.data import load_sample

    needed = sorted({p.sample_id for f in folds for p in f.samples})
    recipe = None
    if cfg.finetune_spot_encoder:
        from asign.train.finetune import EncoderRecipe

        recipe = EncoderRecipe.from_manifest(store.embedding_info(),
                                             cfg.encoder, store.layout.manifest)
    graph = cfg.spec.neural or cfg.spec.cross_layer  # mean, idw, similarity use no edges
    # mean, idw, cli read no embeddings
    samples = {s: load_sample(store, s, encoder=cfg.encoder, patches=recipe is not None,
                              graph=graph, features=cfg.spec.images)
               for s in needed}
    if recipe is not None:
        samples = {s: dataclasses.replace(d, patches=recipe.encoder_input(s, d.patches))
                   for s, d in samples.items()}
    return samples, recipe


def _execute(cfg: TrainConfig, store: Any, rid: str, folds: list, rep: Any,
             timings: dict[str, Any], max_epochs: int | None, client: Any = None
             ) -> tuple[str, list[dict], list, tuple[str, ...]]:
    from asign.train.results import PredictionBlock

    if client is not None:
        from asign.train.on_cluster import execute_on_cluster

        return execute_on_cluster(cfg, store, rid, folds, rep, timings, client)
    t = time.perf_counter()
    samples, recipe = load_samples(cfg, store, folds)
    genes = next(iter(samples.values())).genes
    timings["load_s"] = round(time.perf_counter() - t, 3)

    from asign.train import transfer
    from asign.train.folds import FoldRun, fold_timings, one_fold

    # the cross-patient check trains and scores its own way (train/transfer.py)
    fold_fn = transfer.one_fold if cfg.test_samples else one_fold
    run = FoldRun.start(cfg, rid, store.checkpoint(rid), samples, recipe, rep, max_epochs)
    rows: list[dict] = []
    blocks: list[PredictionBlock] = []
    for fold in folds:
        fold_rows, fold_blocks, fold_s = fold_fn(cfg, fold, run)
        if fold_rows is None:
            return "interrupted", [], [], genes
        timings.setdefault("fold_s", []).append(fold_s)
        rows += fold_rows
        blocks += fold_blocks
    run.release_tasks()
    fold_timings(timings, run.selection, run.blocked, run.epoch_s)
    return "done", rows, blocks, genes


def _check_images(cfg: TrainConfig, infos: list, folds: list) -> None:
    """Models that read image features refuse graphs with sections placed by coordinates
    alone (mean, idw and cli need no image)."""
    from asign.errors import ConfigError

    if not cfg.spec.images:
        return
    used = {s for f in folds for p in f.samples for s in p.sections}
    bare = sorted(i.section_id for i in infos if i.section_id in used and not i.has_image)
    if bare:
        raise ConfigError(f"--model {cfg.model} reads image features, but sections "
                          f"{', '.join(bare)} have no H&E image (placed by given coordinates)",
                          fix="use --model mean, idw or cli on this store, or ingest those "
                              "sections with their images")


def _check_device(cfg: TrainConfig) -> None:
    from asign.errors import ConfigError

    if cfg.device == "cuda" and cfg.spec.uses_torch:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA device",
                              fix="use --device cpu, or install a CUDA build of torch")
    if cfg.finetune_spot_encoder and cfg.device == "cpu":
        log.warning("--finetune-spot-encoder on a CPU: every epoch re-encodes every spot "
                    "patch, expect minutes per epoch (a GPU is the intended setting)")


@contextlib.contextmanager
def deterministic(cfg: TrainConfig) -> Iterator[None]:
    """Torch threads as configured, and deterministic kernels on CUDA; both restored after.

    On a CPU the kernels asign uses (dense ops, DGL's CSR SpMM, torch sparse CSR) are
    already deterministic for a fixed thread count (test_train_run checks identical metrics
    across runs), and switching the flag on costs a ~5 s import of torch._inductor, so it
    is left alone there."""
    if not cfg.spec.uses_torch:
        yield
        return
    import torch

    from asign.cluster import torch_threads

    cuda = cfg.device == "cuda"
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    if cuda:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch_threads(cfg.threads) if cfg.threads else contextlib.nullcontext():
            yield
    finally:
        if cuda:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
