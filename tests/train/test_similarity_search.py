"""similarity: the k-d tree search over principal axes finds the exhaustive top k."""

from __future__ import annotations

import numpy as np
import pytest

from asign.train import baselines


def _exhaustive(emb_known, y_known, emb_query, k=20, temperature=0.1):
    a = emb_known / np.linalg.norm(emb_known, axis=1, keepdims=True)
    q = emb_query / np.linalg.norm(emb_query, axis=1, keepdims=True)
    cos = q @ a.T  # fine at test size; the product code never forms it
    idx = np.argsort(-cos, axis=1)[:, :k]
    top = np.take_along_axis(cos, idx, axis=1) / temperature
    w = np.exp(top - top.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkg->qg", w, y_known[idx])


@pytest.mark.parametrize("dim", [16, 200])  # below and above the projected dimension
def test_tree_search_equals_the_exhaustive_search(dim):
    rng = np.random.default_rng(3)
    latent = rng.standard_normal((1500, 6))
    emb = latent @ rng.standard_normal((6, dim)) + 0.2 * rng.standard_normal((1500, dim))
    y = latent @ rng.standard_normal((6, 7))
    got = baselines.similarity(emb[:500], y[:500], emb[500:])
    want = _exhaustive(emb[:500], y[:500], emb[500:])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fewer_known_spots_than_k_and_candidates():
    rng = np.random.default_rng(4)
    emb, y = rng.standard_normal((30, 64)), rng.standard_normal((30, 3))
    np.testing.assert_allclose(baselines.similarity(emb[:5], y[:5], emb[5:]),
                               _exhaustive(emb[:5], y[:5], emb[5:], k=5), rtol=1e-4, atol=1e-5)
