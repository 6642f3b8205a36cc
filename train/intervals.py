"""Per-spot, per-gene prediction intervals by split-conformal prediction on known spots.

A hidden spot's interval is ``prediction ± q_g · scale_ig``:

- ``scale_ig`` is spot-adaptive: the spread (standard deviation) of gene g over the
  ``SCALE_K`` known spots nearest to spot i in the aligned (x, y) frame, plus a floor of
  ``SCALE_FLOOR`` × the gene's spread over all known spots. Where the known layer is
  heterogeneous around a spot's position the interval widens; where it is uniform it narrows.
  It is computed from the spots the predictor was given, so a calibration spot and a hidden
  spot get their scale the same way.
- ``q_g`` is the conformal quantile of ``|y - ŷ| / scale`` over calibration spots whose
  labels the predictor did not see: the ``ceil((n + 1) · coverage) / n`` empirical quantile,
  which gives marginal coverage ≥ ``coverage`` when calibration and hidden spots are
  exchangeable.

Calibration spots (only known labels are ever read; hidden rows never enter):

- baselines (re-run cheaply with another known set): with ≥ 2 known layers each known layer
  in turn is predicted from the other known layers (a cross-layer task, as at test time);
  with one known layer, ``N_BLOCKS`` spatial blocks of it in turn (k-means on x, y) are
  predicted from the rest — whole blocks, so a held-out spot's nearest known spots are
  not its immediate neighbours;
- neural models (one trained model): the validation spots set aside from training
  (loop.py; a whole known layer when there are ≥ 2), predicted with the CLI propagating
  from the training spots — the spots the gate is calibrated on, never trained on.

With one known layer the calibration task is in-layer, which is easier than a cross-layer
one; the README reports the coverage this reaches on the hidden layers of her2st C.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_COVERAGE = 0.9
SCALE_K = 8
SCALE_FLOOR = 0.1
N_BLOCKS = 10


def local_scale(xy_known: np.ndarray, y_known: np.ndarray, xy_query: np.ndarray,
                k: int = SCALE_K) -> np.ndarray:
    """(Q, G) spot-adaptive scale (see the module docstring)."""
    from scipy.spatial import cKDTree

    y_known = np.asarray(y_known, dtype=np.float64)
    k = max(1, min(k, len(y_known)))
    _, idx = cKDTree(xy_known).query(xy_query, k=k)
    idx = np.asarray(idx).reshape(len(xy_query), k)
    spread = y_known[idx].std(axis=1)
    floor = SCALE_FLOOR * y_known.std(axis=0) + 1e-6
    return np.sqrt(spread ** 2 + floor ** 2)


def conformal_quantile(scores: np.ndarray, coverage: float) -> np.ndarray:
    """(G,) per-gene split-conformal quantile of ``scores`` (n, G). With too few spots for
    a per-gene quantile at this coverage (n < 1 / (1 − coverage) − 1), one quantile pooled
    over all genes; inf when even that is too few (the interval is then unbounded, not
    silently too narrow)."""
    n, g = scores.shape
    rank = int(np.ceil((n + 1) * coverage))
    if n and rank <= n:
        return np.sort(scores, axis=0)[rank - 1]
    pooled = np.sort(scores, axis=None)
    rank = int(np.ceil((pooled.size + 1) * coverage))
    if pooled.size == 0 or rank > pooled.size:
        return np.full(g, np.inf)
    return np.full(g, pooled[rank - 1])


def calibration_sets(section: np.ndarray, known: np.ndarray, xy: np.ndarray,
                     seed: int) -> list[np.ndarray]:
    """Masks of known spots to hold out in turn (see the module docstring)."""
    layers = np.unique(section[known])
    if layers.size >= 2:
        return [known & (section == layer) for layer in layers]
    idx = np.flatnonzero(known)
    n_blocks = min(N_BLOCKS, idx.size // 2)
    if n_blocks < 2:
        return []
    from scipy.cluster.vq import kmeans2

    _, lab = kmeans2(xy[idx].astype(np.float64), n_blocks, seed=np.random.default_rng(seed),
                     minit="++")
    out = []
    for b in range(n_blocks):
        m = np.zeros_like(known)
        m[idx[lab == b]] = True
        if m.any() and (known & ~m).any():
            out.append(m)
    return out


def scores_by_refit(predict: Callable[[np.ndarray], np.ndarray], y: np.ndarray,
                    known: np.ndarray, section: np.ndarray, xy: np.ndarray,
                    seed: int) -> np.ndarray:
    """(n, G) conformity scores of a predictor that can be re-run from any known mask:
    each calibration set predicted from the other known spots. ``y`` holds known labels
    only (rows outside ``known`` are never read)."""
    rows = []
    for held in calibration_sets(section, known, xy, seed):
        rest = known & ~held
        pred = predict(rest)
        scale = local_scale(xy[rest], y[rest], xy[held])
        rows.append(np.abs(y[held] - pred[held]) / scale)
    return np.concatenate(rows) if rows else np.zeros((0, y.shape[1]))


def scores_from_validation(pred_val: np.ndarray, y_val: np.ndarray, xy_val: np.ndarray,
                           xy_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """(n, G) conformity scores of a trained model on its validation spots."""
    return np.abs(y_val - pred_val) / local_scale(xy_train, y_train, xy_val)


def intervals(pred: np.ndarray, scores: np.ndarray, y: np.ndarray, known: np.ndarray,
              xy: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (N, G) float32, around ``pred`` from calibration ``scores``,
    with the scale computed from all known spots."""
    q = conformal_quantile(scores, coverage)
    half = q[None, :] * local_scale(xy[known], y[known], xy)
    return (pred - half).astype(np.float32), (pred + half).astype(np.float32)


def coverage_of(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """Share of (spot, gene) entries whose truth lies inside the interval."""
    return float(np.mean((truth >= lower) & (truth <= upper)))


def for_baseline(predict: Callable[[np.ndarray], np.ndarray], y: np.ndarray, known: np.ndarray,
                 section: np.ndarray, xy: np.ndarray, pred: np.ndarray, coverage: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals of a baseline: ``predict(known_mask)`` re-runs it from other known spots."""
    scores = scores_by_refit(predict, y, known, section, xy, seed)
    return intervals(pred, scores, y, known, xy, coverage)


def for_model(cfg: object, model: object, task: object, xy: np.ndarray, pred: np.ndarray,
              coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Intervals of a trained network, calibrated on its validation spots."""
    from asign.train.loop import validation_output

    val = task.val  # type: ignore[attr-defined]
    val_pred = None
    if val.any() and task.train.any():  # type: ignore[attr-defined]
        out = validation_output(cfg, model, task)
        val_pred = out.spot.float().cpu().numpy()[val] + task.offset  # type: ignore[attr-defined]
    return for_predictions(task, xy, pred, val_pred, coverage)


def for_predictions(task: object, xy: np.ndarray, pred: np.ndarray, val_pred: np.ndarray | None,
                    coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Intervals around ``pred`` from the validation spots' predictions ``val_pred`` (the
    final ones: after ensembling and shrinkage)."""
    y = task.y.float().cpu().numpy() + task.offset  # type: ignore[attr-defined]
    val, train, known = task.val, task.train, task.visible  # type: ignore[attr-defined]
    scores = np.zeros((0, y.shape[1]))
    if val_pred is not None and val.any() and train.any():
        scores = scores_from_validation(val_pred, y[val], xy[val], xy[train], y[train])
    return intervals(pred, scores, y, known, xy, coverage)
