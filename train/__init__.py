"""`asign train`: read a feature store, train/evaluate one model or baseline, write results.

``run(cfg)`` plans the folds (protocol.py), loads each sample once from the store
(data.py), trains the neural models (loop.py) or computes a baseline (baselines.py),
scores every hidden section (metrics.py) and writes the ``runs``, ``metrics`` and
``predictions`` tables, one Parquet file per run (results.py). A per-epoch checkpoint makes
``--resume`` continue an interrupted run; a finished run can be resumed to re-predict.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from asign.train.config import MODELS, TrainConfig, validate
from asign.train.results import RunResult

if TYPE_CHECKING:
    from asign.store.checkpoints import Checkpoint

__all__ = ["MODELS", "RunResult", "TrainConfig", "run"]

log = logging.getLogger(__name__)


def run(cfg: TrainConfig, *, reporter: Any = None, max_epochs: int | None = None,
        cluster: Any = None) -> RunResult:
    """Run one model on a store and record the results (see the module docstring).

    ``reporter``: an ``asign.progress.Reporter`` (default: rich bars on a terminal, log
    lines otherwise). ``max_epochs``: stop after this many epochs in this call; the run is
    recorded as ``interrupted`` and ``resume=True`` continues it (time-boxed sessions).
    ``cluster``: an ``asign.cluster.ClusterConfig``; with K ≥ 2 folds each fold is a Dask
    task (the driver writes the run's files, as serially).
    """
    from asign.cluster import here
    from asign.store import open_store
    from asign.store.atomic import remove_stale_temps
    from asign.store.locks import run_lock
    from asign.train import results as res
    from asign.train.protocol import SectionInfo, fold_assignment, plan_folds

    validate(cfg)
    _check_device(cfg)
    on_cluster = cluster is not None and cluster.distributed and cfg.folds >= 2 and max_epochs is None
    if on_cluster and cfg.threads is None and not cluster.scheduler:
        from asign.cluster import threads_per_worker

        cfg = cfg.with_(threads=threads_per_worker(cluster.workers, cluster.cores))
    if not on_cluster and cfg.threads is None and cfg.device == "cpu" and cfg.spec.uses_torch:
        from asign.cluster import idle_cores

        # Not part of the run id; recorded in the run's config (pass --threads to fix it).
        cfg = cfg.with_(threads=idle_cores())
    store = open_store(cfg.store)
    remove_stale_temps(store.root)  # e.g. the checkpoint a killed run was writing
    created = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    infos = [SectionInfo(str(r["sample_id"]), str(r["section_id"]), int(r["z"]),
                         bool(r["has_counts"]), bool(r["has_image"]), bool(r.get("has_coords")))
             for r in store.read("sections").to_pylist()]
    plan_args = dict(known=cfg.known, samples=cfg.samples, extra_2d=cfg.extra_2d)
    fold_of = None
    if cfg.folds >= 2:
        targets = [p.sample_id for p in plan_folds(infos, folds=1, **plan_args)[0].test]
        con = store.duckdb()
        try:
            fold_of = fold_assignment(con, targets, cfg.folds, cfg.seed)
        finally:
            con.close()
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
        with ctx as rep, _deterministic(cfg), _client(cluster) as client:
            status, metric_rows, blocks, genes = _execute(
                cfg, store, rid, folds, rep, timings, max_epochs, client)
        if status == "done":
            table = res.write_metrics(store, rid, metric_rows)
            if cfg.save_predictions:
                res.write_predictions(store, rid, genes, blocks)
        else:
            table = res.write_metrics(store, rid, [])  # interrupted: no scores yet
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        seconds = time.perf_counter() - t0
        timings["total_s"] = round(seconds, 3)
        res.write_run_row(store, rid, cfg, status=status, seconds=seconds, **row)
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
    once a re-ingest changes it. Same reads as ``_load``."""
    from asign.store.binding import binding_of, state_of

    needed = {p.sample_id for f in folds for p in f.samples}
    return binding_of(state_of(store), needed,
                      features=cfg.spec.images or cfg.finetune_spot_encoder,
                      graph=cfg.spec.neural or cfg.spec.cross_layer)


def _load(cfg: TrainConfig, store: Any, folds: list) -> tuple[dict, Any]:
    """The samples the folds need, each loaded once, and the spot-encoder recipe (or None)."""
    from asign.train.data import load_sample

    needed = sorted({p.sample_id for f in folds for p in f.samples})
    recipe = None
    if cfg.finetune_spot_encoder:
        from asign.train.finetune import EncoderRecipe

        recipe = EncoderRecipe.from_manifest(store.embedding_info(),
                                             cfg.encoder, store.layout.manifest)
    graph = cfg.spec.neural or cfg.spec.cross_layer  # mean, idw, similarity use no edges
    samples = {s: load_sample(store, s, encoder=cfg.encoder, patches=recipe is not None, graph=graph,
                              features=cfg.spec.images)  # mean, idw, cli read no embeddings
               for s in needed}
    return samples, recipe


def _execute(cfg: TrainConfig, store: Any, rid: str, folds: list, rep: Any,
             timings: dict[str, Any], max_epochs: int | None, client: Any = None
             ) -> tuple[str, list[dict], list, tuple[str, ...]]:
    from asign.train import loop
    from asign.train.results import PredictionBlock

    if client is not None:
        from asign.train.on_cluster import execute_on_cluster

        return execute_on_cluster(cfg, store, rid, folds, rep, timings, client)
    t = time.perf_counter()
    samples, recipe = _load(cfg, store, folds)
    genes = next(iter(samples.values())).genes
    timings["load_s"] = round(time.perf_counter() - t, 3)

    spec = cfg.spec
    ckpt_path = store.checkpoint(rid)
    ckpt = ckpt_path.load() if cfg.resume and spec.neural else None
    if ckpt is not None and ckpt.get("run_id") != rid:
        ckpt = None
    if cfg.resume and spec.neural and ckpt is None:
        log.info("no checkpoint for run %s: starting from epoch 0", rid)
    finished: dict[int, dict] = dict(ckpt["finished"]) if ckpt else {}
    tasks: dict[tuple, loop.GraphTask] = {}
    rows: list[dict] = []
    blocks: list[PredictionBlock] = []
    epoch_s: list[float] = []
    budget = [max_epochs]
    selection: dict[int, dict] = {}
    for fold in folds:
        fold_rows, fold_blocks, fold_s = _one_fold(cfg, fold, samples, tasks, rid, ckpt_path, ckpt,
                                                   finished, rep, epoch_s, budget, selection, recipe)
        if fold_rows is None:
            return "interrupted", [], [], genes
        timings.setdefault("fold_s", []).append(fold_s)
        rows += fold_rows
        blocks += fold_blocks
    _fold_timings(timings, selection, _blocked(tasks), epoch_s)
    return "done", rows, blocks, genes


def _blocked(tasks: dict) -> dict[str, Any]:
    """Graphs trained on spatial blocks (batching.py): what one epoch did."""
    return {t.name: vars(t.cache["batching"]) for t in tasks.values() if "batching" in t.cache}


def _one_fold(cfg: TrainConfig, fold: Any, samples: dict, tasks: dict, rid: str, ckpt_path: Checkpoint,
              ckpt: dict | None, finished: dict, rep: Any, epoch_s: list[float],
              budget: list[int | None], selection: dict[int, dict], recipe: Any
              ) -> tuple[list[dict] | None, list, float]:
    """Train (or compute) one fold and score its test samples: (metric rows, prediction
    blocks, seconds); rows None when the epoch budget ran out first."""
    from asign.train import intervals, loop
    from asign.train.metrics import evaluate
    from asign.train.results import PredictionBlock, metric_rows

    rows: list[dict] = []
    blocks: list[PredictionBlock] = []
    preds: dict[str, np.ndarray] = {}
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t = time.perf_counter()
    if cfg.spec.neural:
        model = _fit_fold(cfg, fold, samples, tasks, rid, ckpt_path, ckpt, finished, rep,
                          epoch_s, budget, selection, recipe)
        if model is None:
            return None, [], 0.0
        for plan in fold.test:
            s = samples[plan.sample_id]
            task = _task(tasks, s, plan.visible, cfg, _by_layer(plan))
            preds[plan.sample_id] = loop.predict(cfg, model, task)
            if cfg.coverage:
                bounds[plan.sample_id] = intervals.for_model(
                    cfg, model, task, s.xy, preds[plan.sample_id], cfg.coverage)
    else:
        for plan in fold.test:
            preds[plan.sample_id], bounds_ = _baseline(cfg, samples[plan.sample_id], plan)
            if bounds_ is not None:
                bounds[plan.sample_id] = bounds_
    fold_s = round(time.perf_counter() - t, 3)
    for plan in fold.test:
        _require_finite(cfg, fold.fold, samples[plan.sample_id], plan, preds[plan.sample_id])
    for plan in fold.test:
        s, pred = samples[plan.sample_id], preds[plan.sample_id]
        for sec in plan.scored:
            idx = s.in_sections([sec]) & s.has_label
            # The only place hidden labels are read: as ground truth for scoring.
            values = evaluate(pred[idx], s.labels[idx])
            if plan.sample_id in bounds:  # the intervals' empirical coverage and mean width
                measured = np.isfinite(s.labels[idx]).all(axis=0)  # absent genes: not scored
                lo, hi = (b[idx][:, measured] for b in bounds[plan.sample_id])
                values.update(coverage=intervals.coverage_of(lo, hi, s.labels[idx][:, measured]),
                              width=float(np.mean(hi - lo)))
            rows += metric_rows(rid, fold.fold, plan.sample_id, sec, fold.setting, values)
        out = s.in_sections(plan.predicted)
        lo, hi = bounds.get(plan.sample_id, (None, None))
        blocks.append(PredictionBlock(fold.fold, plan.sample_id,
                                      np.asarray(s.sections, dtype=object)[s.section[out]],
                                      s.spot_ids[out], pred[out],
                                      None if lo is None else lo[out], None if hi is None else hi[out]))
    return rows, blocks, fold_s


def _fold_timings(timings: dict[str, Any], selection: dict[int, dict], blocked: dict[str, Any],
                  epoch_s: list[float]) -> None:
    if selection:
        timings["selection"] = {str(k): v for k, v in selection.items()}
    if blocked:  # graphs trained on spatial blocks (batching.py): what one epoch did
        timings["batching"] = blocked
    if epoch_s:
        timings["epoch_s_mean"] = round(float(np.mean(epoch_s)), 4)
        timings["epochs_run"] = len(epoch_s)


def _require_finite(cfg: TrainConfig, fold: int, s: Any, plan: Any, pred: np.ndarray) -> None:
    """Predictions are scored and stored only when finite: a NaN would make the run look
    done with NaN metrics. Stops the run (status ``failed``) naming the first section."""
    from asign.errors import NumericError

    out = s.in_sections(plan.predicted)
    bad = out & ~np.isfinite(pred).all(axis=1)
    if bad.any():
        first = s.sections[int(s.section[np.flatnonzero(bad)[0]])]
        raise NumericError(f"section {first}: {cfg.model} predicted NaN/inf for {int(bad.sum())} spots "
                           f"(sample {s.sample_id}, fold {fold}); run stopped, nothing scored",
                           path=cfg.store, fix="run `asign check` on the store; try a lower --lr")


def _fit_fold(cfg: TrainConfig, fold: Any, samples: dict, tasks: dict, rid: str,
              path: Checkpoint, ckpt: dict | None, finished: dict, rep: Any, epoch_s: list[float],
              budget: list[int | None], best: dict[int, dict], recipe: Any = None) -> Any:
    """Train (or restore) the fold's model; None when the epoch budget ran out first."""
    from asign.train import loop

    any_sample = next(iter(samples.values()))
    model = loop.build(cfg, any_sample.spot_feat.shape[1], len(any_sample.genes), fold.fold,
                       spot_encoder=recipe)
    if fold.fold in finished:
        model.load_state_dict(finished[fold.fold])
        return model
    train_tasks, select = [], []
    for plan in fold.samples:
        s = samples[plan.sample_id]
        if plan.role == "train_2d":
            key = (plan.sample_id, plan.sections, "2d")
            if key not in tasks:
                sub = s.subset(s.in_sections(plan.sections), drop_cross=True)
                tasks[key] = loop.make_task(sub, plan.visible, cfg.device,
                                            name=f"{plan.sample_id}/{plan.sections[0]}",
                                            val_fraction=cfg.val_fraction, seed=cfg.seed,
                                            feature_norm=cfg.feature_norm,
                                            center_labels=cfg.center_labels)
            train_tasks.append(tasks[key])
        else:
            train_tasks.append(_task(tasks, s, plan.visible, cfg, _by_layer(plan)))
            if plan.role == "test":
                select.append(train_tasks[-1])
    resume = None
    if ckpt is not None and ckpt.get("fold") == fold.fold and ckpt.get("state"):
        resume = loop.FitState(**ckpt["state"])
    else:
        loop.init_output_bias(model, train_tasks)

    def save(state: loop.FitState) -> None:
        path.save({"run_id": rid, "fold": fold.fold, "state": asdict(state),
                                    "finished": finished})

    task_id = rep.task(f"{cfg.model} fold {fold.fold}", total=cfg.epochs)
    if resume is not None:
        rep.advance(task_id, resume.epoch)

    def on_epoch(epoch: int, loss: float, seconds: float) -> None:
        epoch_s.append(seconds)
        rep.advance(task_id, 1, loss=f"{loss:.4f}", epoch=epoch + 1)

    stop = budget[0]
    start = resume.epoch if resume else 0
    state = loop.fit(cfg, model, train_tasks, fold.fold, resume_from=resume,
                     on_epoch=on_epoch, save=save, stop_after=stop, select=select)
    rep.done(task_id)
    if stop is not None:
        budget[0] = stop - (state.epoch - start)
    if state.epoch < cfg.epochs:
        return None
    best[fold.fold] = {"best_epoch": state.best_epoch,
                       "val_score": state.best_score if np.isfinite(state.best_score) else None}
    if cfg.calibrate_gate and cfg.uses_cli:
        from asign.train.calibrate import calibrate_gate

        best[fold.fold]["gate"] = calibrate_gate(cfg, model, select or train_tasks)
    finished[fold.fold] = loop._cpu_state(model)
    path.save({"run_id": rid, "fold": None, "state": None,
                                "finished": finished})
    return model


def _task(tasks: dict, s: Any, visible: tuple[str, ...], cfg: TrainConfig,
          by_layer: bool = False) -> Any:
    from asign.train import loop

    key = (s.sample_id, visible, "3d")
    if key not in tasks:
        # a test sample with ≥ 2 known layers validates on a whole held-out known layer
        tasks[key] = loop.make_task(s, visible, cfg.device, val_fraction=cfg.val_fraction,
                                    seed=cfg.seed, feature_norm=cfg.feature_norm,
                                    center_labels=cfg.center_labels, val_by_layer=by_layer)
    return tasks[key]


def _by_layer(plan: Any) -> bool:
    return plan.role == "test" and len(plan.knowns) >= 2


def _baseline(cfg: TrainConfig, s: Any, plan: Any) -> tuple[np.ndarray, tuple | None]:
    """(N, G) baseline predictions for one test sample from its known layers only, and
    their (lower, upper) intervals (train/intervals.py; None with coverage 0)."""
    from asign.train import intervals
    from asign.train.protocol import visible_labels

    y, known = visible_labels(s.labels, s.has_label, s.section, s.section_index(list(plan.knowns)))
    pred = _baseline_from(cfg, s, y, known)
    if not cfg.coverage:
        return pred, None
    return pred, intervals.for_baseline(lambda m: _baseline_from(cfg, s, y, m), y, known, s.section,
                                        s.xy, pred, cfg.coverage, cfg.seed)


def _baseline_from(cfg: TrainConfig, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, G) baseline predictions from the labels ``y`` of the ``known`` spots: the
    registered predictor of the model (``ModelSpec.baseline``, train/baselines.py)."""
    from asign.train import baselines

    return getattr(baselines, cfg.spec.baseline)(cfg, s, y, known)


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
def _deterministic(cfg: TrainConfig) -> Iterator[None]:
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
