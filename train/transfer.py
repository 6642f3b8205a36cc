"""The cross-patient check (``asign train --test-samples B``): models trained on every
labelled section of the other samples predict a test sample from its images alone.

The test sample has no known layer, so only models that need none run here: the training
spots' mean profile (the baseline every figure is read against), ``similarity`` and
``ridge`` (their known spots are the training samples' labelled spots) and networks
without label propagation or cross-layer edges (asign2d). Models that propagate from a
known layer (asign3d, cli) or interpolate its spots in space (idw, ridge+idw) are refused
in one line: the test sample has no known layer and lies in another coordinate frame.

What each model reads of the test sample: its spot embeddings (z-scored per section with
its own statistics, as every section is: images only), never its labels. Labels of the
test sample are read only to score. Genes of the panel that a test section's counts lack
are masked at ingest and left out of its scores (metrics.evaluate).

Networks: trained as in a within-sample run, on the training samples' graphs with their
blocked validation (epoch, shrinkage). A network learns deviations from its graph's
training mean (``center_labels``); the test sample's offset is the training spots' mean
profile, the only profile it can have. Shrinkage toward ``mean`` or ``ridge`` uses weights
chosen on the training samples' held-out blocks, a within-patient estimate that is
optimistic across patients. No intervals are made in this setting: their calibration rests
on known spots of the predicted sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from asign.train.config import TrainConfig


@dataclass(frozen=True)
class Pool:
    """The training samples' labelled spots, stacked."""

    y: np.ndarray  # (n, G) labels
    xy: np.ndarray  # (n, 2) aligned coordinates (each sample's own frame: blocks of CV)
    feat: np.ndarray | None  # (n, D) spot embeddings as stored (similarity)
    feat_z: np.ndarray | None  # (n, D) z-scored per section (ridge, as the networks see them)


def _mean(cfg: TrainConfig, pool: Pool, s: Any) -> np.ndarray:
    from asign.train.baselines import mean_profile

    return mean_profile(pool.y, s.n_spots)


def _similarity(cfg: TrainConfig, pool: Pool, s: Any) -> np.ndarray:
    from asign.train.baselines import similarity

    return similarity(pool.feat, pool.y, s.spot_feat, k=cfg.similarity_k)


def _ridge(cfg: TrainConfig, pool: Pool, s: Any) -> np.ndarray:
    from asign.train.baselines import section_zscored
    from asign.train.ridge import RidgePath, choose_alpha

    alpha, _ = choose_alpha(pool.feat_z, pool.y, pool.xy)  # blocked CV on the training spots
    return RidgePath(pool.feat_z, pool.y).predict(section_zscored(s), alpha, np.float32)


#: the baselines that predict a sample with no known layer: (cfg, pool, test sample) → (N, G)
TRANSFER_BASELINES: dict[str, Callable[[TrainConfig, Pool, Any], np.ndarray]] = {
    "mean": _mean, "similarity": _similarity, "ridge": _ridge}


def transfers(name: str) -> bool:
    """Whether model ``name`` can predict a sample without a known layer."""
    from asign.train.config import MODELS

    spec = MODELS[name]
    if spec.neural:
        return not spec.cli and not spec.cross_layer
    return name in TRANSFER_BASELINES


def transfer_problem(cfg: TrainConfig) -> str | None:
    """The one-line refusal of a model (or option) the cross-patient check cannot run."""
    from asign.train.config import MODELS

    if not transfers(cfg.model):
        ok = ", ".join(m for m in MODELS if transfers(m))
        return (f"--test-samples: --model {cfg.model} needs a known layer in the test sample "
                f"(it has none in the cross-patient check); use one of {ok}")
    if cfg.folds != 1:
        return "--test-samples is its own protocol: leave --folds at 1"
    if set(cfg.test_samples) & set(cfg.samples):
        return "--test-samples must not also be among the training --samples"
    return None


def pool_of(cfg: TrainConfig, samples: dict[str, Any], fold: Any) -> Pool:
    from asign.train.baselines import section_zscored
    from asign.train.protocol import visible_labels

    ys, xys, feats, feats_z = [], [], [], []
    for plan in fold.samples:
        if plan.role != "train":
            continue
        s = samples[plan.sample_id]
        y, rows = visible_labels(s.labels, s.has_label, s.section,
                                 s.section_index(list(plan.visible)))
        ys.append(y[rows])
        xys.append(s.xy[rows])
        if cfg.spec.images:
            feats.append(s.spot_feat[rows].astype(np.float32))
            feats_z.append(section_zscored(s)[rows])
    return Pool(np.concatenate(ys), np.concatenate(xys),
                np.concatenate(feats) if feats else None,
                np.concatenate(feats_z) if feats_z else None)


def one_fold(cfg: TrainConfig, fold: Any, run: Any) -> tuple[list[dict] | None, list, float]:
    """Train on the fold's training samples, predict and score its test samples: (metric
    rows, prediction blocks, seconds); rows None when the epoch budget ran out first."""
    from asign.train.metrics import evaluate
    from asign.train.results import PredictionBlock, metric_rows

    t = time.perf_counter()
    pool = pool_of(cfg, run.samples, fold)
    preds: dict[str, np.ndarray] = {}
    if cfg.spec.neural:
        from asign.train import final
        from asign.train.protocol import Fold

        train_fold = Fold(fold.fold, fold.setting,
                          tuple(p for p in fold.samples if p.role == "train"))
        models = final.fit_members(cfg, train_fold, run)
        if models is None:
            return None, [], 0.0
        for plan in fold.test:
            preds[plan.sample_id], info = _network(cfg, models, train_fold, run, pool,
                                                   run.samples[plan.sample_id])
            run.selection.setdefault(fold.fold, {}).update(info)
    else:
        for plan in fold.test:
            preds[plan.sample_id] = TRANSFER_BASELINES[cfg.model](cfg, pool,
                                                                  run.samples[plan.sample_id])
    fold_s = round(time.perf_counter() - t, 3)
    rows: list[dict] = []
    blocks: list[PredictionBlock] = []
    for plan in fold.test:
        s, pred = run.samples[plan.sample_id], preds[plan.sample_id]
        if not np.isfinite(pred).all():
            from asign.errors import NumericError

            raise NumericError(f"sample {s.sample_id}: {cfg.model} predicted NaN/inf",
                               path=cfg.store, fix="run `asign check` on the store")
        for sec in plan.scored:
            idx = s.in_sections([sec]) & s.has_label
            # The only place the test sample's labels are read: as ground truth for scoring.
            rows += metric_rows(run.rid, fold.fold, plan.sample_id, sec, fold.setting,
                                evaluate(pred[idx], s.labels[idx]))
        out = s.in_sections(plan.predicted)
        blocks.append(PredictionBlock(fold.fold, plan.sample_id,
                                      np.asarray(s.sections, dtype=object)[s.section[out]],
                                      s.spot_ids[out], pred[out], None, None))
    return rows, blocks, fold_s


def _network(cfg: TrainConfig, models: list[Any], train_fold: Any, run: Any, pool: Pool,
             s: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The networks' prediction of test sample ``s``, shrunk toward a transfer baseline:
    prior and weights chosen by shrink.choose on the training samples' held-out blocks."""
    from asign.train import intervals, loop, shrink
    from asign.train.folds import task_of

    tasks = [task_of(run.tasks, run.samples[p.sample_id], p.visible, cfg)
             for p in train_fold.samples]
    task = loop.make_task(s, (), cfg.device, feature_norm=cfg.feature_norm,
                          center_labels=False)
    task = replace(task, offset=pool.y.mean(axis=0).astype(np.float32))
    pred = np.mean([loop.predict(cfg, m, task) for m in models], axis=0)
    info: dict[str, Any] = {}
    held = [(run.samples[p.sample_id], t) for p, t in zip(train_fold.samples, tasks,
                                                          strict=True)
            if t.val.any() and t.train.any()]
    if not (cfg.shrink and held):
        return pred.astype(np.float32), info
    val_pred = np.concatenate([np.mean([_validation(cfg, m, t) for m in models], axis=0)
                               for _, t in held])
    ys = [t.y.float().cpu().numpy() + t.offset for _, t in held]
    # held-out groups of blocks within each training sample, numbered apart
    group = np.concatenate([intervals.calibration_groups(t, sp.xy) + k * intervals.N_BLOCKS
                            for k, (sp, t) in enumerate(held)])
    choice = shrink.choose(
        val_pred,
        {kind: np.concatenate([shrink.prior(cfg, kind, sp, y, t.train)[t.val]
                               for (sp, t), y in zip(held, ys, strict=True)])
         for kind in shrink.candidates(cfg)},
        np.concatenate([y[t.val] for (_, t), y in zip(held, ys, strict=True)]), group)
    prior = TRANSFER_BASELINES[choice.prior](cfg.with_(model=choice.prior), pool, s)
    info["shrink"] = choice.summary()
    return shrink.blend(pred, prior, choice.weights), info


def _validation(cfg: TrainConfig, model: Any, task: Any) -> np.ndarray:
    """The validation spots' prediction from the training spots (as final.py makes it)."""
    from asign.train.loop import validation_output

    out = validation_output(cfg, model, task)
    return out.spot.float().cpu().numpy()[task.val] + task.offset
