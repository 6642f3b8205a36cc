"""From the store's expression scale to the one scanpy expects: log1p(CP10k). Pure.

The store trains on one of two normalisations (recorded in its manifest,
``params.labels.normalisation``); each is undone to per-spot proportions ``p`` and put on
scanpy's scale as ``X = ln(1 + 10⁴·p)``:

- ``log_ratio``, v = ln((c+1) / Σ_panel(c+1)): ``p_g = exp(v_g) / Σ_panel exp(v)``. On a
  measured spot this is exactly (c_g+1) / Σ_panel(c+1), the proportions of the panel's
  pseudo-counts; on a prediction it is the softmax of the predicted log-ratios (a model's
  outputs need not sum to one, so they are renormalised). The pseudo-count stays in: a
  gene with no reads still gets a small positive value, the same on measured and
  predicted spots, so the two are on one scale.
- ``log1p_cp10k``, v = ln(1 + 10⁴·c / Σ_all-genes c): already scanpy's scale (the library
  size is the spot's whole transcriptome, not the panel, so nothing is renormalised); a
  prediction below zero — a negative count — is clipped to 0.
"""

from __future__ import annotations

import numpy as np

SCANPY_SCALE = "log1p_cp10k"
FORMULAS = {
    "log_ratio": "X = ln(1 + 1e4 * p), p_g = exp(v_g) / sum_panel exp(v) "
                 "(v = ln((c+1)/sum_panel(c+1)): panel pseudo-count proportions, renormalised)",
    "log1p_cp10k": "X = max(v, 0) (v = ln(1 + 1e4 * c / sum_all_genes c) is already log1p(CP10k))",
}


CHUNK_ROWS = 1 << 15  # rows converted at a time: float64 temporaries stay small at any N


def to_log1p_cp10k(values: np.ndarray, normalisation: str) -> np.ndarray:
    """(N, G) values on the store's scale → (N, G) float32 log1p(CP10k), finite where the
    input row is finite (rows with any NaN come back NaN)."""
    if normalisation not in FORMULAS:
        raise ValueError(f"unknown normalisation {normalisation!r}; "
                         f"known: {', '.join(FORMULAS)}")
    values = np.asarray(values)
    out = np.empty(values.shape, dtype=np.float32)
    for a in range(0, len(values), CHUNK_ROWS):
        out[a:a + CHUNK_ROWS] = _convert(values[a:a + CHUNK_ROWS], normalisation)
    return out


def _convert(values: np.ndarray, normalisation: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if normalisation == "log1p_cp10k":
        return np.maximum(v, 0.0)
    # log_ratio: softmax per row, shifted by the row maximum so exp never overflows
    e = np.exp(v - np.max(v, axis=1, keepdims=True))
    return np.log1p(1e4 * e / e.sum(axis=1, keepdims=True))
