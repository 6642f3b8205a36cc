"""The aligned H&E stack of a sample: every section's thumbnail resampled into the
sample's aligned frame (µm), one plane per layer. Pure: arrays in, arrays out.

Frames. A section's transform maps its full-resolution image pixels to aligned µm (the
store's ``transforms.matrix``). Thumbnail pixel t covers full-resolution pixels
[t·ds, (t+1)·ds), so its centre is (t + 0.5)·ds − 0.5. Canvas pixel (i, j) is centred on
aligned µm (x0 + j·res, y0 + i·res). Plane k is layer z = z_first + k, at
z_um = k · spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SIDE = 6000  # canvas pixels per side; a coarser resolution is used beyond it
BACKGROUND = 255  # white, as the glass around the tissue


@dataclass(frozen=True)
class SectionImage:
    section_id: str
    z: int
    thumb: np.ndarray  # (H, W, 3) uint8
    downsample: float  # full-resolution px per thumbnail px
    to_aligned: np.ndarray  # (3, 3) full-resolution px -> aligned µm


@dataclass(frozen=True)
class AlignedStack:
    """``image``: (Z, H, W, 3) uint8; plane k is layer ``z_first + k`` (blank white when a
    layer has no image); ``sections[k]`` its section id or None."""

    image: np.ndarray
    res_um: float  # µm per canvas pixel (x and y)
    origin_um: tuple[float, float]  # aligned (x, y) of the centre of canvas pixel (0, 0)
    z_first: int
    spacing_um: float
    sections: list[str | None]

    def z_um(self, z: int) -> float:
        return (z - self.z_first) * self.spacing_um


def thumb_to_aligned(ds: float, to_aligned: np.ndarray) -> np.ndarray:
    """(3, 3) thumbnail px -> aligned µm."""
    half = 0.5 * ds - 0.5
    return np.asarray(to_aligned, dtype=np.float64) @ np.array([[ds, 0, half], [0, ds, half],
                                                                 [0, 0, 1.0]])


def aligned_stack(sections: list[SectionImage], spacing_um: float,
                  res_um: float | None = None) -> AlignedStack:
    """Resample every section into one canvas that holds all of them. ``res_um``: canvas
    resolution (default: the coarsest thumbnail's, so no section is upsampled much)."""
    import cv2

    if not sections:
        raise ValueError("no imaged section to stack")
    mats = {s.section_id: thumb_to_aligned(s.downsample, s.to_aligned) for s in sections}
    if res_um is None:
        res_um = max(float(np.sqrt(abs(np.linalg.det(m[:2, :2])))) for m in mats.values())
    corners = []
    for s in sections:
        h, w = s.thumb.shape[:2]
        box = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [-0.5, h - 0.5, 1],
                        [w - 0.5, h - 0.5, 1]]).T
        corners.append((mats[s.section_id] @ box)[:2].T)
    pts = np.vstack(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    res_um = max(res_um, float((hi - lo).max()) / MAX_SIDE)
    width, height = (int(np.ceil(v)) for v in (hi - lo) / res_um)
    origin = (float(lo[0] + 0.5 * res_um), float(lo[1] + 0.5 * res_um))
    to_canvas = np.array([[1 / res_um, 0, -origin[0] / res_um],
                          [0, 1 / res_um, -origin[1] / res_um], [0, 0, 1.0]])
    zs = [s.z for s in sections]
    z_first, z_last = min(zs), max(zs)
    image = np.full((z_last - z_first + 1, height, width, 3), BACKGROUND, dtype=np.uint8)
    names: list[str | None] = [None] * (z_last - z_first + 1)
    for s in sorted(sections, key=lambda v: v.z):
        affine = (to_canvas @ mats[s.section_id])[:2]
        image[s.z - z_first] = cv2.warpAffine(
            np.ascontiguousarray(s.thumb), affine, (width, height), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(BACKGROUND,) * 3)
        names[s.z - z_first] = s.section_id
    return AlignedStack(image, float(res_um), origin, z_first, float(spacing_um), names)
