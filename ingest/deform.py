"""Spots through the whole alignment chain, deformation fields included (``--syn``).

Each section is registered to its neighbour toward the reference: an affine ``pair``
(this section's µm → the neighbour's µm) and, with SyN, a displacement field ``v`` on the
neighbour's grid, so a point goes y = pair(x), then y + v(y), into the neighbour's µm
frame; the neighbour's own link follows, up to the reference, whose µm frame is the
aligned frame. Without fields the chain is the composed matrix itself. ``v`` is ANTs' inverse
warp of the pair (moving → fixed for points), sampled bilinearly in µm; outside its grid
the displacement is zero, as in ITK. Pure: arrays in, arrays out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def sample_field(field: np.ndarray, grid: np.ndarray, x: np.ndarray,
                 y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (dx, dy) in µm of ``field`` (H, W, 2) at µm points (x, y); ``grid``
    maps field pixels (col, row, 1) to µm."""
    from scipy.ndimage import map_coordinates

    inv = np.linalg.inv(np.asarray(grid, dtype=np.float64))
    col = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
    row = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
    coords = np.vstack([row, col])
    return tuple(map_coordinates(field[..., k].astype(np.float64), coords, order=1,
                                 mode="constant", cval=0.0)
                 for k in range(2))  # type: ignore[return-value]


def _apply(m: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def has_fields(transforms: Mapping[str, Any], section_id: str) -> bool:
    """Whether a field lies on the chain from ``section_id`` to the reference."""
    t = transforms[section_id]
    while t.section_id != t.reference_id and t.qc is not None:
        if t.warp is not None:
            return True
        t = transforms[t.qc.fixed]
    return False


def to_aligned(transforms: Mapping[str, Any], um_per_px: Mapping[str, float], section_id: str,
               px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixels of ``section_id`` → aligned µm (``transforms``: section id →
    ``align.SectionTransform``)."""
    px = np.asarray(px, dtype=np.float64)
    py = np.asarray(py, dtype=np.float64)
    t = transforms[section_id]
    if not has_fields(transforms, section_id):
        return _apply(np.asarray(t.matrix, dtype=np.float64), px, py)
    um = float(um_per_px[section_id])
    x, y = px * um, py * um
    while t.section_id != t.reference_id:
        x, y = _apply(np.asarray(t.pair, dtype=np.float64), x, y)
        if t.warp is not None:
            dx, dy = sample_field(t.warp, t.warp_grid, x, y)
            x, y = x + dx, y + dy
        t = transforms[t.qc.fixed]
    # the reference: its µm frame is the aligned frame (its matrix is diag(µm/px))
    return x, y
