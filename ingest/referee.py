"""Expression referee of an alignment: where two sections both have counts, predict each
from the other by inverse-distance weighting in the aligned frame, and score the per-gene
Pearson correlation (across spots, averaged over genes). It uses no image, so it judges
an image-based alignment independently: spots put on the wrong tissue predict worse.

Pure: aligned coordinates and labels in, a number out. IDW and per-gene PCC are the
``idw`` baseline's and the metrics' own kernels (asign/numeric.py)."""

from __future__ import annotations

import numpy as np

REFEREE_K = 4  # nearest spots of the other section: about the spot and its first ring


def referee_pcc(xy_a: np.ndarray, y_a: np.ndarray, xy_b: np.ndarray, y_b: np.ndarray,
                k: int = REFEREE_K) -> float:
    """Mean of per-gene PCC(B predicted from A, B) and PCC(A predicted from B); genes
    constant on a section are skipped (as in the metrics)."""
    from asign.numeric import idw, nanmean, pearson_rows

    def pcc_gene(pred: np.ndarray, truth: np.ndarray) -> float:
        p, t = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
        return nanmean(pearson_rows(p.T, t.T))

    b_from_a = idw(xy_a, y_a, xy_b, k=k)
    a_from_b = idw(xy_b, y_b, xy_a, k=k)
    return float(np.nanmean([pcc_gene(b_from_a, y_b), pcc_gene(a_from_b, y_a)]))
