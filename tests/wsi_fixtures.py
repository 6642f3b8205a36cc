"""Pyramidal whole-slide fixtures from real her2st pixels, written tile by tile.

``write_slide`` writes a JPEG-tiled pyramid (level k = level 0 / 2**k) as a generic tiled
TIFF (levels as reduced-resolution pages, read by OpenSlide) or an OME-TIFF (levels in
SubIFDs, read by tiffslide), with the µm/px in the resolution tags / OME metadata. Pixels
come from ``tile_fn(downsample, x, y, side)``: one tile at a time, so a slide of several
gigapixels is written in constant memory. ``upsampled`` cuts tiles out of a real image
enlarged by a factor, as a scanner at a finer resolution would have seen it. Used by the
tests and by ``bench/wsi.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

TileFn = Callable[[float, int, int, int], np.ndarray]
"""(level downsample, x, y, side) → (side, side, 3) uint8: the tile whose top-left corner is
(x, y) in that level's pixels."""


def upsampled(source: Image.Image, factor: float) -> TileFn:
    """Tiles of ``source`` enlarged ``factor`` times, white beyond its edge: bilinear where a
    level is larger than the source, box (area average, as pyramid builders do) where smaller.
    Pixel centres map as continuous coordinates: source u ↔ level-0 (u + 0.5)·factor − 0.5."""
    src = source.convert("RGB")
    sw, sh = src.size

    def tile(ds: float, x: int, y: int, side: int) -> np.ndarray:
        scale = factor / ds  # level px per source px
        box = (x / scale, y / scale, (x + side) / scale, (y + side) / scale)
        clipped = (max(0.0, box[0]), max(0.0, box[1]), min(sw, box[2]), min(sh, box[3]))
        out = np.full((side, side, 3), 255, dtype=np.uint8)
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return out
        w = min(side, int(np.ceil((clipped[2] - box[0]) * scale)))
        h = min(side, int(np.ceil((clipped[3] - box[1]) * scale)))
        filt = Image.Resampling.BILINEAR if scale >= 1 else Image.Resampling.BOX
        part = src.resize((w, h), filt,
                          box=(box[0], box[1], min(sw, box[0] + w / scale),
                               min(sh, box[1] + h / scale)))
        out[:h, :w] = np.asarray(part)
        return out

    return tile


def _tiles(fn: TileFn, ds: float, width: int, height: int, side: int) -> Iterator[np.ndarray]:
    for y in range(0, height, side):
        for x in range(0, width, side):
            yield fn(ds, x, y, side)


def level_sizes(width: int, height: int, min_side: int = 512) -> list[tuple[int, int]]:
    """Level sizes, each half the previous (rounded up), down to ``min_side``."""
    sizes = [(width, height)]
    while max(sizes[-1]) > min_side:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def write_slide(path: Path, width: int, height: int, tile_fn: TileFn, um_per_px: float | None,
                *, ome: bool = False, svs: bool = False, tile: int = 256, quality: int = 90
                ) -> Path:
    """Write a JPEG-tiled pyramidal TIFF of ``width`` × ``height`` level-0 px; return path.
    ``svs``: with an Aperio ImageDescription (µm/px as its ``MPP``), which OpenSlide reads
    as an Aperio SVS slide."""
    import tifffile

    sizes = level_sizes(width, height)
    common = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": quality},
              "photometric": "rgb", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tif:
        for k, (w, h) in enumerate(sizes):
            data = _tiles(tile_fn, float(2**k), w, h, tile)
            extra: dict = {}
            if ome and k == 0:
                extra["subifds"] = len(sizes) - 1
                if um_per_px is not None:
                    extra["metadata"] = {"axes": "YXS", "PhysicalSizeX": um_per_px,
                                         "PhysicalSizeY": um_per_px, "PhysicalSizeXUnit": "µm",
                                         "PhysicalSizeYUnit": "µm"}
            elif not ome:
                extra["metadata"] = None
                if svs and k == 0:
                    extra["description"] = (
                        f"Aperio Image Library asign-test\r\n{width}x{height} "
                        f"[0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = 40"
                        + (f"|MPP = {um_per_px}" if um_per_px is not None else ""))
                elif um_per_px is not None:
                    per_cm = 1e4 / (um_per_px * 2**k)
                    extra["resolution"] = (per_cm, per_cm)
                    extra["resolutionunit"] = "CENTIMETER"
            if k:
                extra["subfiletype"] = 1
            tif.write(data, shape=(h, w, 3), **common, **extra)
    return Path(path)
