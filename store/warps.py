"""Deformation fields of ``--syn`` alignment (table ``warps``): one per registered pair,
stored as two row-major float32 lists with the grid that places the field in the fixed
(neighbour) section's µm frame. Only this module knows how a field is laid out on disk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Warp:
    section_id: str    # the moving section
    neighbour_id: str  # the fixed section: the field is sampled at its µm coordinates
    field: np.ndarray  # (H, W, 2) float32 displacement in µm: y → y + field(y)
    grid: np.ndarray   # 3×3: field pixel (col, row, 1) → neighbour µm


def write_warps(store: Any, sample_id: str, warps: list[Warp]) -> None:
    """Replace the sample's fields (none: the table is removed)."""
    if not warps:
        store.remove("warps", sample_id)
        return
    store.write("warps", {
        "sample_id": [sample_id] * len(warps),
        "section_id": [w.section_id for w in warps],
        "neighbour_id": [w.neighbour_id for w in warps],
        "grid": [np.asarray(w.grid, dtype=np.float64).ravel().tolist() for w in warps],
        "height": [int(w.field.shape[0]) for w in warps],
        "width": [int(w.field.shape[1]) for w in warps],
        "dx": [np.ascontiguousarray(w.field[..., 0], dtype=np.float32).ravel() for w in warps],
        "dy": [np.ascontiguousarray(w.field[..., 1], dtype=np.float32).ravel() for w in warps],
    }, key=sample_id)


def read_warps(store: Any, sample_id: str) -> dict[str, Warp]:
    """The sample's fields by moving section id (empty without --syn)."""
    if not store.has("warps", sample_id):
        return {}
    out = {}
    for r in store.read("warps", key=sample_id).to_pylist():
        h, w = int(r["height"]), int(r["width"])
        field = np.stack([np.asarray(r["dx"], np.float32).reshape(h, w),
                          np.asarray(r["dy"], np.float32).reshape(h, w)], axis=-1)
        out[r["section_id"]] = Warp(r["section_id"], r["neighbour_id"], field,
                                    np.asarray(r["grid"], np.float64).reshape(3, 3))
    return out
