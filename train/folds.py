"""One fold of a training run: train (or compute) the model, predict the fold's test
samples, score them. :class:`FoldRun` holds what the folds of one run share; the run
itself (``asign.train.run``) and a cluster worker (train/on_cluster.py) drive it the same
way, so there is one resume path (``FoldRun.start``)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from asign.train.config import TrainConfig

if TYPE_CHECKING:
    import numpy as np

    from asign.store.checkpoints import Checkpoint

log = logging.getLogger(__name__)

@dataclass
class FoldRun:
    """What the folds of one run share: its samples, their graph tasks, the checkpoint it
    resumes from and writes, the progress reporter, and what the folds record."""

    rid: str
    samples: dict[str, Any]
    recipe: Any  # the spot-encoder recipe when fine-tuning, else None
    ckpt_path: Checkpoint
    ckpt: dict | None
    finished: dict[int, dict]  # fold → trained weights
    rep: Any
    budget: int | None = None  # epochs left in this call (time-boxed sessions)
    tasks: dict[tuple, Any] = field(default_factory=dict)
    epoch_s: list[float] = field(default_factory=list)
    selection: dict[int, dict] = field(default_factory=dict)
    blocked: dict[str, Any] = field(default_factory=dict)  # blocked_graphs of released tasks

    @classmethod
    def start(cls, cfg: TrainConfig, rid: str, path: Checkpoint, samples: dict[str, Any],
              recipe: Any, rep: Any, budget: int | None = None) -> FoldRun:
        """The one resume path (here and on a cluster worker): the run's checkpoint when
        ``--resume`` asks for it and it belongs to this run, and the folds it finished."""
        ckpt = path.load() if cfg.resume and cfg.spec.neural else None
        if ckpt is not None and ckpt.get("run_id") != rid:
            ckpt = None
        if cfg.resume and cfg.spec.neural and ckpt is None:
            log.info("no checkpoint for run %s: starting from epoch 0", rid)
        finished = dict(ckpt["finished"]) if ckpt else {}
        return cls(rid, samples, recipe, path, ckpt, finished, rep, budget)

    def release_tasks(self) -> None:
        """Drop the graph tasks, keeping what their batching recorded; a later fold re-makes
        the ones it needs (deterministically). A Visium HD stack's tasks and their graph
        caches are GBs that nothing after a fold's predictions reads, and each fold's would
        otherwise stay to the end of the run."""
        import gc

        from asign.train.batching import release_freed_memory

        self.blocked.update(blocked_graphs(self.tasks))
        self.tasks.clear()
        gc.collect()  # graph objects in reference cycles hold their tensors until collected
        release_freed_memory()


def blocked_graphs(tasks: dict) -> dict[str, Any]:
    """Graphs trained on spatial blocks (batching.py): what one epoch did."""
    return {t.name: vars(t.cache["batching"]) for t in tasks.values() if "batching" in t.cache}


def one_fold(cfg: TrainConfig, fold: Any, run: FoldRun) -> tuple[list[dict] | None, list, float]:
    """Train (or compute) one fold and score its test samples: (metric rows, prediction
    blocks, seconds); rows None when the epoch budget ran out first."""
    import numpy as np

    from asign.train import intervals
    from asign.train.metrics import evaluate
    from asign.train.results import PredictionBlock, metric_rows

    samples, tasks = run.samples, run.tasks
    rows: list[dict] = []
    blocks: list[PredictionBlock] = []
    preds: dict[str, np.ndarray] = {}
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t = time.perf_counter()
    if cfg.spec.neural:
        from asign.train import final

        models = final.fit_members(cfg, fold, run)
        if models is None:
            return None, [], 0.0
        chosen = []
        for plan in fold.test:
            s = samples[plan.sample_id]
            task = _task(tasks, s, plan.visible, cfg, _by_layer(plan))
            raw: list[np.ndarray] = []
            preds[plan.sample_id], b, info = final.predict(cfg, models, task, s, raw)
            if b is not None:
                bounds[plan.sample_id] = b
            chosen.append((plan, info, final.scores(s, plan, raw.pop()) if info else None))
            del task
        del models
        run.release_tasks()  # before the paired baselines: their peak came on top of these
        for plan, info, unshrunk in chosen:
            run.selection.setdefault(fold.fold, {}).update(
                final.record(cfg, samples[plan.sample_id], plan, preds[plan.sample_id], info,
                             unshrunk))
    else:
        for plan in fold.test:
            preds[plan.sample_id], bounds_, how = _baseline(cfg, samples[plan.sample_id], plan)
            if bounds_ is not None:
                bounds[plan.sample_id] = bounds_
            if how:  # the interval method and its fitted error scale, as networks record it
                run.selection.setdefault(fold.fold, {})["intervals"] = how
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
            rows += metric_rows(run.rid, fold.fold, plan.sample_id, sec, fold.setting, values)
        out = s.in_sections(plan.predicted)
        lo, hi = bounds.get(plan.sample_id, (None, None))
        blocks.append(PredictionBlock(fold.fold, plan.sample_id,
                                      np.asarray(s.sections, dtype=object)[s.section[out]],
                                      s.spot_ids[out], pred[out],
                                      None if lo is None else lo[out],
                                      None if hi is None else hi[out]))
    return rows, blocks, fold_s


def fold_timings(timings: dict[str, Any], selection: dict[int, dict], blocked: dict[str, Any],
                  epoch_s: list[float]) -> None:
    import numpy as np
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
    import numpy as np

    from asign.errors import NumericError

    out = s.in_sections(plan.predicted)
    bad = out & ~np.isfinite(pred).all(axis=1)
    if bad.any():
        first = s.sections[int(s.section[np.flatnonzero(bad)[0]])]
        raise NumericError(f"section {first}: {cfg.model} predicted NaN/inf for "
                           f"{int(bad.sum())} spots "
                           f"(sample {s.sample_id}, fold {fold}); run stopped, nothing scored",
                           path=cfg.store, fix="run `asign check` on the store; try a lower --lr")


def fit_fold(cfg: TrainConfig, fold: Any, run: FoldRun) -> Any:
    """Train (or restore) the fold's model; None when the epoch budget ran out first."""
    import numpy as np

    from asign.train import loop

    samples, tasks, ckpt, finished, rep = run.samples, run.tasks, run.ckpt, run.finished, run.rep

    any_sample = next(iter(samples.values()))
    model = loop.build(cfg, any_sample.spot_feat.shape[1], len(any_sample.genes), fold.fold,
                       spot_encoder=run.recipe)
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
                                            center_labels=cfg.center_labels,
                                            validation=cfg.validation)
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
        run.ckpt_path.save({"run_id": run.rid, "fold": fold.fold, "state": asdict(state),
                            "finished": finished})

    task_id = rep.task(f"{cfg.model} fold {fold.fold}", total=cfg.epochs)
    if resume is not None:
        rep.advance(task_id, resume.epoch)

    def on_epoch(epoch: int, loss: float, seconds: float) -> None:
        run.epoch_s.append(seconds)
        rep.advance(task_id, 1, loss=f"{loss:.4f}", epoch=epoch + 1)

    stop = run.budget
    start = resume.epoch if resume else 0
    state = loop.fit(cfg, model, train_tasks, fold.fold, resume_from=resume,
                     on_epoch=on_epoch, save=save, stop_after=stop, select=select)
    rep.done(task_id)
    if stop is not None:
        run.budget = stop - (state.epoch - start)
    if state.epoch < cfg.epochs:
        return None
    best = run.selection
    best[fold.fold] = {"best_epoch": state.best_epoch,
                       "val_score": state.best_score if np.isfinite(state.best_score) else None}
    if cfg.calibrate_gate and cfg.uses_cli:
        from asign.train.calibrate import calibrate_gate

        best[fold.fold]["gate"] = calibrate_gate(cfg, model, select or train_tasks)
    finished[fold.fold] = loop._cpu_state(model)
    run.ckpt_path.save({"run_id": run.rid, "fold": None, "state": None, "finished": finished})
    return model


def _task(tasks: dict, s: Any, visible: tuple[str, ...], cfg: TrainConfig,
          by_layer: bool = False) -> Any:
    from asign.train import loop

    key = (s.sample_id, visible, "3d")
    if key not in tasks:
        # a test sample with ≥ 2 known layers validates on a whole held-out known layer
        tasks[key] = loop.make_task(s, visible, cfg.device, val_fraction=cfg.val_fraction,
                                    seed=cfg.seed, feature_norm=cfg.feature_norm,
                                    center_labels=cfg.center_labels, val_by_layer=by_layer,
                                    validation=cfg.validation)
    return tasks[key]


def task_of(tasks: dict, s: Any, visible: tuple[str, ...], cfg: TrainConfig) -> Any:
    """The graph task of sample ``s`` with ``visible`` labelled sections, made once per run
    (the cross-patient check reads the tasks its networks trained on: train/transfer.py)."""
    return _task(tasks, s, visible, cfg)


def _by_layer(plan: Any) -> bool:
    return plan.role == "test" and len(plan.knowns) >= 2


def _baseline(cfg: TrainConfig, s: Any, plan: Any
              ) -> tuple[np.ndarray, tuple | None, dict[str, Any]]:
    """(N, G) baseline predictions for one test sample from its known layers only, their
    (lower, upper) intervals (train/intervals.py; None with coverage 0) and what the
    intervals' calibration chose."""

    from asign.train import intervals
    from asign.train.protocol import visible_labels

    y, known = visible_labels(s.labels, s.has_label, s.section, s.section_index(list(plan.knowns)))
    pred = _baseline_from(cfg, s, y, known)
    if not cfg.coverage:
        return pred, None, {}
    bounds, how = intervals.for_baseline(lambda m: _baseline_from(cfg, s, y, m), y, known,
                                         s.section, s.xy, pred, cfg.coverage, cfg.seed)
    return pred, bounds, how


def _baseline_from(cfg: TrainConfig, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, G) baseline predictions from the labels ``y`` of the ``known`` spots: the
    registered predictor of the model (``ModelSpec.baseline``, train/baselines.py)."""

    from asign.train import baselines

    return getattr(baselines, cfg.spec.baseline)(cfg, s, y, known)
