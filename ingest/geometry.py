"""Plane geometry of section transforms: one way to map points through a 3×3 matrix, the
rigid start matrices of the search, and the decomposition the plausibility checks read.

Matrices are 3×3 homogeneous and act on column vectors (x, y, 1) with x = image column and
y = image row. Pure: arrays in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np


@overload
def apply_transform(matrix: np.ndarray, px: np.ndarray, py: None = None) -> np.ndarray: ...


@overload
def apply_transform(matrix: np.ndarray, px: np.ndarray | float, py: np.ndarray | float
                    ) -> tuple[np.ndarray, np.ndarray]: ...


def apply_transform(matrix: np.ndarray, px: np.ndarray | float, py: np.ndarray | float | None = None
                    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Map points through a 3×3 homogeneous matrix (divided by w, so projective matrices
    work too; for an affine one w is exactly 1).

    Two call forms, one computation: ``apply_transform(m, xs, ys) -> (xs', ys')`` for
    coordinate arrays (or scalars), and ``apply_transform(m, points) -> points'`` for an
    (N, 2) array. Raises ValueError for a matrix that is not 3×3."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"transform must be 3x3, got {m.shape}")
    if py is None:
        pts = np.asarray(px, dtype=np.float64).reshape(-1, 2)
        x, y = apply_transform(m, pts[:, 0], pts[:, 1])
        return np.column_stack([x, y])
    x = np.asarray(px, dtype=np.float64)
    y = np.asarray(py, dtype=np.float64)
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w


def rigid_matrix(rotation_deg: float, flip: bool, center_from: np.ndarray,
                 center_to: np.ndarray) -> np.ndarray:
    """Mirror (optional) and rotate about ``center_from``, then move it onto ``center_to``.
    Positive angles turn the image clockwise as displayed (y points down); ``flip``
    mirrors x before rotating."""
    a = np.radians(rotation_deg)
    lin = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.asarray(center_to, float) - lin @ np.asarray(center_from, float)
    return m


@dataclass(frozen=True)
class Decomposition:
    rotation_deg: float
    scale_x: float
    scale_y: float
    shear: float
    flipped: bool

    @property
    def scale(self) -> float:
        return float(np.sqrt(self.scale_x * self.scale_y))


def decompose(matrix: np.ndarray) -> Decomposition:
    """Rotation, per-axis scale and shear of the linear part: A = R(θ)·[[sx, k·sy], [0, sy]]·F,
    with F the x-mirror when ``flipped``."""
    lin = np.asarray(matrix, dtype=np.float64)[:2, :2]
    flipped = bool(np.linalg.det(lin) < 0)
    if flipped:
        lin = lin @ np.diag([-1.0, 1.0])
    q, r = np.linalg.qr(lin)
    signs = np.diag(np.sign(np.diag(r)) + (np.diag(r) == 0))
    q, r = q @ signs, signs @ r
    return Decomposition(rotation_deg=float(np.degrees(np.arctan2(q[1, 0], q[0, 0]))),
                         scale_x=float(r[0, 0]), scale_y=float(r[1, 1]),
                         shear=float(r[0, 1] / r[1, 1]), flipped=flipped)
