"""Evaluation metrics on (spots × genes) arrays (DESIGN §5). Pure numpy, float64 inside.

- ``pcc_spot``: Pearson r of each spot across genes, averaged over spots (the paper's
  metric; dominated by the mean expression profile).
- ``pcc_gene``: Pearson r of each gene across spots, averaged over genes (the field's
  standard; the one that discriminates between methods).

A correlation is undefined when either vector is constant; such items are NaN, left out of
the mean, and counted: :func:`evaluate` reports how many spots/genes were usable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asign.errors import AsignError
from asign.numeric import nanmean as _nanmean
from asign.numeric import pearson_rows as _pearson_rows

PCC_GENES = 32  # genes per step of pcc_per_gene


def _pair(pred: np.ndarray, truth: np.ndarray,
          dtype: type | None = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Both as arrays (float64 unless ``dtype`` is None) of the same (spots, genes) shape."""
    p = np.asarray(pred, dtype=dtype)
    t = np.asarray(truth, dtype=dtype)
    if p.shape != t.shape or p.ndim != 2:
        raise AsignError(f"metrics: prediction {p.shape} and truth {t.shape} must both be "
                         "(spots, genes)", fix="align predictions to the measured spots first")
    return p, t


def pcc_per_spot(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) Pearson r of each spot across genes; NaN for constant spots."""
    p, t = _pair(pred, truth)
    return _pearson_rows(p, t)


def pcc_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(G,) Pearson r of each gene across spots; NaN for genes constant in either array.
    ``PCC_GENES`` genes at a time: float64 copies of a whole Visium HD section were GBs."""
    pred, truth = _pair(pred, truth, dtype=None)
    out = np.empty(pred.shape[1])
    for lo in range(0, len(out), PCC_GENES):
        g = slice(lo, lo + PCC_GENES)
        # each gene a contiguous row: its sums do not depend on the chunk around it
        out[g] = _pearson_rows(*(np.ascontiguousarray(a[:, g].T, np.float64)
                                 for a in (pred, truth)))
    return out


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


@dataclass(frozen=True)
class Metric:
    """One metric, declared once: results, the train table, the report and the benches
    all read :data:`METRICS` (a new metric is one record and its function, here)."""

    name: str  # the metrics table's ``metric`` value
    fn: Callable[[np.ndarray, np.ndarray], float] | None  # (pred, truth) → value; None:
    # written by another step (train/intervals.py), not computed from a prediction alone
    higher_is_better: bool
    title: str  # how tables and figures name it
    # a mean over items (spots, genes): the per-item values, computed once by ``evaluate``
    # for the metric and for its count of usable items
    items: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def accuracy(self) -> bool:
        """Scored against the measured section (every figure beside the mean baseline)."""
        return self.fn is not None

    @property
    def axis_title(self) -> str:
        return f"{self.title} ({'higher' if self.higher_is_better else 'lower'} is better)"

    def better(self, a: float, b: float) -> bool:
        return (a > b) == self.higher_is_better


# display order everywhere: per-gene PCC first (it is the one that tells methods apart)
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("pcc_gene", pcc_gene, True, "PCC per gene", items=pcc_per_gene),
    Metric("pcc_spot", pcc_spot, True, "PCC per spot", items=pcc_per_spot),
    Metric("mse", mse, False, "MSE"),
    Metric("mae", mae, False, "MAE"),
    Metric("coverage", None, True, "Interval coverage"),
    Metric("width", None, False, "Interval width"),
)}


def accuracy_metrics() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.accuracy)


def metric_names() -> tuple[str, ...]:
    return tuple(METRICS)


def evaluate(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Every accuracy metric of one (spots × genes) block, with the counts behind the PCC
    means: ``n_spots``, ``n_genes``, ``n_spots_valid`` and ``n_genes_valid`` (items with a
    defined PCC), and, when the truth masks genes (NaN: absent from the section's counts,
    not measured as zero), ``n_genes_absent``: those genes are left out of every metric."""
    p, t = _pair(pred, truth)
    measured = np.isfinite(t).all(axis=0)
    absent = int((~measured).sum())
    n_genes = int(p.shape[1])
    if absent:
        p, t = p[:, measured], t[:, measured]
    items = {m.name: m.items(p, t) for m in METRICS.values() if m.items is not None}
    values: dict[str, float | int] = {
        m.name: _nanmean(items[m.name]) if m.name in items else m.fn(p, t)
        for m in METRICS.values() if m.fn is not None}
    extra = {"n_genes_absent": absent} if absent else {}
    return {
        **extra,
        **values,
        "n_spots": int(p.shape[0]),
        "n_genes": n_genes,
        "n_spots_valid": int(np.isfinite(items["pcc_spot"]).sum()),
        "n_genes_valid": int(np.isfinite(items["pcc_gene"]).sum()),
    }
