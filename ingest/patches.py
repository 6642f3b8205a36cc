"""Spot patches and region/global tiles: where to cut (the bytes stored for a patch are
``store/codecs.py``'s).

Sizes are "equivalent" pixels: a 224-px spot patch means 224 px at REFERENCE_UM_PER_PX
(0.5 µm/px, the ~20x scale HEST and TRIPLEX use), i.e. 112 µm of tissue, enough for a
100 µm ST spot with a rim of context. On an image at another resolution the side in
level-0 pixels is rescaled so every section covers the same physical field of view
(her2st at ~0.69 µm/px: spot 162 px, region 371 px, global 742 px). Every crop is
resized to the encoder's input (224 px), CLAM/TRIPLEX style, so region and global
embeddings summarise a wider field at a coarser scale with the same encoder.

The geometry functions are pure (arrays in, arrays out); only ``crop`` touches an image,
through ``asign.ingest.images.read_region``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asign.errors import ConfigError

REFERENCE_UM_PER_PX = 0.5
"""µm per pixel at which the nominal patch sizes below are defined (~20x)."""

LEVEL_SIZES_REF: dict[str, int] = {"spot": 224, "region": 512, "global": 1024}
"""Nominal side of each level in reference pixels."""

TILE_LEVELS = ("region", "global")
N_NEIGHBOURS = 9  # containing tile + its 8 grid neighbours: the model's token set per level

#: Field of view of a spot patch relative to the spot, for binned platforms: the ratio of
#: Visium's patch (224 px at 0.5 µm/px = 112 µm) to its 55 µm spot, with a floor of a few
#: cells so that a 2 µm bin still sees tissue.
PATCH_PER_SPOT = 112.0 / 55.0
MIN_PATCH_UM = 32.0


def patch_scale(patch_um: float | None, spot_px: int, spot_um: float | None,
                shape: str | None) -> float:
    """Factor on all three patch sizes. ``patch_um`` (``--patch-um``) sets the spot patch's
    field of view; otherwise square bins get ``PATCH_PER_SPOT`` × their side (at least
    ``MIN_PATCH_UM``) and discs keep the reference 224 px at 0.5 µm/px (112 µm), as before."""
    base_um = spot_px * REFERENCE_UM_PER_PX
    if patch_um is not None:
        return float(patch_um) / base_um
    if shape == "square" and spot_um is not None and np.isfinite(spot_um) and spot_um > 0:
        return max(MIN_PATCH_UM, PATCH_PER_SPOT * float(spot_um)) / base_um
    return 1.0


def equivalent_px(
    size_ref: int, um_per_px: float, reference_um_per_px: float = REFERENCE_UM_PER_PX
) -> int:
    """Level-0 pixels of this image that span ``size_ref`` pixels at the reference scale."""
    if not np.isfinite(um_per_px) or um_per_px <= 0:
        raise ConfigError(
            f"µm/px must be a positive number, got {um_per_px}",
            fix="check the section's resolution (µm per pixel) in the sample metadata",
        )
    return max(1, int(round(size_ref * reference_um_per_px / um_per_px)))


@dataclass(frozen=True)
class TileGrid:
    """A non-overlapping square grid in level-0 pixels. Tile index = row * n_cols + col."""

    level: str
    size_px: int
    origin_x: int
    origin_y: int
    n_cols: int
    n_rows: int

    @property
    def n_tiles(self) -> int:
        return self.n_rows * self.n_cols

    def corners(self) -> np.ndarray:
        """(T, 2) int64 top-left corners (x, y), row-major."""
        rows, cols = np.divmod(np.arange(self.n_tiles, dtype=np.int64), self.n_cols)
        return np.stack(
            [self.origin_x + cols * self.size_px, self.origin_y + rows * self.size_px], axis=1
        )

    def tile_ids(self, prefix: str, index: np.ndarray | None = None) -> list[str]:
        """Stable, human-readable ids such as ``C3/region/r003c012``."""
        index = np.arange(self.n_tiles) if index is None else np.asarray(index)
        rows, cols = np.divmod(index, self.n_cols)
        return [f"{prefix}/{self.level}/r{r:03d}c{c:03d}" for r, c in zip(rows, cols, strict=True)]


def tile_grid(
    width: int,
    height: int,
    tile_px: int,
    bbox: tuple[int, int, int, int] | None = None,
    level: str = "region",
) -> TileGrid:
    """Grid of ``tile_px`` tiles covering the image, or only ``bbox`` = (x0, y0, x1, y1).

    The grid starts at the box's top-left corner; the last row/column may overhang the
    image, and ``images.read_region`` fills that part white (background)."""
    if tile_px < 1:
        raise ConfigError(f"tile size must be ≥ 1 px, got {tile_px}")
    x0, y0, x1, y1 = (0, 0, int(width), int(height)) if bbox is None else map(int, bbox)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, int(width)), min(y1, int(height))
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(
            f"empty tile area {(x0, y0, x1, y1)} for a {width}×{height} image",
            fix="check the tissue bounding box and the spot coordinates",
        )
    n_cols = -(-(x1 - x0) // tile_px)
    n_rows = -(-(y1 - y0) // tile_px)
    return TileGrid(level, int(tile_px), x0, y0, n_cols, n_rows)


def points_bbox(
    px: np.ndarray, py: np.ndarray, margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Bounding box of points plus ``margin`` px, clipped to the image."""
    px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    if px.size == 0:
        return (0, 0, int(width), int(height))
    return (
        max(0, int(np.floor(px.min() - margin))),
        max(0, int(np.floor(py.min() - margin))),
        min(int(width), int(np.ceil(px.max() + margin)) + 1),
        min(int(height), int(np.ceil(py.max() + margin)) + 1),
    )


def spot_to_tiles(px: np.ndarray, py: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(N, 9) int64 tile indices per spot: column 0 is the tile containing the spot centre,
    columns 1..8 its grid neighbours row-major (3×3 without the centre); −1 pads neighbours
    outside the grid. A centre on a tile edge belongs to the tile on its right/bottom.
    A spot whose centre lies outside the grid gets −1 everywhere."""
    px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    col = np.floor((px - grid.origin_x) / grid.size_px).astype(np.int64)
    row = np.floor((py - grid.origin_y) / grid.size_px).astype(np.int64)
    inside = (col >= 0) & (col < grid.n_cols) & (row >= 0) & (row < grid.n_rows)
    offsets = [(0, 0)] + [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    out = np.full((px.size, N_NEIGHBOURS), -1, dtype=np.int64)
    for k, (dr, dc) in enumerate(offsets):
        r, c = row + dr, col + dc
        ok = inside & (r >= 0) & (r < grid.n_rows) & (c >= 0) & (c < grid.n_cols)
        out[ok, k] = r[ok] * grid.n_cols + c[ok]
    return out


def used_tiles(spot_tiles: np.ndarray) -> np.ndarray:
    """Sorted indices of the tiles any spot refers to: the only tiles worth encoding."""
    flat = np.asarray(spot_tiles).ravel()
    return np.unique(flat[flat >= 0])


def spot_tile_table(
    spot_ids: list[str], spot_tiles: np.ndarray, grid: TileGrid, prefix: str
) -> dict[str, np.ndarray]:
    """Long-format spot→tile mapping for the store: one row per (spot, tile) pair with
    ``rank`` 0 for the containing tile and 1..8 for neighbours (−1 pads dropped)."""
    spot_tiles = np.asarray(spot_tiles)
    if spot_tiles.shape != (len(spot_ids), N_NEIGHBOURS):
        raise ConfigError(
            f"spot_tiles has shape {spot_tiles.shape}, expected ({len(spot_ids)}, {N_NEIGHBOURS})"
        )
    spot_idx, rank = np.nonzero(spot_tiles >= 0)
    tiles = spot_tiles[spot_idx, rank]
    ids = np.array(grid.tile_ids(prefix, tiles), dtype=object)
    return {
        "spot_id": np.asarray(spot_ids, dtype=object)[spot_idx],
        "level": np.full(spot_idx.size, grid.level, dtype=object),
        "tile_id": ids,
        "rank": rank.astype(np.int8),
    }


def spot_patch_box(px: np.ndarray, py: np.ndarray, patch_px: int) -> np.ndarray:
    """(N, 2) int64 top-left corners of ``patch_px`` squares centred on the spots
    (the centre is rounded to the nearest pixel, so the same spot always cuts the same box)."""
    half = patch_px / 2.0
    x0 = np.floor(np.asarray(px, dtype=float) - half + 0.5).astype(np.int64)
    y0 = np.floor(np.asarray(py, dtype=float) - half + 0.5).astype(np.int64)
    return np.stack([x0, y0], axis=1)


_first_read_lock = threading.Lock()
_warm_paths: set[str] = set()


def crop(path: Path, x0: int, y0: int, size: int, out_size: int) -> np.ndarray:
    """(out_size, out_size, 3) uint8 crop of a ``size`` level-0 px square at (x0, y0).

    Safe to call from several loader threads: the first read of an image (which may decode
    a plain JPEG into the cached slide handle) is serialised."""
    key = str(path)
    if key not in _warm_paths:
        with _first_read_lock:
            if key not in _warm_paths:
                from asign.ingest import images

                out = images.read_region(Path(path), int(x0), int(y0), int(size), int(out_size))
                _warm_paths.add(key)
                return out
    from asign.ingest import images

    return images.read_region(Path(path), int(x0), int(y0), int(size), int(out_size))
