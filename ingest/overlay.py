"""The alignment QC picture: every section's tissue outline in the aligned frame, one
colour per section, over the reference section, with a legend and a 1 mm scale bar."""

from __future__ import annotations

import numpy as np

from asign.ingest.align import SectionTransform, apply_transform
from asign.ingest.tissue import tissue_mask

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def render_overlay(thumbs: dict[str, np.ndarray], thumb_downsample: dict[str, float],
                   transforms: list[SectionTransform], um_per_px: dict[str, float] | None = None,
                   size: int = 1000) -> np.ndarray:
    """RGB picture of all sections in the aligned frame: the reference section in grey, every
    section's tissue outline in its own colour, a legend and a 1 mm scale bar."""
    import cv2

    del um_per_px  # the matrices already carry µm/px
    contours, thumb_to_um = {}, {}
    for t in transforms:
        ds = float(thumb_downsample[t.section_id])
        thumb_to_um[t.section_id] = t.matrix @ np.array([[ds, 0, 0.5 * ds - 0.5],
                                                         [0, ds, 0.5 * ds - 0.5], [0, 0, 1]])
        mask = tissue_mask(thumbs[t.section_id], name=f"section {t.section_id}").astype(np.uint8)
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        to_um = thumb_to_um[t.section_id]
        contours[t.section_id] = [np.c_[apply_transform(to_um, c[:, 0, 0], c[:, 0, 1])]
                                  for c in found]
    pts = np.concatenate([c for cs in contours.values() for c in cs])
    lo, hi = pts.min(0), pts.max(0)
    lo, hi = lo - 0.05 * float((hi - lo).max()), hi + 0.05 * float((hi - lo).max())
    scale = (size - 1) / float((hi - lo).max())  # canvas px per µm
    legend_w = 250
    w, h = int(np.ceil((hi - lo)[0] * scale)) + 1, int(np.ceil((hi - lo)[1] * scale)) + 1
    to_canvas = np.array([[scale, 0, -lo[0] * scale], [0, scale, -lo[1] * scale], [0, 0, 1]])

    canvas = np.full((max(h, 40 + 26 * len(transforms)), w + legend_w, 3), 255, np.uint8)
    ref = next(t for t in transforms if t.qc is None)
    grey = cv2.cvtColor(thumbs[ref.section_id], cv2.COLOR_RGB2GRAY)
    warped = cv2.warpAffine(grey, (to_canvas @ thumb_to_um[ref.section_id])[:2], (w, h),
                            flags=cv2.INTER_LINEAR, borderValue=255)
    # light, so outlines stand out
    canvas[:h, :w] = (110 + 0.57 * warped[..., None]).astype(np.uint8)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for k, t in enumerate(transforms):
        colour = _COLOURS[k % len(_COLOURS)]
        polys = [np.round(np.c_[apply_transform(to_canvas, c[:, 0], c[:, 1])] * 16).astype(np.int32)
                 for c in contours[t.section_id]]
        cv2.polylines(canvas, polys, True, colour, 2, cv2.LINE_AA, shift=4)
        y = 30 + 26 * k
        cv2.line(canvas, (w + 12, y - 5), (w + 42, y - 5), colour, 3, cv2.LINE_AA)
        q = t.qc
        label = (f"{t.section_id} (reference)" if q is None else
                 f"{t.section_id}>{q.fixed} {q.rotation_deg:+.1f}deg{' flip' if q.flipped else ''} "
                 f"D={q.overlap_after:.2f}")
        cv2.putText(canvas, label, (w + 50, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    bar = int(round(1000 * scale))
    cv2.line(canvas, (15, h - 20), (15 + bar, h - 20), (0, 0, 0), 3)
    cv2.putText(canvas, "1 mm", (15, h - 28), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
