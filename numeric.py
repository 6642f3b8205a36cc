"""Pure numeric kernels that several layers share (ingest's alignment referee, train's
baselines and metrics): arrays in, arrays out; no I/O, no torch. Below ingest and train,
so both may import it (tests/contract/test_architecture.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

IDW_CHUNK = 16384  # queries per step of idw: bounds its memory; small samples take one step
CHUNK_BYTES = 32 << 20  # float64 temporaries per step of a computation over rows


def row_steps(n_rows: int, row_values: int) -> Iterator[slice]:
    """Consecutive slices covering ``n_rows`` rows, each small enough that ``row_values``
    float64 temporaries per row stay within ``CHUNK_BYTES`` (at least one row a step):
    whole-sample float64 copies of a Visium HD stack were GBs; her2st takes one step."""
    step = max(1, CHUNK_BYTES // (8 * max(row_values, 1)))
    for lo in range(0, n_rows, step):
        yield slice(lo, min(lo + step, n_rows))


def centred_products(a: np.ndarray, a_mean: np.ndarray, b: np.ndarray | None = None,
                     b_mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(AᶜᵀAᶜ, AᶜᵀBᶜ or None) in float64, Aᶜ = A − ``a_mean`` and Bᶜ = B − ``b_mean`` (rows
    of any float dtype), summed over :func:`row_steps`: no float64 copy of A or B whole."""
    ata = np.zeros((a.shape[1], a.shape[1]))
    atb = None if b is None else np.zeros((a.shape[1], b.shape[1]))
    width = a.shape[1] + (0 if b is None else b.shape[1])
    for r in row_steps(len(a), width):
        ac = np.subtract(a[r], a_mean, dtype=np.float64)
        ata += ac.T @ ac
        if atb is not None:
            atb += ac.T @ np.subtract(b[r], b_mean, dtype=np.float64)
        del ac  # before the next step's, or two steps' rows are held at once
    return ata, atb


def idw(
    xy_known: np.ndarray,
    y_known: np.ndarray,
    xy_query: np.ndarray,
    k: int = 8,
    power: float = 1.0,
) -> np.ndarray:
    """Inverse-distance weighted mean of the k nearest known spots.

    Queries are answered ``IDW_CHUNK`` at a time: the gathered (queries, k, G) float64
    neighbour labels would take 3.2 GB at 200k queries × 8 × 250 genes."""
    from scipy.spatial import cKDTree

    k = min(k, len(xy_known))
    tree = cKDTree(np.asarray(xy_known, dtype=np.float64))
    xy_query = np.asarray(xy_query, dtype=np.float64)
    y = np.asarray(y_known, dtype=np.float64)
    out = np.empty((len(xy_query), y.shape[1]), dtype=np.float32)
    for lo in range(0, len(xy_query), IDW_CHUNK):
        q = xy_query[lo:lo + IDW_CHUNK]
        dist, idx = tree.query(q, k=k)
        dist, idx = dist.reshape(len(q), k), idx.reshape(len(q), k)
        exact = dist < 1e-6
        w = 1.0 / np.maximum(dist, 1e-6) ** power
        # A query sitting on a known spot takes that spot's profile (the weight would be ∞).
        w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
        w /= w.sum(axis=1, keepdims=True)
        out[lo:lo + IDW_CHUNK] = np.einsum("qk,qkg->qg", w, y[idx])
    return out


def pearson_rows(p: np.ndarray, t: np.ndarray) -> np.ndarray:
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


def nanmean(x: np.ndarray) -> float:
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")
