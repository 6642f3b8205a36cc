"""loss: PCC per axis, masks, presets and the weighted total."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from asign.errors import ConfigError
from asign.train.loss import LOSS_PRESETS, LossTargets, LossWeights, hybrid_loss, pcc_loss, pearson
from asign.train.model import ModelOutput


def test_pearson_matches_numpy_on_both_axes():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(20, 7, generator=gen, dtype=torch.double)
    target = pred + torch.randn(20, 7, generator=gen, dtype=torch.double)
    r_gene, valid = pearson(pred, target, "gene")
    expected = [np.corrcoef(pred[:, j], target[:, j])[0, 1] for j in range(7)]
    np.testing.assert_allclose(r_gene.numpy(), expected, atol=1e-7)
    assert valid.all()
    r_spot, _ = pearson(pred, target, "spot")
    expected = [np.corrcoef(pred[i], target[i])[0, 1] for i in range(20)]
    np.testing.assert_allclose(r_spot.numpy(), expected, atol=1e-7)


def test_pcc_loss_values_and_constant_targets():
    x = torch.randn(10, 4)
    assert pcc_loss(x, 3 * x + 1).item() == pytest.approx(0.0, abs=1e-5)
    assert pcc_loss(x, -x).item() == pytest.approx(2.0, abs=1e-5)
    # a constant target gene is left out instead of counting as PCC 0
    target = x.clone()
    target[:, 0] = 5.0
    assert pcc_loss(x, target).item() == pytest.approx(0.0, abs=1e-5)
    # nothing usable: zero, but still a graph node
    pred = torch.randn(1, 4, requires_grad=True)
    out = pcc_loss(pred, torch.randn(1, 4), "gene")
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ConfigError, match="PCC axis"):
        pcc_loss(x, x, "cell")


def _output(n: int = 12, g: int = 5, seed: int = 0) -> ModelOutput:
    gen = torch.Generator().manual_seed(seed)
    spot = torch.randn(n, g, generator=gen, requires_grad=True)
    return ModelOutput(spot=spot * 1.0, region=torch.randn(n, g, generator=gen),
                       global_=torch.randn(n, g, generator=gen), spot_model=spot,
                       embedding=torch.zeros(n, 2))


def _targets(n: int = 12, g: int = 5) -> LossTargets:
    gen = torch.Generator().manual_seed(9)
    mask = torch.arange(n) >= 4
    return LossTargets(spot=torch.randn(n, g, generator=gen), spot_mask=mask,
                       region=torch.randn(n, g, generator=gen), region_mask=torch.arange(n) < 8,
                       global_=torch.randn(n, g, generator=gen))


@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("axis", ["gene", "spot"])
def test_total_is_the_weighted_sum_of_terms(preset, axis):
    weights = LossWeights.preset(preset)
    total, parts = hybrid_loss(_output(), _targets(), weights, pcc_axis=axis)
    expected = sum(asdict(weights)[k] * v for k, v in parts.items() if k != "total")
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["total"] == pytest.approx(total.item(), rel=1e-6)
    assert set(parts) == {"mse", "spot_pcc", "region_pcc", "global_pcc", "consist_region",
                          "consist_global", "total"}
    total.backward()


def test_spot_terms_use_only_masked_rows():
    out, targets = _output(), _targets()
    _, base = hybrid_loss(out, targets, LOSS_PRESETS["paper"])
    hidden = targets.spot_mask
    expected_mse = (out.spot[hidden] - targets.spot[hidden]).square().mean().item()
    assert base["mse"] == pytest.approx(expected_mse, rel=1e-6)
    changed = replace(targets, spot=torch.where(hidden[:, None], targets.spot, 100.0))
    _, again = hybrid_loss(out, changed, LOSS_PRESETS["paper"])
    assert again["mse"] == pytest.approx(base["mse"]) and again["spot_pcc"] == base["spot_pcc"]
    region_rows = targets.region_mask
    expected = pcc_loss(out.region[region_rows], targets.region[region_rows]).item()
    assert base["region_pcc"] == pytest.approx(expected, rel=1e-6)


def test_missing_level_targets_skip_terms_and_grads_flow():
    out = _output()
    targets = replace(_targets(), region=None, global_=None)
    total, parts = hybrid_loss(out, targets, LOSS_PRESETS["reference"])
    assert "region_pcc" not in parts and "global_pcc" not in parts
    region = out.region.requires_grad_(True)
    total, _ = hybrid_loss(out, targets, LOSS_PRESETS["reference"])
    total.backward()
    assert out.spot_model.grad.abs().sum() > 0 and region.grad.abs().sum() > 0


def test_presets_follow_the_documented_mapping():
    assert asdict(LOSS_PRESETS["paper"]) == dict(mse=0.25, spot_pcc=0.25, region_pcc=0.75,
                                                 global_pcc=0.75, consist_region=0.5,
                                                 consist_global=0.5)
    ref = LOSS_PRESETS["reference"]
    assert (ref.mse, ref.spot_pcc) == (0.75, 0.25)
    assert {ref.region_pcc, ref.global_pcc, ref.consist_region, ref.consist_global} == {0.125}
    with pytest.raises(ConfigError, match="unknown loss preset"):
        LossWeights.preset("fancy")
