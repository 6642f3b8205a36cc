"""Shrinkage of a network's prediction toward the prior it starts from, by a weight that can
reach zero.

A network trained on a few hundred spots of one layer and asked about another layer is
often less reliable than the simplest prior: asign2d, reading images alone, did worse than
the known layer's mean profile on every hidden section of her2st C. So after training
(best epoch, CLI gate), the final prediction is

    ŷ_g = w_g · ŷ_network,g + (1 − w_g) · prior_g,     w_g ∈ [0, 1],

with the prior chosen among registry baselines that read what the network reads:

- networks with a CLI (asign3d): ``idw`` (the prior its CLI blends in) or ``ridge+idw``;
- networks without (asign2d, images only): ``mean`` (the known mean profile) or ``ridge``.

w_g is the least-squares weight on the held-out validation blocks (blocks.py), clipped to
[0, 1]: the prediction of the validation spots from the training spots, by the network
and by the prior, against their labels. A gene whose network prediction does not beat the
prior on held-out blocks gets w_g = 0. Its per-gene estimate (a few dozen validation spots
per gene) may be pulled toward the weight shared by all genes:
w_g = (1 − λ) · ŵ_g + λ · ŵ_shared.

What is chosen — the prior (``--shrink-prior auto``, or the one named), λ among
:data:`POOLS`, or the prior alone (w = 0) — is chosen by :func:`choose` on the
validation spots' *cross-fitted* error: each held-out group of blocks
(intervals.calibration_groups) blended with weights fitted on the other groups. Fitted
and scored on the same spots, a least-squares blend can only lower their error, so an
in-sample comparison would always prefer blending, and the lowest λ; out of sample, a
network that adds nothing the prior lacks loses to the prior alone. At test time the prior
is computed from every known spot, as its baseline run would be, and the weights are
refitted on every validation spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# λ candidates of :func:`choose`, simplest first: a tie keeps the earlier (the prior alone,
# tried before any of them, is simpler still)
POOLS = (1.0, 0.5, 0.0)


PRIORS = {True: ("idw", "ridge+idw"), False: ("mean", "ridge")}  # by: the network has a CLI


def candidates(cfg: Any) -> tuple[str, ...]:
    """The priors ``cfg``'s network may shrink toward (``--shrink-prior``)."""
    allowed = PRIORS[bool(cfg.uses_cli)]
    return allowed if cfg.shrink_prior == "auto" else (cfg.shrink_prior,)


def prior(cfg: Any, kind: str, sample: Any, y: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(N, G) the baseline ``kind``'s prediction of every spot from the ``source`` spots'
    labels (its registry function, train/baselines.py)."""
    from asign.train import baselines
    from asign.train.config import MODELS

    return getattr(baselines, str(MODELS[kind].baseline))(cfg.with_(model=kind), sample, y,
                                                         source)


def weights(model_val: np.ndarray, prior_val: np.ndarray, true_val: np.ndarray,
            pool: float) -> np.ndarray:
    """(G,) blend weights of the network (see the module docstring)."""
    m = moments(model_val, prior_val, true_val, np.zeros(len(model_val), dtype=np.int64))
    return _weights(m.de[0], m.dd[0], pool)


@dataclass(frozen=True)
class Moments:
    """Per held-out group and gene, the sums a blend's weights and error are made of:
    d = network − prior, e = truth − prior; the blend's squared error is
    Σ (w·d − e)² = w²·Σd² − 2w·Σde + Σe². One pass over the validation spots gives every
    candidate's weights and cross-fitted error, without a copy of the spots per group."""

    de: np.ndarray  # (k, G) Σ d·e
    dd: np.ndarray  # (k, G) Σ d²
    ee: np.ndarray  # (k, G) Σ e²
    groups: np.ndarray  # (k,) the group labels, sorted
    n: int  # validation spots

    def left_out(self, j: int, pool: float) -> np.ndarray:
        """(G,) weights fitted without group ``j`` (on every group when it is the only
        one)."""
        rest = np.arange(len(self.groups)) != j
        if not rest.any():
            rest = ~rest
        return _weights(self.de[rest].sum(axis=0), self.dd[rest].sum(axis=0), pool)

    def cross_fitted_mse(self, pool: float | None) -> float:
        """MSE of the cross-fitted blend with ``pool`` (None: the prior alone)."""
        size = max(self.n * self.de.shape[1], 1)
        if pool is None:
            return float(self.ee.sum()) / size
        sse = 0.0
        for j in range(len(self.groups)):
            w = self.left_out(j, pool)
            sse += float((w * w * self.dd[j] - 2 * w * self.de[j] + self.ee[j]).sum())
        return sse / size


def moments(model_val: np.ndarray, prior_val: np.ndarray, true_val: np.ndarray,
            group: np.ndarray) -> Moments:
    """:class:`Moments` of the (V, G) validation predictions per ``group`` (V,), in row
    steps of float64 (numeric.row_steps)."""
    from asign.numeric import row_steps

    groups, inv = np.unique(np.asarray(group), return_inverse=True)
    inv = inv.ravel()
    k, g = len(groups), np.shape(model_val)[1]
    de, dd, ee = (np.zeros((k, g)) for _ in range(3))
    for r in row_steps(len(inv), 5 * g):
        p = np.asarray(prior_val[r], dtype=np.float64)
        d = np.asarray(model_val[r], dtype=np.float64) - p
        e = np.asarray(true_val[r], dtype=np.float64) - p
        of = (inv[r][None, :] == np.arange(k)[:, None]).astype(np.float64)  # (k, rows)
        de += of @ (d * e)
        dd += of @ (d * d)
        ee += of @ (e * e)
    return Moments(de, dd, ee, groups, len(inv))


def _weights(de: np.ndarray, dd: np.ndarray, pool: float) -> np.ndarray:
    """(G,) weights from the sums Σde, Σd² over the fitting spots (module docstring)."""
    per_gene = np.where(dd > 1e-12, de / np.maximum(dd, 1e-12), 0.0)
    shared = float(de.sum() / max(float(dd.sum()), 1e-12))
    w = (1 - pool) * np.clip(per_gene, 0.0, 1.0) + pool * np.clip(shared, 0.0, 1.0)
    return np.clip(w, 0.0, 1.0)


def cross_fitted(model_val: np.ndarray, prior_val: np.ndarray, true_val: np.ndarray,
                 group: np.ndarray, pool: float, m: Moments | None = None
                 ) -> np.ndarray:
    """(V, G) float32 blend of the validation spots, each ``group`` with the weights fitted
    on the other groups (on all of them when there is one group): what the choice and the
    intervals are scored on, out of sample for the weights as a hidden spot is. ``m``:
    the :func:`moments` of these arguments, if the caller has them."""
    group = np.asarray(group)
    m = moments(model_val, prior_val, true_val, group) if m is None else m
    out = np.empty(np.shape(model_val), dtype=np.float32)
    for j, label in enumerate(m.groups):
        rows = np.flatnonzero(group == label)
        out[rows] = blend(model_val[rows], prior_val[rows], m.left_out(j, pool))
    return out


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` chose, and the validation error every candidate had."""

    prior: str
    pool: float | None  # λ; None: the prior alone (every weight 0)
    weights: np.ndarray  # (G,) fitted on every validation spot
    held_out: np.ndarray  # (V, G) float32: the validation spots' cross-fitted blend
    scores: dict[str, float]  # candidate → cross-fitted validation MSE

    def summary(self) -> dict[str, Any]:
        """What a run records (``timings.selection``)."""
        return {"prior": self.prior, "pool": self.pool, **summary(self.weights),
                "val_mse": self.scores}


def choose(model_val: np.ndarray, priors_val: dict[str, np.ndarray], true_val: np.ndarray,
           group: np.ndarray) -> Choice:
    """The prior (keys of ``priors_val``: each one's (V, G) prediction of the validation
    spots from the training spots) and λ, or the prior alone, whose validation spots'
    cross-fitted blend (held out in ``group``s) has the lowest MSE; ties keep the earlier
    candidate (module docstring). One pass over the spots per prior (:class:`Moments`),
    one more for the chosen blend."""
    best: tuple[float, str, float | None, Moments] | None = None
    scores = {}
    for kind, p in priors_val.items():
        m = moments(model_val, p, true_val, group)
        for pool in (None, *POOLS):
            mse = m.cross_fitted_mse(pool)
            scores[kind if pool is None else f"{kind}, pool {pool:g}"] = round(mse, 5)
            if best is None or mse < best[0]:
                best = (mse, kind, pool, m)
    if best is None:
        raise ValueError("shrink.choose: no prior")
    _, kind, pool, m = best
    p = priors_val[kind]
    if pool is None:
        return Choice(kind, None, np.zeros(m.de.shape[1]), np.asarray(p, dtype=np.float32),
                      scores)
    w = _weights(m.de.sum(axis=0), m.dd.sum(axis=0), pool)
    return Choice(kind, pool, w, cross_fitted(model_val, p, true_val, group, pool, m), scores)


def blend(model: np.ndarray, prior_: np.ndarray, w: np.ndarray) -> np.ndarray:
    """w · model + (1 − w) · prior, as float32; in row steps (numeric.row_steps: the
    float64 temporaries of a whole Visium HD stack were GBs)."""
    from asign.numeric import row_steps

    out = np.empty(np.broadcast_shapes(np.shape(model), np.shape(prior_)), dtype=np.float32)
    for r in row_steps(len(out), 3 * out.shape[1]):
        out[r] = w * model[r] + (1 - w) * prior_[r]
    return out


def summary(w: np.ndarray) -> dict[str, float]:
    """What a run records about its weights."""
    return {"mean": round(float(w.mean()), 4), "min": round(float(w.min()), 4),
            "max": round(float(w.max()), 4), "zero": int((w <= 1e-6).sum())}
