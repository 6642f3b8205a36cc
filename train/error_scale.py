"""A learnt error scale σ(spot, gene): how large a prediction's error is expected to be.

The scale is a log-linear model of the absolute residual, fitted on held-out known spots
(intervals.py decides which), from what the predictor also has at a hidden spot
(:data:`FEATURES`, each computed from the *source* spots the prediction was made from —
the training spots for a held-out spot, every known spot for a hidden one):

- ``local_spread``: log of the gene's spread over the ``SCALE_K`` source spots nearest in
  the aligned (x, y) frame (plus a floor of ``SCALE_FLOOR`` × its spread over all source
  spots): heterogeneous tissue around a spot → larger errors;
- ``distance``: log(1 + distance to the nearest source spot, in spot pitches) — computed
  in the (x, y) frame, where a hidden layer lies right over the known one, so a query is
  never given a smaller distance than the held-out spots' median (a hidden layer is
  another section, not a neighbour of the same one: the model may widen far spots, it
  does not narrow a whole layer below what held-out blocks showed);
- ``level`` and ``level²``: the prediction, standardised by the gene's source mean and
  spread (count noise and dropouts depend on the level);
- ``disagreement``: |prediction − reference| / the gene's spread, the reference being the
  prior a network is shrunk toward (shrink.py) or, for a baseline, the source mean profile;
- ``gene_spread``: log of the gene's spread over the source spots;
- ``gene_error``: log of the gene's root-mean-square held-out residual (over the other
  held-out blocks, see below), pulled toward the all-gene value by ``GENE_PRIOR_N`` pseudo
  spots: the gene's own error level, estimated where it is measured.

The model is ridge regression (penalty ``RIDGE``, standardised features) of
log(|residual| + ε) (ε: ``EPS_SHARE`` × the mean |residual|), σ = exp(fit). It is
cross-fitted over held-out blocks: a held-out spot's σ comes from the model (and gene
error) fitted on the *other* blocks, so its conformity score |residual| / σ is as
out-of-sample as a hidden spot's — the condition split-conformal coverage rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCALE_K = 8
SCALE_FLOOR = 0.1
RIDGE = 1.0
EPS_SHARE = 0.1
GENE_PRIOR_N = 10.0
FEATURES = ("local_spread", "distance", "level", "level2", "disagreement", "gene_spread",
            "gene_error")


@dataclass(frozen=True)
class Source:
    """The spots a prediction was made from, indexed once: every query against them (the
    chunks of a large sample, the held-out groups of one network) shares the tree and the
    per-gene statistics, so features cost O(Q log S), not a rebuild of S per query."""

    y: np.ndarray  # (M, G) float64 labels, held by reference; the source spots are ``rows``
    rows: np.ndarray | None  # (S,) the source spots' rows of ``y``; None: every row
    tree: Any  # scipy.spatial.cKDTree over their (x, y) µm
    pitch: float  # µm (blocks.spot_pitch)
    mean: np.ndarray  # (G,)
    std: np.ndarray  # (G,)

    def labels(self, idx: np.ndarray) -> np.ndarray:
        """The labels of source spots ``idx`` (tree indices), any shape → (..., G)."""
        return self.y[idx] if self.rows is None else self.y[self.rows[idx]]


def source(xy: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> Source:
    """Index the source spots: ``rows`` of ``xy`` (M, 2) and ``y`` (M, G), every row when
    None. ``y`` is kept by reference (float64 without a copy), so the held-out blocks of
    one known set share its labels instead of each holding a copy of the rest."""
    from scipy.spatial import cKDTree

    from asign.train.blocks import spot_pitch

    y = np.asarray(y, dtype=np.float64)
    xy = np.asarray(xy, dtype=np.float64)
    y_s = y if rows is None else y[rows]
    if rows is not None:
        xy = xy[rows]
    tree = cKDTree(xy)
    return Source(y, rows, tree, spot_pitch(xy, tree), y_s.mean(axis=0), y_s.std(axis=0))


@dataclass(frozen=True)
class Query:
    """Spots predicted from ``source`` spots: the inputs of :func:`features`."""

    source: Source
    xy: np.ndarray  # (Q, 2) µm
    pred: np.ndarray  # (Q, G)
    reference: np.ndarray | None = None  # (Q, G) the prior; None: the source mean profile


def local_spread(src: Source, xy: np.ndarray, k: int = SCALE_K) -> np.ndarray:
    """(Q, G) the gene's spread over each query's k nearest source spots, with a floor."""
    k = max(1, min(k, src.tree.n))
    _, idx = src.tree.query(xy, k=k)
    spread = src.labels(np.asarray(idx).reshape(len(xy), k)).std(axis=1)
    floor = SCALE_FLOOR * src.std + 1e-6
    return np.sqrt(spread ** 2 + floor ** 2)


def distance(src: Source, xy: np.ndarray) -> np.ndarray:
    """(Q,) distance to the nearest source spot, in spot pitches of the source spots."""
    d, _ = src.tree.query(xy, k=1)
    return np.asarray(d, dtype=np.float64) / src.pitch


def features(q: Query, gene_error: np.ndarray, min_distance: float = 0.0) -> np.ndarray:
    """(Q, G, F) features in :data:`FEATURES` order; ``gene_error`` (G,) is the gene's
    held-out RMS residual, ``min_distance`` the floor on the distance (pitches)."""
    return with_gene_error(spot_features(q, min_distance), gene_error)


def spot_features(q: Query, min_distance: float = 0.0) -> np.ndarray:
    """(Q, G, F − 1): every feature but ``gene_error`` (the one that changes with the
    held-out blocks it is estimated on)."""
    src = q.source
    pred = np.asarray(q.pred, dtype=np.float64)
    mu, sd = src.mean, src.std + 1e-6
    ref = mu[None, :] if q.reference is None else np.asarray(q.reference, np.float64)
    level = (pred - mu) / sd
    dist = np.log1p(np.maximum(distance(src, q.xy), min_distance))
    shape = pred.shape
    cols = (np.log(local_spread(src, q.xy)), np.broadcast_to(dist[:, None], shape),
            level, level ** 2, np.abs(pred - ref) / sd, np.broadcast_to(np.log(sd), shape))
    return np.stack(cols, axis=-1)


def with_gene_error(x: np.ndarray, gene_error: np.ndarray,
                    gene: np.ndarray | None = None) -> np.ndarray:
    """``x`` (Q, G, F − 1) with the ``gene_error`` column appended; or ``x`` (m, F − 1),
    pairs of genes ``gene`` (m,), with theirs."""
    log_error = np.log(gene_error)
    col = (np.broadcast_to(log_error, x.shape[:2]) if gene is None else log_error[gene])
    return np.concatenate([x, col[..., None]], axis=-1)


def gene_error(resid: np.ndarray, prior_n: float = GENE_PRIOR_N) -> np.ndarray:
    """(G,) RMS residual per gene over ``resid`` (n, G), shrunk toward all genes' RMS by
    ``prior_n`` pseudo spots (a few dozen held-out spots give a noisy per-gene RMS)."""
    r = np.asarray(resid, dtype=np.float64)
    n = r.shape[0]
    ms_all = float((r ** 2).mean()) if r.size else 1.0
    ms = (r ** 2).sum(axis=0) / max(n, 1)
    return np.sqrt((n * ms + prior_n * ms_all) / (n + prior_n)) + 1e-6


@dataclass(frozen=True)
class ScaleModel:
    """A fitted σ model: standardisation, ridge coefficients, ε of the log target."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    coef: np.ndarray  # (F,)
    intercept: float
    eps: float

    def sigma(self, x: np.ndarray) -> np.ndarray:
        """(Q, G) σ from (Q, G, F) features."""
        z = (x - self.mean) / self.std
        return np.exp(z @ self.coef + self.intercept)

    def summary(self) -> dict[str, float]:
        """Coefficients per standardised feature: what a run records."""
        return {name: round(float(c), 4) for name, c in zip(FEATURES, self.coef, strict=True)}


def fit(x: np.ndarray, resid: np.ndarray, ridge: float = RIDGE) -> ScaleModel:
    """Ridge fit of log(|resid| + ε) on features ``x`` (n, G, F) or (m, F) with ``resid``
    (n, G) or (m,)."""
    a = np.abs(np.asarray(resid, dtype=np.float64)).reshape(-1)
    eps = EPS_SHARE * float(a.mean()) + 1e-9
    t = np.log(a + eps)
    xf = x.reshape(-1, x.shape[-1])
    mean, std = xf.mean(axis=0), xf.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (xf - mean) / std
    # ridge in the standardised space; penalty per row count so it means the same at any n
    gram = z.T @ z / len(z) + ridge / max(len(z), 1) * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, z.T @ (t - t.mean()) / len(z))
    return ScaleModel(mean, std, coef, float(t.mean()), eps)
