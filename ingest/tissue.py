"""Tissue detection on slide thumbnails: Otsu thresholds plus morphology.

H&E tissue is both darker and more saturated than the glass around it. Thresholding
saturation alone also takes the pink illumination halos of some scanners; thresholding
brightness alone also takes dust and pen marks. Requiring both keeps the tissue only.
"""

from __future__ import annotations

import numpy as np

from asign.errors import InputError

# Otsu always splits, even a blank slide. These floors (in 0..255 units) say when the two
# classes it found are too alike to be tissue and glass.
MIN_SATURATION_GAP = 12.0
MIN_BRIGHTNESS_GAP = 12.0
MIN_TISSUE_FRACTION = 0.002
# Fragments smaller than this share of the largest piece are debris, not tissue.
MIN_PIECE_FRACTION = 0.02

_FIX_NO_TISSUE = (
    "check that the image shows an H&E section (not a blank or fully black scan), "
    "or remove the section from the sample"
)


def _otsu(channel: np.ndarray) -> tuple[np.ndarray, float]:
    """Foreground (above threshold) and the gap between the two class means."""
    import cv2

    thresh, fg = cv2.threshold(channel, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = fg.astype(bool)
    if fg.all() or not fg.any():
        return fg, 0.0
    gap = float(channel[fg].mean()) - float(channel[~fg].mean())
    return fg, gap


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    import cv2

    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (padded | (1 - flood))[1:-1, 1:-1].astype(bool)


def tissue_mask(rgb: np.ndarray, name: str = "image", *, fill_holes: bool = True) -> np.ndarray:
    """Boolean tissue mask (H×W) of an RGB uint8 thumbnail.

    ``name`` (the image path or section id) is used in the error raised when the image
    holds no tissue. With ``fill_holes`` the lumens and fat inside the tissue count as
    tissue, which is what outline-based alignment and virtual spot lattices want."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an RGB uint8 thumbnail, got {rgb.dtype} {rgb.shape}", path=name,
                         fix="read the image with asign.ingest.images.read_thumbnail")
    # Median filter: a 5-px window at ~10 µm/px removes nuclei-scale speckle but keeps edges.
    ksize = 5 if min(rgb.shape[:2]) >= 50 else 3
    sat = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1], ksize)
    dark = cv2.medianBlur(255 - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), ksize)
    sat_fg, sat_gap = _otsu(sat)
    dark_fg, dark_gap = _otsu(dark)
    if sat_gap < MIN_SATURATION_GAP or dark_gap < MIN_BRIGHTNESS_GAP:
        raise InputError(
            f"no tissue found (saturation contrast {sat_gap:.0f}, brightness contrast "
            f"{dark_gap:.0f}; need ≥ {MIN_SATURATION_GAP:.0f} each)", path=name, fix=_FIX_NO_TISSUE)

    mask = (sat_fg & dark_fg).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= MIN_PIECE_FRACTION * areas.max())
        mask = np.isin(labels, keep)
    mask = mask.astype(bool)
    if fill_holes:
        mask = _fill_holes(mask.astype(np.uint8))
    if mask.mean() < MIN_TISSUE_FRACTION:
        raise InputError(f"no tissue found (only {100 * mask.mean():.2f}% of the image)", path=name,
                         fix=_FIX_NO_TISSUE)
    return mask
