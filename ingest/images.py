"""Image access: verify, size, thumbnail and region reads. Which reader opens a file is
``slides.BACKENDS``' choice (OpenSlide, tiffslide, or Pillow for plain JPEG/PNG/TIFF,
decoded whole). Only this module and ``slides`` open images, so every failure becomes an
ImageError naming the file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ImageError
from asign.ingest import slides

log = logging.getLogger(__name__)

_FIX_PATH = "check the path in the sample folder or manifest"
_FIX_CORRUPT = "re-export or re-download the image; asign needs a fully decodable RGB image"


# Whole-image decodes (plain JPEG/PNG/TIFF) allocate width × height × 3 bytes; a header
# may claim anything. Real H&E scans exceed PIL's own guard (~89 Mpx), so asign uses its own
# limit, in force only while asign opens an image (PIL's global setting is restored after).
# Pyramidal whole-slide formats are read tile by tile through OpenSlide and are not limited.
MAX_PIXELS_ENV = "ASIGN_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 1_000_000_000
UM_PER_PX_TOLERANCE = 0.05
"""Relative disagreement allowed between a given µm/px and the slide's metadata: scanners
round (0.2527 vs 0.25 is 1%); a wrong objective (20x for 40x) is 100%."""
_FIX_RGB = "export the H&E scan as 8-bit RGB (JPEG, PNG or TIFF)"


def max_pixels() -> int:
    try:
        return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def _pil(path: Path) -> Iterator[Any]:
    """PIL with asign's pixel limit for the duration of the block: an image claiming more
    pixels is refused when its header is read, before anything is decoded."""
    import warnings

    from PIL import Image

    limit = max_pixels()
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield Image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        claimed = f"{int(found[1]):,} pixels" if found else "more pixels"
        raise ImageError(f"image claims {claimed}, above asign's limit of {limit:,} for images "
                         "decoded whole; refused before decoding", path=path,
                         fix="check the file; for a genuinely larger image use a pyramidal "
                             f"whole-slide format (e.g. tiled TIFF/SVS) or raise {MAX_PIXELS_ENV}"
                         ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    mode: str
    format: str | None
    sixteen_bit: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


_SINGLE_CHANNEL = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "La")


def image_header(path: Path) -> ImageHeader:
    """Size and pixel format from the file header only (nothing decoded). Refuses missing
    and empty files, images decoded whole that are above the pixel limit, and
    single-channel (grayscale) images (asign needs RGB H&E; a grayscale scan would otherwise
    read as 'no tissue'). A tiled slide's size comes from its own reader, with no limit."""
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix=_FIX_PATH)
    if path.stat().st_size == 0:
        raise ImageError("image file is empty (0 bytes)", path=path, fix=_FIX_CORRUPT)
    backend = slides.backend_for(path)
    if backend.tiled:
        w, h = open_slide(path).dimensions
        return ImageHeader(int(w), int(h), "RGB", backend.name, False)
    with _pil(path) as image:
        try:
            with image.open(path) as im:
                head = ImageHeader(im.size[0], im.size[1], im.mode, im.format,
                                   "16" in _raw_mode(im) or im.mode.startswith("I;16"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"image is unreadable ({err})", path=path, fix=_FIX_CORRUPT) from err
    if head.mode in _SINGLE_CHANNEL:
        depth = "16-bit " if head.sixteen_bit else ""
        raise ImageError(f"single-channel {depth}(grayscale, mode {head.mode}) image refused: "
                         "asign needs an RGB H&E scan", path=path, fix=_FIX_RGB)
    if head.sixteen_bit:
        log.info("%s: 16-bit RGB image, converted to 8 bits per channel when read", path)
    return head


def _raw_mode(im: Any) -> str:
    """The pixel layout stored in the file (e.g. 'RGB;16B' for 16-bit RGB, which PIL
    presents as 8-bit 'RGB'), from the decoder arguments of the first tile."""
    if not im.tile:
        return str(im.mode)
    args = im.tile[0][3]
    if isinstance(args, tuple):
        return str(args[0]) if args else str(im.mode)
    return str(args)


_verified: dict[tuple[str, int, int], tuple[int, int]] = {}
_verified_lock = threading.Lock()


def verify_image(path: Path) -> tuple[int, int]:
    """Check an image once (per content: path, size and mtime), so truncated/corrupt files
    fail here, not mid-ingest; later calls return the recorded size. A tiled slide is
    checked by its own reader (``slides.verify_tiled``: levels, tile table, sample tiles of
    every level); an image decoded whole is decoded once. Returns (width, height)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        st = None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns) if st else None
    with _verified_lock:
        if key in _verified:
            return _verified[key]
    size = _verify(path)
    if key is not None:
        with _verified_lock:
            _verified[key] = size
    return size


def _verify(path: Path) -> tuple[int, int]:
    head = image_header(path)
    if slides.backend_for(path).tiled:
        return slides.verify_tiled(path, open_slide(path))
    with _pil(path) as image:
        try:
            with image.open(path) as im:
                if im.format == "JPEG":
                    # DCT-scaled decode still reads every entropy-coded block, so truncation
                    # is detected at 1/8 of the cost of a full decode.
                    im.draft("RGB", (max(1, head.width // 8), max(1, head.height // 8)))
                im.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"image is unreadable or truncated ({err})", path=path,
                             fix=_FIX_CORRUPT) from err
    return head.size


@lru_cache(maxsize=8)
def open_slide(path: Path) -> Any:
    """OpenSlide-like handle (cached) from the backend ``slides.backend_for`` picks.
    Raises ImageError for missing/corrupt files."""
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix=_FIX_PATH)
    backend = slides.backend_for(path)
    if backend.tiled:
        return slides.open_with(backend, path)
    image_header(path)  # decoded whole on the first read: limit and mode first
    with _pil(path):
        return slides.open_with(backend, path)


def um_per_px(path: Path, given: float | None,
              tolerance: float = UM_PER_PX_TOLERANCE) -> float | None:
    """The image's µm/px: ``given`` (e.g. the manifest's), checked against the slide's own
    metadata when it states one (agreement within ``tolerance``, relative); the metadata's
    value when nothing is given; None when neither knows."""
    path = Path(path)
    backend = slides.backend_for(path)
    found = slides.metadata_um_per_px(path, open_slide(path) if backend.tiled else None)
    if found is None:
        return given
    meta, source = found
    if given is None:
        log.info("%s: %.4g µm/px from the slide's metadata (%s)", path, meta, source)
        return meta
    if abs(given - meta) > tolerance * meta:
        raise ImageError(f"um_per_px {given:g} disagrees with the slide's own {meta:.4g} µm/px "
                         f"({source}) by more than {tolerance:.0%}", path=path,
                         fix=f"set um_per_px = {meta:.4g} in the manifest (or leave it out to use "
                             "the slide's); if the scanner's value is wrong, re-export the slide")
    return given


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of level 0."""
    return tuple(open_slide(Path(path)).dimensions)  # type: ignore[return-value]


def read_thumbnail(path: Path, downsample: float) -> np.ndarray:
    """RGB uint8 thumbnail of the whole image, ``downsample`` times smaller per side.

    A tiled slide is read from the pyramid level nearest above the target resolution, in
    bands (memory bounded by the output, not by level 0). JPEGs are decoded with DCT scaling
    (PIL draft mode), ~10x faster than a full decode followed by a resize."""
    path = Path(path)
    w, h = verify_image(path)
    out = (max(1, round(w / downsample)), max(1, round(h / downsample)))
    if slides.backend_for(path).tiled:
        return _pyramid_thumbnail(open_slide(path), path, out)
    with _pil(path) as image:
        return _thumbnail(image, path, out)


def _thumbnail(image: Any, path: Path, out: tuple[int, int]) -> np.ndarray:
    try:
        if path.suffix.lower() in {".jpg", ".jpeg"}:
            with image.open(path) as im:
                im.draft("RGB", out)
                im = im.convert("RGB").resize(out, image.Resampling.BOX)
                return np.asarray(im)
        slide = open_slide(path)
        thumb = slide.get_thumbnail(out).convert("RGB").resize(out, image.Resampling.BOX)
        return np.asarray(thumb)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"image is unreadable or truncated ({err})", path=path,
                         fix=_FIX_CORRUPT) from err


BAND_PIXELS = 8_000_000
"""Level pixels read at once for a pyramid thumbnail (32 MB as RGBA)."""


def _pyramid_thumbnail(slide: Any, path: Path, out: tuple[int, int]) -> np.ndarray:
    """Box-filtered thumbnail of size ``out`` from the finest level needed, band by band:
    each band of output rows is resized from exactly its rows of the level (PIL's ``box``),
    so the result equals one resize of the whole level."""
    from PIL import Image

    w0 = slide.dimensions[0]
    level = slide.get_best_level_for_downsample(max(1.0, w0 / out[0]))
    lw, lh = slide.level_dimensions[level]
    lds = slide.level_downsamples[level]
    fy = lh / out[1]
    thumb = np.empty((out[1], out[0], 3), dtype=np.uint8)
    band = max(1, int(BAND_PIXELS / (lw * fy)))
    for r0 in range(0, out[1], band):
        r1 = min(out[1], r0 + band)
        s0, s1 = int(np.floor(r0 * fy)), min(lh, int(np.ceil(r1 * fy)))
        try:
            rows = slide.read_region((0, int(round(s0 * lds))), level, (lw, s1 - s0))
        except Exception as err:  # noqa: BLE001 - slide readers raise many codec error types
            raise ImageError(f"cannot read level {level} rows {s0}-{s1} ({err})", path=path,
                             fix=_FIX_CORRUPT) from err
        rgb = _on_white(rows)
        strip = rgb.resize((out[0], r1 - r0), Image.Resampling.BOX,
                           box=(0.0, r0 * fy - s0, float(lw), r1 * fy - s0))
        thumb[r0:r1] = np.asarray(strip)
    return thumb


def _on_white(region: Any) -> Any:
    """RGB image of an OpenSlide RGBA region (transparent = outside the slide = white)."""
    from PIL import Image

    if region.mode != "RGBA":
        return region.convert("RGB")
    bg = Image.new("RGB", region.size, (255, 255, 255))
    bg.paste(region, mask=region.getchannel("A"))
    return bg


def read_region(path: Path, x: int, y: int, size: int, out_size: int) -> np.ndarray:
    """Square RGB uint8 crop with top-left (x, y) and side ``size`` in level-0 pixels,
    resized to ``out_size``. Uses the coarsest pyramid level that still has enough
    resolution, so a whole 9k×9k image is never loaded for a small region of a WSI.
    Pixels outside the image are white (background), as OpenSlide returns them."""
    from PIL import Image as image

    slide = open_slide(Path(path))
    plain = getattr(slide, "plain_rgb", None)
    inside = plain is not None and x >= 0 and y >= 0 and x + size <= plain.width \
        and y + size <= plain.height
    if inside:
        # Inside an 8-bit RGB plain image OpenSlide's RGBA tile is opaque, so pasting it on
        # white gives these very pixels; cropping them directly skips two full-size copies
        # (~60% of the cost of a large region/global tile).
        try:
            region_rgb = plain.crop((int(x), int(y), int(x) + int(size), int(y) + int(size)))
        except Exception as err:  # noqa: BLE001 - as the OpenSlide route below: any decode failure
            raise ImageError(f"cannot read region at ({x},{y}) ({err})", path=path,
                             fix=_FIX_CORRUPT) from err
        if region_rgb.size != (out_size, out_size):
            region_rgb = region_rgb.resize((out_size, out_size), image.Resampling.BILINEAR)
        return np.asarray(region_rgb)
    downsample = size / out_size
    level = slide.get_best_level_for_downsample(max(downsample, 1.0))
    level_ds = slide.level_downsamples[level]
    if getattr(slide, "fills_black", False):
        return _read_clipped(slide, path, int(x), int(y), int(size), level, out_size)
    side = max(1, int(np.ceil(size / level_ds)))
    try:
        region = slide.read_region((int(x), int(y)), level, (side, side))
    except Exception as err:  # noqa: BLE001 - openslide raises bare OpenSlideError/OSError variants
        raise ImageError(f"cannot read region at ({x},{y}) ({err})", path=path,
                         fix=_FIX_CORRUPT) from err
    bg = _on_white(region)
    span = size / level_ds  # the square in level px; ``side`` rounds it up to whole pixels
    if bg.size != (out_size, out_size) or span != side:
        bg = bg.resize((out_size, out_size), image.Resampling.BILINEAR, box=(0, 0, span, span))
    return np.asarray(bg)


def _read_clipped(slide: Any, path: Path, x: int, y: int, size: int, level: int,
                  out_size: int) -> np.ndarray:
    """As OpenSlide's read_region on white, for a reader that snaps the corner to whole level
    pixels and fills the outside black (tiffslide): read the whole level pixels covering the
    square, paste them on white, and resample from the exact fractional box."""
    from PIL import Image

    ds = slide.level_downsamples[level]
    lw, lh = slide.level_dimensions[level]
    lx, ly, span = x / ds, y / ds, size / ds  # the square in level px (fractional)
    ix0, iy0 = int(np.floor(lx)), int(np.floor(ly))
    ix1, iy1 = int(np.ceil(lx + span)), int(np.ceil(ly + span))
    canvas = Image.new("RGB", (ix1 - ix0, iy1 - iy0), (255, 255, 255))
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, lw), min(iy1, lh)
    if cx1 > cx0 and cy1 > cy0:
        try:  # a level-0 corner that maps back to exactly (cx0, cy0) at this level
            part = slide.read_region((int(np.ceil(cx0 * ds)), int(np.ceil(cy0 * ds))), level,
                                     (cx1 - cx0, cy1 - cy0), as_array=True, padding=False)
        except Exception as err:  # noqa: BLE001 - tiffslide passes codec errors through
            raise ImageError(f"cannot read region at ({x},{y}) ({err})", path=path,
                             fix=_FIX_CORRUPT) from err
        canvas.paste(Image.fromarray(np.ascontiguousarray(part[..., :3])), (cx0 - ix0, cy0 - iy0))
    box = (lx - ix0, ly - iy0, lx - ix0 + span, ly - iy0 + span)
    return np.asarray(canvas.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box))
