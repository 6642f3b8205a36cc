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
- ``ridge`` and ``ridge+idw``: ridge regression from the per-section z-scored spot
  embeddings, and its blend with idw, penalty and weight by blocked CV (ridge.py).
- ``cli``: label propagation alone over the 3D graph with unit node weights
  (``asign.train.cli_block.propagate``); spots that no propagation reaches get the
  mean profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asign.numeric import (
    centred_products,
    idw,  # noqa: F401  (the idw baseline's kernel, shared with ingest)
    row_steps,
)

SIMILARITY_TEMPERATURE = 0.1
SIMILARITY_CHUNK = 4096  # queries per step of similarity at most
SIMILARITY_DIMS = 16  # principal axes the k-d tree of similarity searches in
SIMILARITY_CANDIDATES = 4  # × k nearest there, re-ranked by the full cosine


def mean_profile(y_known: np.ndarray, n_query: int) -> np.ndarray:
    """(n_query, G): the known spots' mean profile repeated."""
    mu = np.asarray(y_known, dtype=np.float64).mean(axis=0)
    return np.broadcast_to(mu, (n_query, mu.size)).astype(np.float32)


def similarity(
    emb_known: np.ndarray,
    y_known: np.ndarray,
    emb_query: np.ndarray,
    k: int = 20,
    temperature: float = SIMILARITY_TEMPERATURE,
    dims: int = SIMILARITY_DIMS,
) -> np.ndarray:
    """Softmax(cos/τ)-weighted mean of the k most similar known spots (embedding kNN).

    O((N + M) log M), never N × M: the unit embeddings are projected on their first
    ``dims`` principal axes (of the known spots), a k-d tree over the known spots gives
    each query ``SIMILARITY_CANDIDATES`` × k candidates by distance there, and the exact
    cosine in the full dimension ranks the candidates. On unit vectors Euclidean order is
    cosine order, so with D ≤ ``dims`` (no projection) the top k are exact; above it, a
    true top-k spot is missed only when its projection lands outside the candidates (her2st
    C: docs/platforms.md "Scale" gives the difference to the exhaustive search)."""
    from scipy.spatial import cKDTree

    a = _unit(emb_known)
    k = min(k, len(a))
    y = np.asarray(y_known, dtype=np.float64)
    mean = a.mean(axis=0)
    basis = _principal_axes(a, mean, dims)
    tree = cKDTree(np.concatenate([(a[r] - mean) @ basis
                                   for r in row_steps(len(a), a.shape[1])]))
    a32 = a.astype(np.float32)
    del a
    m = min(len(a32), SIMILARITY_CANDIDATES * k)
    out = np.empty((len(emb_query), y.shape[1]), dtype=np.float32)
    step = max(1, min(SIMILARITY_CHUNK, 2**24 // (m * a32.shape[1])))  # ≤ 64 MB gathered
    for lo in range(0, len(emb_query), step):
        q = _unit(emb_query[lo:lo + step])  # per chunk: all queries in float64 were GBs
        _, cand = tree.query((q - mean) @ basis, k=m)
        cand = cand.reshape(len(q), m)
        cos = np.matmul(a32[cand], q.astype(np.float32)[:, :, None])[:, :, 0]  # exact cosine
        pick = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        idx = np.take_along_axis(cand, pick, axis=1)
        top = np.take_along_axis(cos, pick, axis=1) / temperature
        w = np.exp(top - top.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out[lo:lo + step] = np.einsum("qk,qkg->qg", w, y[idx])
    return out


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
    known = np.asarray(known, dtype=bool)
    known_t = torch.as_tensor(known)
    # float32 (N, G) at most once: no float64 copy of the labels (~2 KB per spot at 250 genes)
    y_t = torch.zeros((n, y.shape[1]), dtype=torch.float32)
    y_t[known_t] = torch.as_tensor(np.asarray(y[known], dtype=np.float32))
    with torch.no_grad():
        y_prop, reached = propagate(
            torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64),
            torch.as_tensor(edge_weight, dtype=torch.float32), torch.ones(n),
            y_t, known_t, n_iter=n_iter)
    del y_t
    out = y_prop.numpy().astype(np.float32, copy=False)
    reached_np = reached.numpy().astype(bool) | known
    out[~reached_np] = np.asarray(y[known]).mean(axis=0, dtype=np.float64)
    return out


def _principal_axes(a: np.ndarray, mean: np.ndarray, dims: int) -> np.ndarray:
    """(D, min(D, dims)): the first ``dims`` principal axes of the rows of ``a`` (centred
    on ``mean``), as eigenvectors of their D × D scatter matrix, summed over row steps: a
    Visium HD layer's centred copy and its SVD were GBs. The identity when D ≤ dims."""
    d = a.shape[1]
    if d <= dims:
        return np.eye(d)
    scatter, _ = centred_products(a, mean)
    _, vecs = np.linalg.eigh(scatter)  # ascending eigenvalues
    return vecs[:, ::-1][:, :dims]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- registry adapters
# ModelSpec.baseline names one of these: (cfg, sample, y, known) -> (N, G) predictions from
# the labels ``y`` of the ``known`` spots. Adding a baseline = one function here + one
# MODELS entry in train/config.py.


def predict_mean(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    return mean_profile(y[known], s.n_spots)


def predict_idw(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    return idw(s.xy[known], y[known], s.xy, k=cfg.idw_k, power=cfg.idw_power)


def predict_similarity(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    return similarity(s.spot_feat[known], y[known], s.spot_feat, k=cfg.similarity_k)


def predict_cli(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    import torch

    from asign.train.model import scale_edge_weights

    # Same edge weighting as the model's CLI, so the two differ only in what is learned.
    w = scale_edge_weights(torch.as_tensor(s.weight), torch.as_tensor(s.cross.astype(np.int64)))
    return cli_alone(s.src, s.dst, w.numpy(), y, known, n_iter=cfg.cli_iters)


def predict_ridge(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    from asign.train.ridge import fit_predict

    pred, _, _ = fit_predict(section_zscored(s), y, known, s.xy)
    return pred


def predict_ridge_idw(cfg: Any, s: Any, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    from asign.train import ridge

    def nearest(xy_k: np.ndarray, y_k: np.ndarray, xy_q: np.ndarray) -> np.ndarray:
        return idw(xy_k, y_k, xy_q, k=cfg.idw_k, power=cfg.idw_power)

    pred, _, oob = ridge.fit_predict(section_zscored(s), y, known, s.xy)
    w = ridge.choose_blend(y[known], oob, ridge.idw_out_of_block(s.xy[known], y[known], nearest))
    # in place, the same float32 arithmetic: (N, G) temporaries are GBs at Visium HD scale
    out = nearest(s.xy[known], y[known], s.xy)
    out *= np.float32(1 - w)
    pred *= np.float32(w)
    out += pred
    return out


def section_zscored(s: Any) -> np.ndarray:
    """(N, D) float32 spot embeddings z-scored per section, as the networks see them."""
    from asign.train.data import _zscore

    x = s.spot_feat.astype(np.float32)
    for sec in np.unique(s.section):
        rows = s.section == sec
        x[rows] = _zscore(x[rows])
    return x
