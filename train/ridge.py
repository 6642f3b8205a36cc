"""The linear yardsticks: ridge regression from spot embeddings, and ridge blended with idw.

A user with the same store and a spreadsheet could fit these; a network has to beat them
to earn its cost.

- ``ridge``: per-gene ridge regression (one shared penalty α) from the spot embeddings,
  z-scored per section as the networks see them (data.standardised_features), to the
  panel, fitted on the known spots with an intercept. α is chosen from :data:`ALPHAS`
  (× the feature count) by leave-one-block-out cross-validation over a 4 × 4 grid of the
  known spots' aligned coordinates (blocks.cv_folds), minimising MSE.
- ``ridge+idw``: w · ridge + (1 − w) · idw (the idw baseline from the known spots), w on a
  0.05 grid chosen by the same blocked CV: each block predicted by ridge (at the chosen α)
  and by idw from the other blocks.

Solved in the dual (n known spots ≤ a few thousand, features ~2k): one eigendecomposition
of the n × n Gram matrix per fold serves every α. Deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from asign.train.blocks import cv_folds

ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))  # × the number of features
BLEND_GRID = tuple(float(w) for w in np.round(np.linspace(0.0, 1.0, 21), 2))


class DualRidge:
    """Ridge fits of (X, Y) for many penalties from one eigendecomposition of X Xᵀ."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.x_mean, self.y_mean = x.mean(axis=0), y.mean(axis=0)
        self.x = x - self.x_mean
        evals, self.u = np.linalg.eigh(self.x @ self.x.T)
        self.evals = np.maximum(evals, 0.0)
        self.uty = self.u.T @ (y - self.y_mean)

    def predict(self, x_new: np.ndarray, alpha: float) -> np.ndarray:
        """(Q, G) predictions at penalty ``alpha``: x_new Xᵀ (X Xᵀ + αI)⁻¹ Y + intercept."""
        dual = self.u @ (self.uty / (self.evals + alpha)[:, None])
        k = (np.asarray(x_new, dtype=np.float64) - self.x_mean) @ self.x.T
        return k @ dual + self.y_mean


def cv_predictions(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray],
                   alphas: tuple[float, ...]) -> np.ndarray:
    """(len(alphas), n, G) out-of-block ridge predictions of every known spot."""
    out = np.zeros((len(alphas), *y.shape))
    for held in folds:
        fit = DualRidge(x[~held], y[~held])
        for i, a in enumerate(alphas):
            out[i, held] = fit.predict(x[held], a)
    return out


def choose_alpha(x: np.ndarray, y: np.ndarray, xy: np.ndarray) -> tuple[float, np.ndarray]:
    """(α, out-of-block predictions at α) by blocked CV; the middle of the grid when the
    known spots are too few to form folds."""
    alphas = tuple(a * x.shape[1] for a in ALPHAS)
    folds = cv_folds(xy)
    covered = np.any(folds, axis=0) if folds else np.zeros(len(y), dtype=bool)
    if not covered.any():
        return alphas[len(alphas) // 2], np.full(y.shape, np.nan)
    preds = cv_predictions(x, y, folds, alphas)
    mse = ((preds[:, covered] - y[covered]) ** 2).mean(axis=(1, 2))
    best = int(np.argmin(mse))
    return alphas[best], preds[best]


def fit_predict(x: np.ndarray, y: np.ndarray, known: np.ndarray, xy: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """(N, G) ridge predictions from the known rows, the chosen α, and the known spots'
    out-of-block predictions (for the blend)."""
    xk, yk = x[known], y[known]
    alpha, oob = choose_alpha(xk, yk, xy[known])
    return DualRidge(xk, yk).predict(x, alpha).astype(np.float32), alpha, oob


def choose_blend(y: np.ndarray, ridge_oob: np.ndarray, idw_oob: np.ndarray) -> float:
    """The weight w of ridge in w · ridge + (1 − w) · idw minimising out-of-block MSE."""
    ok = np.isfinite(ridge_oob).all(axis=1) & np.isfinite(idw_oob).all(axis=1)
    if not ok.any():
        return 0.5
    mse = [float(((w * ridge_oob[ok] + (1 - w) * idw_oob[ok] - y[ok]) ** 2).mean())
           for w in BLEND_GRID]
    return BLEND_GRID[int(np.argmin(mse))]


def idw_out_of_block(xy: np.ndarray, y: np.ndarray, idw: Callable[..., np.ndarray]
                     ) -> np.ndarray:
    """(n, G) idw prediction of every known spot from the other blocks (NaN outside folds)."""
    out = np.full(y.shape, np.nan)
    for held in cv_folds(xy):
        out[held] = idw(xy[~held], y[~held], xy[held])
    return out
