"""metrics: per-spot and per-gene PCC against scipy, NaN handling and counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from asign.errors import AsignError
from asign.train.metrics import evaluate, mae, mse, pcc_gene, pcc_per_gene, pcc_per_spot, pcc_spot


def _data(n: int = 40, g: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, g)) + rng.normal(size=g)  # gene-specific means
    pred = 0.6 * truth + rng.normal(scale=0.8, size=(n, g))
    return pred.astype(np.float32), truth.astype(np.float32)


def test_against_scipy():
    pred, truth = _data()
    per_spot = [pearsonr(pred[i], truth[i])[0] for i in range(pred.shape[0])]
    per_gene = [pearsonr(pred[:, j], truth[:, j])[0] for j in range(pred.shape[1])]
    np.testing.assert_allclose(pcc_per_spot(pred, truth), per_spot, atol=1e-6)
    np.testing.assert_allclose(pcc_per_gene(pred, truth), per_gene, atol=1e-6)
    assert pcc_spot(pred, truth) == pytest.approx(np.mean(per_spot), abs=1e-6)
    assert pcc_gene(pred, truth) == pytest.approx(np.mean(per_gene), abs=1e-6)
    diff = pred.astype(np.float64) - truth
    assert mse(pred, truth) == pytest.approx(np.mean(diff**2))
    assert mae(pred, truth) == pytest.approx(np.mean(np.abs(diff)))


def test_constant_items_are_excluded_and_counted():
    pred, truth = _data()
    pred[3] = 0.7          # constant predicted spot
    truth[:, 5] = 1.1      # constant measured gene
    truth[:, 7] = np.float32(0.1)  # constant, and 0.1 is not exact in float
    out = evaluate(pred, truth)
    assert out["n_spots"] == 40 and out["n_spots_valid"] == 39
    assert out["n_genes"] == 12 and out["n_genes_valid"] == 10
    keep = [i for i in range(40) if i != 3]
    expected = np.mean([pearsonr(pred[i], truth[i])[0] for i in keep])
    assert out["pcc_spot"] == pytest.approx(expected, abs=1e-6)
    genes = [j for j in range(12) if j not in (5, 7)]
    expected = np.mean([pearsonr(pred[:, j], truth[:, j])[0] for j in genes])
    assert out["pcc_gene"] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(pcc_per_gene(pred, truth)[[5, 7]]).all()


def test_mean_profile_has_high_spot_pcc_and_undefined_gene_pcc():
    """Why both PCCs are reported: the mean profile scores well per spot, not per gene."""
    _, truth = _data(seed=1)
    mean_profile = np.tile(truth.mean(axis=0), (truth.shape[0], 1))
    out = evaluate(mean_profile, truth)
    assert out["pcc_spot"] > 0.4
    assert out["n_genes_valid"] == 0 and np.isnan(out["pcc_gene"])


def test_degenerate_shapes():
    with pytest.raises(AsignError, match="must both be"):
        evaluate(np.zeros((3, 2)), np.zeros((2, 3)))
    out = evaluate(np.zeros((0, 4)), np.zeros((0, 4)))
    assert out["n_spots"] == 0 and np.isnan(out["mse"]) and out["n_genes_valid"] == 0
