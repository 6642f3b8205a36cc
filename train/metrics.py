"""Evaluation metrics on (spots × genes) arrays (DESIGN §5). Pure numpy, float64 inside.

- ``pcc_spot``: Pearson r of each spot across genes, averaged over spots (the paper's
  metric; dominated by the mean expression profile).
- ``pcc_gene``: Pearson r of each gene across spots, averaged over genes (the field's
  standard; the one that discriminates between methods).

A correlation is undefined when either vector is constant; such items are NaN, left out of
the mean, and counted: :func:`evaluate` reports how many spots/genes were usable.
"""

from __future__ import annotations

import numpy as np

from asign.errors import AsignError
from asign.schemas.vocabulary import ACCURACY_METRICS

METRICS = ACCURACY_METRICS


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 2:
        raise AsignError(f"metrics: prediction {p.shape} and truth {t.shape} must both be "
                         "(spots, genes)", fix="align predictions to the measured spots first")
    return p, t


def _pearson_rows(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pearson r of matching rows; NaN where either row is constant (or not finite)."""
    if p.shape[1] < 2:
        return np.full(p.shape[0], np.nan)
    pc = p - p.mean(axis=1, keepdims=True)
    tc = t - t.mean(axis=1, keepdims=True)
    denom = np.sqrt((pc * pc).sum(axis=1) * (tc * tc).sum(axis=1))
    # exact test: a constant float vector need not centre to exact zeros
    constant = (np.ptp(p, axis=1) == 0) | (np.ptp(t, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=1) / denom
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def pcc_per_spot(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) Pearson r of each spot across genes; NaN for constant spots."""
    p, t = _pair(pred, truth)
    return _pearson_rows(p, t)


def pcc_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(G,) Pearson r of each gene across spots; NaN for genes constant in either array."""
    p, t = _pair(pred, truth)
    return _pearson_rows(p.T, t.T)


def _nanmean(x: np.ndarray) -> float:
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def mse(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = _pair(pred, truth)
    return float(np.mean((p - t) ** 2)) if p.size else float("nan")


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t))) if p.size else float("nan")


def pcc_spot(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-spot PCC over spots where it is defined."""
    return _nanmean(pcc_per_spot(pred, truth))


def pcc_gene(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-gene PCC over genes where it is defined."""
    return _nanmean(pcc_per_gene(pred, truth))


def evaluate(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """All metrics of one (spots × genes) block, with the counts behind the PCC means.

    Keys: ``mse``, ``mae``, ``pcc_spot``, ``pcc_gene``, ``n_spots``, ``n_genes``,
    ``n_spots_valid`` and ``n_genes_valid`` (items with a defined PCC), and, when the truth
    masks genes (NaN: absent from the section's counts, not measured as zero),
    ``n_genes_absent``: those genes are left out of every metric.
    """
    p, t = _pair(pred, truth)
    measured = np.isfinite(t).all(axis=0)
    absent = int((~measured).sum())
    n_genes = int(p.shape[1])
    if absent:
        p, t = p[:, measured], t[:, measured]
    per_spot, per_gene = _pearson_rows(p, t), _pearson_rows(p.T, t.T)
    extra = {"n_genes_absent": absent} if absent else {}
    return {**extra,
        "mse": mse(p, t),
        "mae": mae(p, t),
        "pcc_spot": _nanmean(per_spot),
        "pcc_gene": _nanmean(per_gene),
        "n_spots": int(p.shape[0]),
        "n_genes": n_genes,
        "n_spots_valid": int(np.isfinite(per_spot).sum()),
        "n_genes_valid": int(np.isfinite(per_gene).sum()),
    }
