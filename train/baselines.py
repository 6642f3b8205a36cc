"""Non-learned baselines (DESIGN §5). Pure functions: arrays in, predictions out.

Every baseline sees only the known spots' labels of the sample it predicts (the same
information CLI gets at test time) and predicts every query spot:

- ``mean``: the known spots' mean profile, for every query spot.
- ``idw``: the k = 8 nearest known spots in the aligned (x, y) frame (z ignored: layers are
  stacked in one frame), weights 1 / d (power 1); a query at distance 0 from a known spot
  (d < 1e-6 µm) takes that spot's profile. The paper's "Overlap" baseline.
- ``similarity``: the k = 20 known spots with the highest cosine similarity of spot
  embeddings; weights softmax(cos / τ) with τ = 0.1, so near-ties share weight and a
  clearly closer match dominates. The paper's "Similarity" baseline.
- ``cli``: label propagation alone over the 3D graph with unit node weights
  (``asign.train.cli_block.propagate``); spots that no propagation reaches get the
  mean profile.
"""

from __future__ import annotations

import numpy as np

SIMILARITY_TEMPERATURE = 0.1


def mean_profile(y_known: np.ndarray, n_query: int) -> np.ndarray:
    """(n_query, G): the known spots' mean profile repeated."""
    mu = np.asarray(y_known, dtype=np.float64).mean(axis=0)
    return np.broadcast_to(mu, (n_query, mu.size)).astype(np.float32)


def idw(
    xy_known: np.ndarray,
    y_known: np.ndarray,
    xy_query: np.ndarray,
    k: int = 8,
    power: float = 1.0,
) -> np.ndarray:
    """Inverse-distance weighted mean of the k nearest known spots."""
    from scipy.spatial import cKDTree

    k = min(k, len(xy_known))
    dist, idx = cKDTree(np.asarray(xy_known, dtype=np.float64)).query(
        np.asarray(xy_query, dtype=np.float64), k=k)
    dist, idx = dist.reshape(len(xy_query), k), idx.reshape(len(xy_query), k)
    exact = dist < 1e-6
    w = 1.0 / np.maximum(dist, 1e-6) ** power
    # A query sitting on a known spot takes that spot's profile (the weight would be ∞).
    w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
    w /= w.sum(axis=1, keepdims=True)
    y = np.asarray(y_known, dtype=np.float64)
    return np.einsum("qk,qkg->qg", w, y[idx]).astype(np.float32)


def similarity(
    emb_known: np.ndarray,
    y_known: np.ndarray,
    emb_query: np.ndarray,
    k: int = 20,
    temperature: float = SIMILARITY_TEMPERATURE,
) -> np.ndarray:
    """Softmax(cos/τ)-weighted mean of the k most similar known spots (embedding kNN)."""
    a = _unit(emb_known)
    q = _unit(emb_query)
    k = min(k, len(a))
    cos = q @ a.T  # (Q, K) — queries are one sample, known spots one layer: small
    idx = np.argpartition(-cos, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(cos, idx, axis=1) / temperature
    w = np.exp(top - top.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    y = np.asarray(y_known, dtype=np.float64)
    return np.einsum("qk,qkg->qg", w, y[idx]).astype(np.float32)


def cli_alone(
    src: np.ndarray,
    dst: np.ndarray,
    edge_weight: np.ndarray,
    y: np.ndarray,
    known: np.ndarray,
    n_iter: int = 10,
) -> np.ndarray:
    """(N, G) label propagation from the known spots with unit node weights; spots it does
    not reach get the known mean profile; known spots keep their labels."""
    import torch

    from asign.train.cli_block import propagate

    n = len(known)
    known_t = torch.as_tensor(np.asarray(known, dtype=bool))
    y_t = torch.as_tensor(np.where(known[:, None], y, 0.0), dtype=torch.float32)
    with torch.no_grad():
        y_prop, reached = propagate(
            torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64),
            torch.as_tensor(edge_weight, dtype=torch.float32), torch.ones(n),
            y_t, known_t, n_iter=n_iter)
    out = y_prop.numpy().astype(np.float32)
    reached_np = reached.numpy().astype(bool) | known
    mu = np.asarray(y, dtype=np.float64)[known].mean(axis=0)
    out[~reached_np] = mu
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
