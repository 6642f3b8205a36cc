"""The networks' final prediction of one test graph: the ensemble's mean, shrunk toward its
prior (shrink.py), with intervals conformalised on the same held-out blocks (intervals.py);
when the prior alone is chosen, the prediction and its intervals are the prior baseline's.

Every step reads the validation blocks the loop set aside (blocks.py) and the known
spots' labels; hidden labels never enter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def predict(cfg: Any, models: list[Any], task: Any, sample: Any,
            unshrunk: list[np.ndarray] | None = None
            ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """(N, G) prediction, its (lower, upper) intervals (None with coverage 0) and what was
    chosen (the shrinkage weights' summary). ``unshrunk``: receives the prediction before
    shrinkage (the same networks: the shrinkage ablation at no training cost)."""
    from asign.train import intervals, loop, shrink

    xy = sample.xy

    pred = member_mean(loop.predict(cfg, m, task) for m in models)
    # visible labels (offset added back); rows outside task.visible are never read
    y = task.y.float().cpu().numpy() + task.offset
    val_pred = None
    if task.val.any() and task.train.any():
        val_pred = np.mean([_validation(cfg, m, task) for m in models], axis=0)
    info: dict[str, Any] = {}
    prior = val_prior = group = choice = None
    if unshrunk is not None:
        unshrunk.append(pred.astype(np.float32, copy=False))  # blend makes a new array
    if val_pred is not None:  # the in-layer loss of the networks alone (diagnosis)
        info["val_mse_network"] = round(float(((val_pred - y[task.val]) ** 2).mean()), 5)
    if cfg.shrink and val_pred is not None:
        y_val = y[task.val]
        priors_val = {kind: shrink.prior(cfg, kind, sample, y, task.train)[task.val]
                      for kind in shrink.candidates(cfg)}
        group = intervals.calibration_groups(task, xy)
        choice = shrink.choose(val_pred, priors_val, y_val, group)
        # the intervals calibrate on the cross-fitted blend: out of sample for the weights
        val_pred, val_prior = choice.held_out, priors_val[choice.prior]
        prior = shrink.prior(cfg, choice.prior, sample, y, task.visible)
        pred = shrink.blend(pred, prior, choice.weights)
        info.update(choice.summary())
    bounds = None
    if cfg.coverage and choice is not None and choice.pool is None:
        # the prediction is the prior's, made from every known spot, so its intervals are
        # the prior's baseline run's: calibrated on held-out blocks of every known spot,
        # not only the validation blocks the network had to be kept from
        kind = choice.prior
        bounds, info["intervals"] = intervals.for_baseline(
            lambda m: shrink.prior(cfg, kind, sample, y, m), y, task.visible, sample.section,
            xy, pred, cfg.coverage, cfg.seed)
    elif cfg.coverage:  # the interval's error scale reads the prior the prediction shrank to
        bounds, info["intervals"] = intervals.for_predictions(
            task, xy, pred, val_pred, cfg.coverage, prior, val_prior, group)
    return pred.astype(np.float32, copy=False), bounds, info


def scores(sample: Any, plan: Any, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """The metrics of ``pred`` on each scored section (hidden labels read as ground truth
    only): what the run records of its networks before shrinkage."""
    from asign.train.metrics import evaluate

    rows = {sec: sample.in_sections([sec]) & sample.has_label for sec in plan.scored}
    return {sec: evaluate(pred[r], sample.labels[r]) for sec, r in rows.items()}


def record(cfg: Any, sample: Any, plan: Any, pred: np.ndarray, info: dict[str, Any],
           unshrunk: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """What a run records beside its metrics (``timings.selection``): the shrinkage and
    ``unshrunk``, the metrics the same networks reach without it (:func:`scores`), and the
    paired comparison with the baselines (paired.py). Hidden labels are read here only as
    ground truth for scoring."""
    from asign.train.paired import against_baselines

    out: dict[str, Any] = {}
    if "intervals" in info:  # the interval method and its fitted error scale
        out["intervals"] = info.pop("intervals")
    if info:
        info["unshrunk"] = unshrunk
        out["shrink"] = info
    if plan.scored:
        out["paired"] = against_baselines(cfg, sample, plan, pred)
    return out


def member_mean(preds: Iterable[np.ndarray]) -> np.ndarray:
    """The ensemble members' mean, summed into the first member's array as they come: the
    same float32 sums as ``np.mean`` of their stack, without the (K, N, G) stack (GBs at
    Visium HD scale). The arrays must be the caller's to overwrite."""
    total, k = None, 0
    for p in preds:
        total = p if total is None else np.add(total, p, out=total)
        k += 1
    if total is None:
        raise ValueError("member_mean: no predictions")
    total /= k
    return total


def _validation(cfg: Any, model: Any, task: Any) -> np.ndarray:
    """The validation spots' prediction from the training spots (CLI sources)."""
    from asign.train.loop import validation_output

    out = validation_output(cfg, model, task)
    return out.spot.float().cpu().numpy()[task.val] + task.offset


def fit_members(cfg: Any, fold: Any, run: Any) -> list[Any] | None:
    """The fold's ``cfg.ensemble`` networks (seeds seed, seed + 1, ...; member k > 0 keeps
    its own checkpoint beside the run's); None when the epoch budget ran out first."""
    from dataclasses import replace

    from asign.train.folds import fit_fold

    models = []
    for k in range(cfg.ensemble):
        cfg_k, run_k = cfg, run
        if k:
            cfg_k = cfg.with_(seed=cfg.seed + k)
            path_k = run.ckpt_path.member(k)
            ckpt_k = path_k.load() if cfg.resume else None
            run_k = replace(run, ckpt_path=path_k, ckpt=ckpt_k, selection={},
                            finished=dict(ckpt_k["finished"]) if ckpt_k else {})
        model = fit_fold(cfg_k, fold, run_k)
        run.budget = run_k.budget  # the epochs a member used count against the whole run
        if model is None:
            return None
        if k:
            for f, v in run_k.selection.items():
                run.selection.setdefault(f, {})[f"member{k}"] = v
        models.append(model)
    return models
