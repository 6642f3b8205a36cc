"""Cross-layer overlap of square bins: the closed form against shapely's polygon
intersection, and the properties an IoU must have."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from asign.ingest.graph import cross_layer_edges, disc_iou
from asign.ingest.overlap import grid_angle, square_iou


def _shapely_iou(offset, side, a, b) -> float:
    def square(centre, angle):
        c, s = np.cos(angle), np.sin(angle)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * side / 2
        return shapely.Polygon(centre + pts @ np.array([[c, s], [-s, c]]))

    pa, pb = square(np.zeros(2), a), square(np.asarray(offset), b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


@settings(max_examples=200, deadline=None)
@given(dx=st.floats(-40, 40), dy=st.floats(-40, 40), side=st.floats(1, 30),
       a=st.floats(-np.pi, np.pi), turn=st.sampled_from([0.0, np.pi / 2, 0.3]))
def test_square_iou_matches_polygon_intersection(dx, dy, side, a, turn):
    got = square_iou(np.array([[dx, dy]]), side, a, a + turn)[0]
    assert got == pytest.approx(_shapely_iou((dx, dy), side, a, a + turn), abs=1e-9)
    assert 0.0 <= got <= 1.0


def test_square_iou_closed_form_values():
    side = 16.0
    off = np.array([[0, 0], [8, 0], [16, 0], [8, 8], [20, 0]], float)
    # half-overlap: A = 8·16 = 128, IoU = 128 / (512 − 128) = 1/3
    np.testing.assert_allclose(square_iou(off, side), [1, 1 / 3, 0, 64 / 448, 0])
    # turned by 45° the same offset along x overlaps differently from the axis-aligned case
    assert square_iou(off[1:2], side, np.pi / 4)[0] != pytest.approx(1 / 3)


def test_grid_angle_recovers_the_rotation():
    ij = np.mgrid[0:5, 0:4].reshape(2, -1).T.astype(float)
    a = np.radians(12.0)
    xy = ij * 16 @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + 100
    assert grid_angle(ij, xy) == pytest.approx(a)


def test_cross_layer_edges_use_the_square_overlap():
    """Two layers of the same 16 µm grid, one shifted by half a bin in x: every matched pair
    is the half-overlap of squares (1/3), not the disc value at that distance."""
    ij = np.mgrid[0:6, 0:6].reshape(2, -1).T.astype(float) * 16
    xy = np.r_[ij, ij + [8.0, 0.0]]
    layer = np.r_[np.zeros(36, int), np.ones(36, int)]
    feats = np.ones((72, 2), np.float32)
    sq = cross_layer_edges(xy, layer, feats, radius_um=8.0, top_k=1, shape="square")
    disc = cross_layer_edges(xy, layer, feats, radius_um=8.0, top_k=1)
    assert np.allclose(sq.iou, 1 / 3, atol=1e-6)
    assert np.allclose(disc.iou, disc_iou(np.array([8.0]), 8.0)[0], atol=1e-6)
    assert not np.isclose(disc.iou[0], sq.iou[0])
