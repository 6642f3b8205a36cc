"""Image access through OpenSlide: whole-slide formats natively, plain JPEG/PNG/TIFF via
OpenSlide's ImageSlide. Only this module opens images, so every failure becomes an
ImageError naming the file."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ImageError

log = logging.getLogger(__name__)

_FIX_CORRUPT = "re-export or re-download the image; asign needs a fully decodable RGB image"


def _pil():
    from PIL import Image

    # Real H&E scans exceed PIL's decompression-bomb guard (~89 Mpx) by design.
    Image.MAX_IMAGE_PIXELS = None
    return Image


def verify_image(path: Path) -> tuple[int, int]:
    """Decode the whole image once so truncated/corrupt files fail here, not mid-ingest.
    Returns (width, height)."""
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix="check the path in the sample folder or manifest")
    if path.stat().st_size == 0:
        raise ImageError("image file is empty (0 bytes)", path=path, fix=_FIX_CORRUPT)
    image = _pil()
    try:
        with image.open(path) as im:
            size = im.size
            if im.format == "JPEG":
                # DCT-scaled decode still reads every entropy-coded block, so truncation
                # is detected at 1/8 of the cost of a full decode.
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"image is unreadable or truncated ({err})", path=path, fix=_FIX_CORRUPT) from err
    return size


@lru_cache(maxsize=8)
def open_slide(path: Path) -> Any:
    """OpenSlide handle (cached). Raises ImageError for missing/corrupt files."""
    import openslide

    _pil()  # lifts PIL's pixel limit before OpenSlide's ImageSlide opens a large JPEG
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix="check the path in the sample folder or manifest")
    try:
        return openslide.open_slide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise ImageError(f"image cannot be opened ({err})", path=path, fix=_FIX_CORRUPT) from err


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of level 0."""
    return tuple(open_slide(Path(path)).dimensions)  # type: ignore[return-value]


def read_thumbnail(path: Path, downsample: float) -> np.ndarray:
    """RGB uint8 thumbnail of the whole image, ``downsample`` times smaller per side.

    JPEGs are decoded with DCT scaling (PIL draft mode), which is ~10x faster than a
    full decode followed by a resize and keeps memory small."""
    path = Path(path)
    w, h = verify_image(path)
    out = (max(1, round(w / downsample)), max(1, round(h / downsample)))
    image = _pil()
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
        raise ImageError(f"image is unreadable or truncated ({err})", path=path, fix=_FIX_CORRUPT) from err


def read_region(path: Path, x: int, y: int, size: int, out_size: int) -> np.ndarray:
    """Square RGB uint8 crop with top-left (x, y) and side ``size`` in level-0 pixels,
    resized to ``out_size``. Uses the coarsest pyramid level that still has enough
    resolution, so a whole 9k×9k image is never loaded for a small region of a WSI.
    Pixels outside the image are white (background), as OpenSlide returns them."""
    image = _pil()
    slide = open_slide(Path(path))
    downsample = size / out_size
    level = slide.get_best_level_for_downsample(max(downsample, 1.0))
    level_ds = slide.level_downsamples[level]
    side = max(1, int(np.ceil(size / level_ds)))
    try:
        region = slide.read_region((int(x), int(y)), level, (side, side))
    except Exception as err:  # noqa: BLE001 - openslide raises bare OpenSlideError/OSError variants
        raise ImageError(f"cannot read region at ({x},{y}) ({err})", path=path, fix=_FIX_CORRUPT) from err
    bg = image.new("RGB", region.size, (255, 255, 255))
    bg.paste(region, mask=region.getchannel("A"))
    if bg.size != (out_size, out_size):
        bg = bg.resize((out_size, out_size), image.Resampling.BILINEAR)
    return np.asarray(bg)
