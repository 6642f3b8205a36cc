"""baselines: each is checked against a hand-computed answer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asign import numeric
from asign.train import baselines


def test_mean_profile_repeats_the_known_mean():
    y = np.array([[1.0, 2.0], [3.0, 6.0]])
    out = baselines.mean_profile(y, 3)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, [[2.0, 4.0]] * 3)


def test_idw_weights_are_inverse_distance():
    xy_known = np.array([[0.0, 0.0], [3.0, 0.0]])
    y_known = np.array([[0.0], [10.0]])
    # query at x=1: distances 1 and 2 -> weights 1, 1/2 -> (0*1 + 10*0.5) / 1.5
    out = baselines.idw(xy_known, y_known, np.array([[1.0, 0.0]]), k=2, power=1.0)
    np.testing.assert_allclose(out, [[10 * 0.5 / 1.5]], rtol=1e-6)
    # power 2: weights 1, 1/4
    out2 = baselines.idw(xy_known, y_known, np.array([[1.0, 0.0]]), k=2, power=2.0)
    np.testing.assert_allclose(out2, [[10 * 0.25 / 1.25]], rtol=1e-6)


def test_idw_on_a_known_spot_returns_its_profile_and_k_is_capped():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(5, 2))
    y = rng.normal(size=(5, 3))
    out = baselines.idw(xy, y, xy[[2]], k=8)  # k > number of known spots
    np.testing.assert_allclose(out, y[[2]], rtol=1e-6)


def test_similarity_picks_the_most_similar_known_spots():
    emb_known = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y_known = np.array([[5.0], [7.0], [9.0]])
    out = baselines.similarity(emb_known, y_known, np.array([[2.0, 0.01]]), k=1)
    np.testing.assert_allclose(out, [[5.0]])
    # with k=2 the two closest share the weight by softmax(cos / 0.1)
    q = np.array([[1.0, 1.0]])
    out2 = baselines.similarity(emb_known, y_known, q, k=2)
    np.testing.assert_allclose(out2, [[6.0]], rtol=1e-6)  # equal cosines -> equal weights


def test_similarity_of_constant_labels_is_constant():
    rng = np.random.default_rng(1)
    out = baselines.similarity(
        rng.normal(size=(30, 8)), np.full((30, 4), 2.5), rng.normal(size=(10, 8)), k=20
    )
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)


def test_cli_alone_propagates_and_falls_back_to_the_mean():
    pytest.importorskip("torch")
    # chain 0 -> 1 -> 2 ; node 3 isolated; 0 and 4 known
    src = np.array([0, 1, 4])
    dst = np.array([1, 2, 2])
    w = np.array([1.0, 1.0, 3.0])
    y = np.array([[2.0], [0.0], [0.0], [0.0], [6.0]])
    known = np.array([True, False, False, False, True])
    out = baselines.cli_alone(src, dst, w, y, known, n_iter=10)
    assert out[1, 0] == pytest.approx(2.0)
    assert out[2, 0] == pytest.approx((1 * 2.0 + 3 * 6.0) / 4)
    assert out[3, 0] == pytest.approx(4.0)  # unreached -> known mean (2 + 6) / 2
    np.testing.assert_allclose(out[known], y[known])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 200), d=st.integers(5, 24), dims=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_similarity_axes_are_the_principal_axes(n, d, dims, seed):
    """The k-d tree's axes (eigenvectors of the scatter, summed in row chunks) span the same
    subspace as the SVD's first right singular vectors (spread-out variances: no ties)."""
    from asign.train import baselines as bl

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) * (2.0 ** -np.arange(d))  # variances 4^-i: clear gaps
    mean = a.mean(axis=0)
    basis = bl._principal_axes(a, mean, dims)
    _, _, vt = np.linalg.svd(a - mean, full_matrices=False)
    expected = vt[:dims].T
    assert basis.shape == (d, dims)
    np.testing.assert_allclose(basis @ basis.T, expected @ expected.T, atol=1e-6)


def test_similarity_axes_in_row_chunks_are_the_same(monkeypatch):
    from asign.train import baselines as bl

    rng = np.random.default_rng(1)
    emb_k, emb_q = rng.normal(size=(60, 24)), rng.normal(size=(30, 24))
    y = rng.normal(size=(60, 3))
    whole = bl.similarity(emb_k, y, emb_q, k=5, dims=4)
    monkeypatch.setattr(bl, "SIMILARITY_CHUNK", 7)
    monkeypatch.setattr(numeric, "CHUNK_BYTES", 8 * 7 * 24)  # 7 rows a step of the axes
    np.testing.assert_allclose(bl.similarity(emb_k, y, emb_q, k=5, dims=4), whole,
                               rtol=1e-6, atol=1e-6)
