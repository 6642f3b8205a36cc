"""Overlap (IoU) of two spots of the same shape and size on different layers, the
cross-layer term of the graph (DESIGN §3.6). Pure: arrays in, arrays out.

- discs of radius r, centres d apart: the closed form of ``graph.disc_iou``;
- squares of side s turned by the same angle θ (one grid, or two grids aligned to each
  other): rotate the offset into the squares' frame, then
  A = max(0, s − |dx'|) · max(0, s − |dy'|), IoU = A / (2s² − A) — exact;
- squares turned by different angles (two sections whose bin grids end up rotated against
  each other after alignment): the polygon intersection by shapely, exact and vectorised
  (about 9 µs of CPU per pair: ~3 minutes for the ~20 M candidate pairs of 800k bins).
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disc", "square")


def square_iou(offset: np.ndarray, side: float, angle_a: np.ndarray | float = 0.0,
               angle_b: np.ndarray | float | None = None) -> np.ndarray:
    """IoU of squares of side ``side`` whose centres differ by ``offset`` (N, 2) = b − a,
    turned by ``angle_a`` and ``angle_b`` (radians; ``angle_b`` None = same as a)."""
    off = np.asarray(offset, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(side) or side <= 0:
        raise ValueError(f"square side must be positive, got {side}")
    a = np.broadcast_to(np.asarray(angle_a, dtype=np.float64), (len(off),))
    b = a if angle_b is None else np.broadcast_to(np.asarray(angle_b, np.float64), (len(off),))
    # a quarter turn maps a square onto itself: compare angles modulo π/2
    diff = np.abs(np.angle(np.exp(4j * (a - b)))) / 4
    same = diff < 1e-9
    out = np.empty(len(off))
    c, s = np.cos(a[same]), np.sin(a[same])
    dx = np.abs(c * off[same, 0] + s * off[same, 1])
    dy = np.abs(-s * off[same, 0] + c * off[same, 1])
    inter = np.clip(side - dx, 0, None) * np.clip(side - dy, 0, None)
    out[same] = inter / (2 * side * side - inter)
    if (~same).any():
        out[~same] = _polygon_iou(off[~same], side, a[~same], b[~same])
    return out


def _square_polygons(centre: np.ndarray, side: float, angle: np.ndarray):
    import shapely

    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * side / 2
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x = centre[:, :1] + c * corners[:, 0] - s * corners[:, 1]
    y = centre[:, 1:] + s * corners[:, 0] + c * corners[:, 1]
    return shapely.polygons(np.stack([x, y], axis=-1))


def _polygon_iou(offset: np.ndarray, side: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import shapely

    pa = _square_polygons(np.zeros_like(offset), side, a)
    pb = _square_polygons(offset, side, b)
    inter = shapely.area(shapely.intersection(pa, pb))
    return inter / (2 * side * side - inter)


def circumradius(shape: str, size: float) -> float:
    """Half the largest extent of a spot: beyond twice this, two spots cannot overlap."""
    return size / 2 if shape == "disc" else size / np.sqrt(2)


def grid_angle(array_xy: np.ndarray, xy_um: np.ndarray) -> float:
    """Angle (radians) of a section's grid columns in the aligned frame, from the affine fit
    of aligned positions on array indices; 0 when the fit is impossible."""
    design = np.c_[np.asarray(array_xy, np.float64), np.ones(len(array_xy))]
    if len(design) < 3 or np.linalg.matrix_rank(design) < 3:
        return 0.0
    coef, *_ = np.linalg.lstsq(design, np.asarray(xy_um, np.float64), rcond=None)
    return float(np.arctan2(coef[0, 1], coef[0, 0]))
