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
per gene) is pulled half-way toward the weight shared by all genes (``POOL``):
w_g = (1 − λ) · ŵ_g + λ · ŵ_shared. The prior whose blend has the lower validation MSE is
kept (``--shrink-prior auto``), or the one named. At test time the prior is computed from
every known spot, as its baseline run would be.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POOL = 0.5  # λ: per-gene weight pulled half-way to the shared weight


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
            pool: float = POOL) -> np.ndarray:
    """(G,) blend weights of the network (see the module docstring)."""
    d = np.asarray(model_val, np.float64) - prior_val
    r = np.asarray(true_val, np.float64) - prior_val
    den = (d * d).sum(axis=0)
    per_gene = np.where(den > 1e-12, (d * r).sum(axis=0) / np.maximum(den, 1e-12), 0.0)
    shared = float((d * r).sum() / max(float(den.sum()), 1e-12))
    w = (1 - pool) * np.clip(per_gene, 0.0, 1.0) + pool * np.clip(shared, 0.0, 1.0)
    return np.clip(w, 0.0, 1.0)


def cross_fitted(model_val: np.ndarray, prior_val: np.ndarray, true_val: np.ndarray,
                 group: np.ndarray) -> np.ndarray:
    """(V, G) float32 blend of the validation spots, each ``group`` with the weights fitted
    on the other groups (on all of them when there is one group): what the intervals
    calibrate on, out of sample for the weights as a hidden spot is."""
    out = np.empty(np.shape(model_val), dtype=np.float32)
    for g in np.unique(group):
        m = group == g
        fit = ~m if (~m).any() else m
        w = weights(model_val[fit], prior_val[fit], true_val[fit])
        out[m] = blend(model_val[m], prior_val[m], w)
    return out


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
