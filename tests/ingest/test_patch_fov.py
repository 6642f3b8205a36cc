"""The spot patch's field of view follows the platform's spot size (with --patch-um to set
it), and the region and global tiles keep their ratio to it."""

from __future__ import annotations

import pytest

from asign.ingest.config import IngestConfig
from asign.ingest.patches import MIN_PATCH_UM, PATCH_PER_SPOT, patch_scale
from asign.ingest.step_features import _sizes


def test_discs_keep_the_reference_field_of_view():
    assert patch_scale(None, 224, 55.0, "disc") == 1.0
    assert patch_scale(None, 224, 100.0, None) == 1.0  # stores before the shape column


@pytest.mark.parametrize(("side", "fov"), [(16.0, 16 * PATCH_PER_SPOT), (55.0, 112.0),
                                           (2.0, MIN_PATCH_UM)])
def test_square_bins_scale_with_their_side(side, fov):
    assert patch_scale(None, 224, side, "square") * 112.0 == pytest.approx(fov)


def test_levels_keep_their_ratio_and_option_wins():
    cfg = IngestConfig(sources=(), store="s")
    bins = _sizes(cfg, 0.5, 16.0, "square")
    assert bins["spot"] == round(16 * PATCH_PER_SPOT / 0.5)
    assert bins["region"] / bins["spot"] == pytest.approx(512 / 224, rel=0.02)
    assert bins["global"] / bins["spot"] == pytest.approx(1024 / 224, rel=0.02)
    given = _sizes(IngestConfig(sources=(), store="s", patch_um=56.0), 0.5, 16.0, "square")
    assert given == {"spot": 112, "region": 256, "global": 512}
    assert _sizes(cfg, 0.5, 55.0, "disc") == {"spot": 224, "region": 512, "global": 1024}
