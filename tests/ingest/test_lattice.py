"""Virtual spot lattice on synthetic tissue masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from asign.ingest.lattice import (
    aligned_to_pixels,
    apply_transform,
    lattice_points,
    virtual_lattice,
)


def _rigid(theta_deg: float, tx: float, ty: float, scale: float = 1.0) -> np.ndarray:
    t = np.deg2rad(theta_deg)
    c, s = np.cos(t) * scale, np.sin(t) * scale
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def _disc_mask(h=200, w=240, cx=120, cy=100, r=60) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def test_identity_square_lattice_on_disc():
    mask = _disc_mask()
    pts = virtual_lattice(mask, np.eye(3), pitch_um=10.0)
    # Every kept point lies on the 10-µm grid and inside the disc...
    assert np.allclose(pts % 10.0, 0.0)
    assert (((pts[:, 0] - 120) ** 2 + (pts[:, 1] - 100) ** 2) <= 60**2 + 1e-9).all()
    # ...and every grid point inside the disc is kept.
    gx, gy = np.meshgrid(np.arange(0, 240, 10.0), np.arange(0, 200, 10.0))
    grid = np.c_[gx.ravel(), gy.ravel()]
    inside = ((grid[:, 0] - 120) ** 2 + (grid[:, 1] - 100) ** 2) <= 60**2
    assert len(pts) == int(inside.sum())


def test_scaled_rotated_mask_keeps_pitch_and_area():
    mask = _disc_mask()
    # A 1/8-resolution mask at 0.5 µm/px of the full image: 4 µm per mask pixel, rotated.
    m2a = _rigid(17.0, 300.0, -50.0, scale=4.0)
    pts = virtual_lattice(mask, m2a, pitch_um=100.0)
    tree = cKDTree(pts)
    d, _ = tree.query(pts, k=2)
    assert np.allclose(d[:, 1], 100.0)
    # Disc radius 60 px = 240 µm: about area / pitch² points.
    assert abs(len(pts) - np.pi * 240.0**2 / 100.0**2) < 8
    back = np.rint(aligned_to_pixels(pts, m2a)).astype(int)
    assert mask[back[:, 1], back[:, 0]].all()


def test_hex_lattice_neighbours_are_one_pitch_apart():
    pts = virtual_lattice(_disc_mask(r=90, w=300, h=300, cx=150, cy=150), np.eye(3), 20.0, "hex")
    d, _ = cKDTree(pts).query(pts, k=7)
    interior = d[:, 6] < 20.0 + 1e-6  # six neighbours at exactly one pitch
    assert interior.sum() > 0.5 * len(pts)
    assert np.allclose(d[:, 1], 20.0)
    rows = np.unique(np.round(pts[:, 1], 6))
    assert np.allclose(np.diff(rows), 20.0 * np.sqrt(3) / 2)


def test_lattices_on_two_layers_share_the_grid():
    mask = _disc_mask()
    a = virtual_lattice(mask, _rigid(0, 0, 0, 2.0), 50.0)
    b = virtual_lattice(mask, _rigid(30, 40, 10, 2.0), 50.0)
    assert np.allclose(a % 50.0, 0) and np.allclose(b % 50.0, 0)


def test_empty_mask_and_bad_args():
    assert virtual_lattice(np.zeros((10, 10), bool), np.eye(3), 5.0).shape == (0, 2)
    with pytest.raises(ValueError):
        lattice_points((0, 0, 1, 1), 0.0)
    with pytest.raises(ValueError):
        lattice_points((0, 0, 1, 1), 1.0, "triangle")


def test_transform_round_trip():
    m = _rigid(-12.0, 5.0, 7.0, 0.69)
    p = np.array([[0.0, 0.0], [100.0, 250.0]])
    np.testing.assert_allclose(aligned_to_pixels(apply_transform(m, p), m), p, atol=1e-9)
