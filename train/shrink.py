"""Shrinkage of a network's prediction toward the prior it starts from, by a weight that can
reach zero.

A network trained on a few hundred spots of one layer and asked about another layer is
often less reliable than the simplest prior: asign2d, reading images alone, did worse than
the known layer's mean profile on every hidden section of her2st C. So after training
(best epoch, CLI gate), the final prediction is

    ŷ_g = w_g · ŷ_network,g + (1 − w_g) · prior_g,     w_g ∈ [0, 1],

with the prior

- ``mean``: the known spots' mean profile (asign2d, and any network without a CLI);
- ``idw``: inverse-distance weighting of the 8 nearest known spots in the aligned frame
  (asign3d: the same prior its CLI blends in, and the ``idw`` baseline).

w_g is the least-squares weight on the held-out validation blocks (blocks.py), clipped to
[0, 1]: the prediction of the validation spots from the training spots, by the network
and by the prior, against their labels. A gene whose network prediction does not beat the
prior on held-out blocks gets w_g = 0. Its per-gene estimate (a few hundred validation spots
per gene) is shrunk toward the weight shared by all genes, in proportion to its noise
(``POOL``): w_g = (1 − λ) · ŵ_g + λ · ŵ_shared. At test time the prior comes from every
known spot, as the idw baseline's does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POOL = 0.5  # λ: per-gene weight pulled half-way to the shared weight


def prior_kind(cfg: Any) -> str:
    return "idw" if cfg.uses_cli else "mean"


def prior(kind: str, xy: np.ndarray, y: np.ndarray, source: np.ndarray, k: int = 8,
          power: float = 1.0) -> np.ndarray:
    """(N, G) prior of every spot from the labels of the ``source`` spots."""
    from asign.train.baselines import idw, mean_profile

    if kind == "idw":
        return idw(xy[source], y[source], xy, k=k, power=power)
    return mean_profile(y[source], len(xy))


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


def blend(model: np.ndarray, prior_: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * model + (1 - w) * prior_).astype(np.float32)


def summary(w: np.ndarray) -> dict[str, float]:
    """What a run records about its weights."""
    return {"mean": round(float(w.mean()), 4), "min": round(float(w.min()), 4),
            "max": round(float(w.max()), 4), "zero": int((w <= 1e-6).sum())}
