"""Per-spot, per-gene prediction intervals: split-conformal on held-out known spots, with a
learnt error scale.

A hidden spot's interval is ``prediction ± q_g · σ_ig``:

- ``σ_ig`` is the learnt error scale of error_scale.py: a log-linear model of |residual|
  from features the predictor has at a hidden spot (local spread of the known neighbours,
  distance to the nearest known spot, the predicted level, its disagreement with the prior,
  the gene's spread and held-out error), fitted on held-out known blocks and cross-fitted
  over them, so each held-out spot's score |y − ŷ| / σ is out of sample;
- ``q_g`` is a conformal quantile of those scores for gene g — the
  ``ceil((n + 1) · coverage)``-th of n — from the gene's own scores mixed with every gene's
  (weights n_g : ``POOL_N``): with a few dozen held-out spots a gene's own 90th percentile
  is too noisy for the per-gene coverage to hold, while all genes pooled would ignore what
  σ misses about one gene. With too few scores for the rank, the interval is unbounded.

Held-out known spots (only known labels are ever read; hidden rows never enter):

- baselines (re-run cheaply with another known set): with ≥ 2 known layers each known layer
  in turn is predicted from the other known layers (a cross-layer task, as at test time);
  with one known layer, ``N_BLOCKS`` spatial blocks of it in turn (k-means on x, y) are
  predicted from the rest — whole blocks, so a held-out spot's nearest known spots are
  not its immediate neighbours;
- neural models (one trained model): the validation blocks set aside from training
  (loop.py, blocks.py; a whole known layer when there are ≥ 2), predicted from the
  training spots — the spots the gate and shrinkage are chosen on, never trained on —
  held out (cross-fitted) in at most ``N_BLOCKS`` groups of whole blocks
  (:func:`calibration_groups`). The per-gene shrinkage weights are fitted on these spots,
  so a held-out group's blended prediction uses the weights fitted on the other groups
  (shrink.cross_fitted): weights fitted on the very spots scored would shrink their
  residuals, gene by gene, and the intervals of the genes fitted best would under-cover.

With one known layer the held-out task is in-layer, easier than a cross-layer one; the
distance floor of error_scale.py keeps a hidden layer's intervals from narrowing below what
held-out blocks showed, and docs/science.md reports the coverage reached on her2st C.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from asign.train import error_scale
from asign.train.error_scale import Query

DEFAULT_COVERAGE = 0.9
N_BLOCKS = 10
POOL_N = 100.0  # pseudo spots of the all-gene score distribution in a gene's quantile
DISTANCE_FLOOR = 0.5  # quantile of held-out spots' distances a query's distance is floored at
CHUNK = 8192  # query spots per step of features (Calibration.bounds, calibrate)
FIT_PAIRS = 1_000_000  # (spot, gene) pairs the σ model is fitted on at most: a seeded sample
FIT_SEED = 0
POOL_POINTS = 4096  # order statistics that stand for the pooled distribution
METHOD = "conformal, learnt error scale (error_scale.py), per-gene quantile pooled"


@dataclass(frozen=True)
class Held:
    """One held-out block: its spots predicted from the other (source) spots."""

    query: Query
    resid: np.ndarray  # (n, G) label − prediction


def conformal_quantile(scores: np.ndarray, coverage: float,
                       pool_n: float = POOL_N) -> np.ndarray:
    """(G,) per-gene conformal quantile of ``scores`` (n, G): the level ``ceil((m + 1) ·
    coverage) / m`` quantile of the mixture of gene g's n scores (weight n) and all genes'
    (weight ``pool_n``), m = n + pool_n; ``pool_n`` 0 is the plain per-gene quantile. With
    too few spots for a per-gene rank, the quantile of all entries pooled; inf when even
    that is too few (the interval is then unbounded, not silently too narrow)."""
    n, g = scores.shape
    pooled = np.sort(scores, axis=None)
    rank = int(np.ceil((n + 1) * coverage))
    if n == 0 or rank > n:
        rank = int(np.ceil((pooled.size + 1) * coverage))
        if pooled.size == 0 or rank > pooled.size:
            return np.full(g, np.inf)
        return np.full(g, pooled[rank - 1])
    # the mixture stands for n + pool_n exchangeable scores: its conformal rank
    n_eff = n + pool_n
    level = min(1.0, np.ceil((n_eff + 1) * coverage) / n_eff)
    if pooled.size > POOL_POINTS:  # the pooled distribution by evenly spaced order statistics
        pooled = pooled[np.linspace(0, pooled.size - 1, POOL_POINTS).round().astype(np.int64)]
    own = np.sort(scores, axis=0)
    w_own = n / (n + pool_n)
    f_pool_at_pool = np.arange(1, pooled.size + 1) / pooled.size
    out = np.empty(g)
    for j in range(g):
        # the mixture CDF at every candidate value (the gene's scores and the pooled ones)
        cand = np.concatenate([own[:, j], pooled])
        f_own = np.searchsorted(own[:, j], cand, side="right") / n
        f_pool = np.concatenate([np.searchsorted(pooled, own[:, j], side="right") / pooled.size,
                                 f_pool_at_pool])
        ok = w_own * f_own + (1 - w_own) * f_pool >= level - 1e-12
        out[j] = cand[ok].min()
    return out


@dataclass(frozen=True)
class Calibration:
    """What held-out blocks determine: the σ model, the per-gene quantile and the gene
    error; applied to any query by :meth:`bounds`."""

    model: error_scale.ScaleModel
    q: np.ndarray  # (G,)
    gene_error: np.ndarray  # (G,)
    min_distance: float

    def sigma(self, query: Query) -> np.ndarray:
        x = error_scale.features(query, self.gene_error, self.min_distance)
        return self.model.sigma(x)

    def bounds(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (Q, G) float32, in chunks of ``CHUNK`` query spots (the
        features of a whole large sample would not fit in memory), all sharing the query's
        indexed source."""
        lo = np.empty(query.pred.shape, dtype=np.float32)
        hi = np.empty(query.pred.shape, dtype=np.float32)
        for rows, part in _chunks(query):
            half = self.q[None, :] * self.sigma(part)
            lo[rows], hi[rows] = part.pred - half, part.pred + half
        return lo, hi

    def summary(self) -> dict[str, Any]:
        """What a run records (``timings.selection``)."""
        return {"method": METHOD, "coef": self.model.summary(),
                "q_median": round(float(np.median(self.q)), 4),
                "min_distance_pitches": round(self.min_distance, 3)}


def calibrate(held: list[Held], coverage: float) -> Calibration | None:
    """The σ model and quantiles from held-out blocks (module docstring); None without
    any held-out spot. The σ model (seven coefficients) is fitted on at most
    ``FIT_PAIRS`` held-out (spot, gene) pairs, drawn per block in proportion to its size
    (all of them below the cap, as on her2st); every held-out pair is scored. Features are
    computed ``CHUNK`` spots at a time: at Visium HD scale the features of every pair,
    (spots × genes × 7) float64, were GBs."""
    held = [h for h in held if len(h.resid)]
    if not held:
        return None
    dists = np.concatenate([error_scale.distance(h.query.source, h.query.xy) for h in held])
    min_d = float(np.quantile(dists, DISTANCE_FLOOR)) if DISTANCE_FLOOR > 0 else 0.0
    n_genes = held[0].resid.shape[1]
    pairs = fit_pairs([h.resid.size for h in held])
    x_fit = [_pair_features(h.query, min_d, p, n_genes) for h, p in zip(held, pairs, strict=True)]
    r_fit = [h.resid.reshape(-1)[p] for h, p in zip(held, pairs, strict=True)]

    def fitted(blocks: list[int], ge: np.ndarray) -> error_scale.ScaleModel:
        x = np.concatenate([error_scale.with_gene_error(x_fit[k], ge, pairs[k] % n_genes)
                            for k in blocks])
        return error_scale.fit(x, np.concatenate([r_fit[k] for k in blocks]))

    scores = []
    for b, h in enumerate(held):  # cross-fit: block b's σ from the other blocks
        rest = [k for k in range(len(held)) if k != b] or [b]
        ge = error_scale.gene_error(np.concatenate([held[k].resid for k in rest]))
        cal = Calibration(fitted(rest, ge), np.ones(n_genes), ge, min_d)
        sigma = np.concatenate([cal.sigma(part) for _, part in _chunks(h.query)])
        scores.append(np.abs(h.resid) / sigma)
    ge = error_scale.gene_error(np.concatenate([h.resid for h in held]))
    model = fitted(list(range(len(held))), ge)
    return Calibration(model, conformal_quantile(np.concatenate(scores), coverage), ge, min_d)


def fit_pairs(sizes: list[int], cap: int | None = None, seed: int = FIT_SEED
              ) -> list[np.ndarray]:
    """Per block of ``sizes`` (pairs), the sorted flat indices of the pairs the σ model is
    fitted on: all of them when they total ≤ ``cap`` (default ``FIT_PAIRS``), else a
    seeded sample of about ``cap`` pairs, each block's share in proportion to its size."""
    cap = FIT_PAIRS if cap is None else cap
    total = sum(sizes)
    if total <= cap:
        return [np.arange(n) for n in sizes]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, min(n, max(1, round(cap * n / total))), replace=False))
            for n in sizes]


def _chunks(query: Query) -> Iterator[tuple[slice, Query]]:
    """``CHUNK`` query spots at a time, each part sharing the query's indexed source."""
    for a in range(0, len(query.pred), CHUNK):
        rows = slice(a, a + CHUNK)
        yield rows, Query(query.source, query.xy[rows], query.pred[rows],
                          None if query.reference is None else query.reference[rows])


def _pair_features(query: Query, min_d: float, pairs: np.ndarray, n_genes: int) -> np.ndarray:
    """(m, F − 1) spot features of the flat (spot · G + gene) indices ``pairs`` (sorted)."""
    out = []
    for rows, part in _chunks(query):
        lo, hi = np.searchsorted(pairs, [rows.start * n_genes, (rows.start + CHUNK) * n_genes])
        if hi > lo:
            x = error_scale.spot_features(part, min_d)
            out.append(x.reshape(-1, x.shape[-1])[pairs[lo:hi] - rows.start * n_genes])
    return np.concatenate(out)


def coverage_of(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """Share of (spot, gene) entries whose truth lies inside the interval."""
    return float(np.mean((truth >= lower) & (truth <= upper)))


def unbounded(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inf = np.full(pred.shape, np.inf, dtype=np.float32)
    return (pred - inf).astype(np.float32), (pred + inf).astype(np.float32)


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


def for_baseline(predict: Callable[[np.ndarray], np.ndarray], y: np.ndarray, known: np.ndarray,
                 section: np.ndarray, xy: np.ndarray, pred: np.ndarray, coverage: float,
                 seed: int) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """Intervals of a baseline and what was calibrated: ``predict(known_mask)`` re-runs it
    from other known spots; each calibration set is predicted from the rest. ``y`` holds
    known labels only (rows outside ``known`` are never read)."""
    y_known = np.asarray(y[known], dtype=np.float64)  # shared by every held-out source
    held = []
    for m in calibration_sets(section, known, xy, seed):
        p = predict(known & ~m)
        src = error_scale.source(xy[known], y_known, np.flatnonzero(~m[known]))
        held.append(Held(Query(src, xy[m], p[m]), y[m] - p[m]))
    cal = calibrate(held, coverage)
    if cal is None:
        return unbounded(pred), {}
    return cal.bounds(Query(error_scale.source(xy[known], y_known), xy, pred)), cal.summary()


def for_predictions(task: Any, xy: np.ndarray, pred: np.ndarray, val_pred: np.ndarray | None,
                    coverage: float, prior: np.ndarray | None = None,
                    val_prior: np.ndarray | None = None, group: np.ndarray | None = None
                    ) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """Intervals of a trained network around ``pred`` (N, G) from its validation spots'
    predictions ``val_pred`` (the final ones: after ensembling and shrinkage), and what
    was calibrated. ``prior`` / ``val_prior``: the shrinkage prior of every spot (from all
    known spots) and of the validation spots (from the training spots), if any; ``group``:
    :func:`calibration_groups` of ``task``, if the caller has them."""
    import torch

    val, train, known = task.val, task.train, task.visible
    # the known rows' labels (offset added back) in float64 once, shared by both sources;
    # rows outside task.visible are never read
    y = np.asarray(task.y[torch.as_tensor(known, device=task.y.device)].float().cpu().numpy()
                   + task.offset, dtype=np.float64)
    at = np.cumsum(known) - 1  # a known spot's row of y
    held = []
    if val_pred is not None and val.any() and train.any():
        # at most N_BLOCKS held-out groups of whole blocks, one indexed source shared by
        # all: at Visium HD scale there are thousands of blocks, and a copy of the training
        # spots and a cross-fit per block would cost O(N²)
        rows = np.flatnonzero(val)
        group = calibration_groups(task, xy) if group is None else group
        src = error_scale.source(xy[known], y, at[train])
        val_pred = np.asarray(val_pred, dtype=np.float64)
        val_prior = None if val_prior is None else np.asarray(val_prior, dtype=np.float64)
        for g in np.unique(group):
            m = group == g
            held.append(Held(Query(src, xy[rows[m]], val_pred[m],
                                   None if val_prior is None else val_prior[m]),
                             y[at[rows[m]]] - val_pred[m]))
    cal = calibrate(held, coverage)
    if cal is None:
        return unbounded(pred), {}
    return (cal.bounds(Query(error_scale.source(xy[known], y), xy, pred, prior)),
            cal.summary())


def calibration_groups(task: Any, xy: np.ndarray) -> np.ndarray:
    """(V,) the held-out group (0 … ``N_BLOCKS`` − 1) of each validation spot of ``task``, in
    row order: whole validation blocks, dealt round the groups."""
    rows = np.flatnonzero(task.val)
    blocks_of = validation_blocks(xy, task.section, task.visible, task.val)[rows]
    return np.unique(blocks_of, return_inverse=True)[1].ravel() % N_BLOCKS


def validation_blocks(xy: np.ndarray, section: np.ndarray, known: np.ndarray,
                      val: np.ndarray) -> np.ndarray:
    """(N,) block id of each validation spot: the validation split's blocks
    (blocks.section_blocks over the known spots), which cross-fitting holds out in groups;
    -1 elsewhere."""
    from asign.train import blocks

    out, _ = blocks.section_blocks(xy, section, known)
    out[~val] = -1
    return out
