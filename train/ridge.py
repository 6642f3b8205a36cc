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

One eigendecomposition per fold serves every α: of the d × d matrix XᵀX when the known
spots outnumber the features (the primal: a Visium HD layer has 10⁴–10⁵ known bins), else
of the n × n Gram matrix XXᵀ (the dual: her2st's few hundred spots, ~1k features). So a fit
costs O(n · min(n, d)²) time and O(min(n, d)²) memory, never an n × n matrix at scale.
Deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from asign.numeric import centred_products, row_steps
from asign.train.blocks import cv_folds

ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))  # × the number of features
BLEND_GRID = tuple(float(w) for w in np.round(np.linspace(0.0, 1.0, 21), 2))


class RidgePath:
    """Ridge fits of (X, Y) for many penalties from one eigendecomposition (primal or dual,
    whichever matrix is smaller; see the module docstring): the same fit either way."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x_mean = np.mean(x, axis=0, dtype=np.float64)
        self.y_mean = np.mean(y, axis=0, dtype=np.float64)
        self.primal = x.shape[0] > x.shape[1]
        if self.primal:  # XᵀX = V Λ Vᵀ: β = V (Λ + α)⁻¹ Vᵀ Xᵀ Y
            # chunked: centred float64 copies of a Visium HD layer's X and Y were GBs per fold
            xtx, xty = centred_products(x, self.x_mean, y, self.y_mean)
            evals, self.v = np.linalg.eigh(xtx)
            self.vtxty = self.v.T @ xty
        else:  # X Xᵀ = U Λ Uᵀ: ŷ = x_new Xᵀ U (Λ + α)⁻¹ Uᵀ Y
            xc = np.asarray(x, dtype=np.float64) - self.x_mean
            yc = np.asarray(y, dtype=np.float64) - self.y_mean
            self.x = xc
            evals, self.u = np.linalg.eigh(xc @ xc.T)
            self.uty = self.u.T @ yc
        self.evals = np.maximum(evals, 0.0)

    def predict(self, x_new: np.ndarray, alpha: float,
                dtype: type[np.floating] = np.float64) -> np.ndarray:
        """(Q, G) predictions at penalty ``alpha``: x_new β + intercept, with β =
        (XᵀX + αI)⁻¹ XᵀY on the centred data; in row steps (numeric.row_steps), each
        stored as ``dtype`` (a Visium HD stack's (Q, D) and (Q, G) in float64 were GBs)."""
        if self.primal:
            beta = self.v @ (self.vtxty / (self.evals + alpha)[:, None])
        else:
            dual = self.u @ (self.uty / (self.evals + alpha)[:, None])
        out = np.empty((len(x_new), len(self.y_mean)), dtype=dtype)
        width = len(self.x_mean) + len(self.y_mean) + (0 if self.primal else len(self.x))
        for r in row_steps(len(x_new), width):
            centred = np.array(x_new[r], dtype=np.float64)  # a copy
            centred -= self.x_mean
            fit = centred @ beta if self.primal else (centred @ self.x.T) @ dual
            del centred
            out[r] = fit + self.y_mean
        return out


def choose_alpha(x: np.ndarray, y: np.ndarray, xy: np.ndarray) -> tuple[float, np.ndarray]:
    """(α, out-of-block predictions at α) by blocked CV; the middle of the grid when the
    known spots are too few to form folds. One fit per fold serves every α; only the
    current and the best α's (n, G) predictions are held."""
    alphas = tuple(a * x.shape[1] for a in ALPHAS)
    folds = cv_folds(xy)
    covered = np.any(folds, axis=0) if folds else np.zeros(len(y), dtype=bool)
    if not covered.any():
        return alphas[len(alphas) // 2], np.full(y.shape, np.nan)
    fits = [(held, RidgePath(x[~held], y[~held])) for held in folds]
    best: tuple[float, float, np.ndarray] | None = None
    for alpha in alphas:
        oob = np.zeros(y.shape)
        for held, fit in fits:
            oob[held] = fit.predict(x[held], alpha)
        mse = float(((oob[covered] - y[covered]) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, alpha, oob)
    return best[1], best[2]


def fit_predict(x: np.ndarray, y: np.ndarray, known: np.ndarray, xy: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """(N, G) ridge predictions from the known rows, the chosen α, and the known spots'
    out-of-block predictions (for the blend)."""
    xk, yk = x[known], y[known]
    alpha, oob = choose_alpha(xk, yk, xy[known])
    return RidgePath(xk, yk).predict(x, alpha, np.float32), alpha, oob


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
