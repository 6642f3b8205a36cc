"""Virtual spot lattice for sections with an image and no spots. Pure: arrays in, arrays out.

The lattice lives in the aligned sample frame (µm), with the known layer's pitch, so virtual
spots on every layer share one grid; a lattice point is kept when its centre falls on
tissue. Transforms are 3×3 homogeneous matrices acting on column vectors ``[x, y, 1]``
with x = image column and y = image row, pixel centres at integer coordinates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from asign.ingest.geometry import apply_transform

__all__ = ["LAYOUTS", "aligned_to_pixels", "apply_transform", "lattice_points", "virtual_lattice"]

LAYOUTS = ("square", "hex")


def aligned_to_pixels(points_um: np.ndarray, image_to_aligned: np.ndarray) -> np.ndarray:
    """Aligned-frame points (µm) back to image pixels through the inverse section transform."""
    return apply_transform(np.linalg.inv(np.asarray(image_to_aligned, dtype=np.float64)), points_um)


def lattice_points(
    bounds: tuple[float, float, float, float],
    pitch_um: float,
    layout: Literal["square", "hex"] = "square",
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """All lattice points inside ``bounds = (xmin, ymin, xmax, ymax)``, row-major. A hex
    lattice has rows ``pitch·√3/2`` apart and shifts odd rows (counted from ``origin``) by
    half a pitch, so every neighbour is one pitch away."""
    if pitch_um <= 0 or not np.isfinite(pitch_um):
        raise ValueError(f"pitch must be positive, got {pitch_um}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    xmin, ymin, xmax, ymax = bounds
    ox, oy = origin
    dy = pitch_um * (np.sqrt(3) / 2 if layout == "hex" else 1.0)
    rows = np.arange(np.ceil((ymin - oy) / dy), np.floor((ymax - oy) / dy) + 1, dtype=np.int64)
    pts = []
    for j in rows:
        shift = pitch_um / 2 if layout == "hex" and j % 2 else 0.0
        cols = np.arange(
            np.ceil((xmin - ox - shift) / pitch_um),
            np.floor((xmax - ox - shift) / pitch_um) + 1,
            dtype=np.int64,
        )
        xs = ox + shift + cols * pitch_um
        pts.append(np.c_[xs, np.full(len(xs), oy + j * dy)])
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def virtual_lattice(
    tissue_mask: np.ndarray,
    mask_to_aligned: np.ndarray,
    pitch_um: float,
    layout: Literal["square", "hex"] = "square",
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """(M, 2) virtual spot centres in aligned µm whose centre falls on tissue.

    ``tissue_mask`` is a boolean image (row, col); ``mask_to_aligned`` maps its pixels to
    the aligned frame (the section transform composed with the mask's downsampling)."""
    mask = np.asarray(tissue_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"tissue mask must be 2-D, got shape {mask.shape}")
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return np.zeros((0, 2))
    corners = np.array(
        [
            [cc.min() - 0.5, rr.min() - 0.5],
            [cc.max() + 0.5, rr.min() - 0.5],
            [cc.min() - 0.5, rr.max() + 0.5],
            [cc.max() + 0.5, rr.max() + 0.5],
        ]
    )
    box = apply_transform(mask_to_aligned, corners)
    bounds = (*box.min(axis=0), *box.max(axis=0))
    pts = lattice_points(bounds, pitch_um, layout, origin)
    pix = np.rint(aligned_to_pixels(pts, mask_to_aligned)).astype(np.int64)
    h, w = mask.shape
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
    keep = np.zeros(len(pts), dtype=bool)
    keep[inside] = mask[pix[inside, 1], pix[inside, 0]]
    return pts[keep]
