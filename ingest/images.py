"""Image access through OpenSlide: whole-slide formats natively, plain JPEG/PNG/TIFF via
OpenSlide's ImageSlide. Only this module opens images, so every failure becomes an
ImageError naming the file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ImageError

log = logging.getLogger(__name__)

_FIX_CORRUPT = "re-export or re-download the image; asign needs a fully decodable RGB image"


# Whole-image decodes (plain JPEG/PNG/TIFF) allocate width × height × 3 bytes; a header
# may claim anything. Real H&E scans exceed PIL's own guard (~89 Mpx), so asign uses its own
# limit, in force only while asign opens an image (PIL's global setting is restored after).
# Pyramidal whole-slide formats are read tile by tile through OpenSlide and are not limited.
MAX_PIXELS_ENV = "ASIGN_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 1_000_000_000
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
        raise ImageError(f"image claims {claimed}, above asign's limit of {limit:,} for images decoded whole; "
                         "refused before decoding", path=path,
                         fix=f"check the file; for a genuinely larger image use a pyramidal whole-slide format "
                             f"(e.g. tiled TIFF/SVS) or raise {MAX_PIXELS_ENV}") from None
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
    and empty files, images above the pixel limit and single-channel (grayscale) images
    (asign needs RGB H&E; a grayscale scan would otherwise read as 'no tissue')."""
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix="check the path in the sample folder or manifest")
    if path.stat().st_size == 0:
        raise ImageError("image file is empty (0 bytes)", path=path, fix=_FIX_CORRUPT)
    with _pil(path) as image:
        try:
            with image.open(path) as im:
                head = ImageHeader(im.size[0], im.size[1], im.mode, im.format,
                                   "16" in _raw_mode(im) or im.mode.startswith("I;16"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"image is unreadable ({err})", path=path, fix=_FIX_CORRUPT) from err
    if head.mode in _SINGLE_CHANNEL:
        depth = "16-bit " if head.sixteen_bit else ""
        raise ImageError(f"single-channel {depth}(grayscale, mode {head.mode}) image refused: asign needs an "
                         "RGB H&E scan", path=path, fix=_FIX_RGB)
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


def verify_image(path: Path) -> tuple[int, int]:
    """Check the header (``image_header``), then decode the whole image once so
    truncated/corrupt files fail here, not mid-ingest. Returns (width, height)."""
    path = Path(path)
    head = image_header(path)
    with _pil(path) as image:
        try:
            with image.open(path) as im:
                if im.format == "JPEG":
                    # DCT-scaled decode still reads every entropy-coded block, so truncation
                    # is detected at 1/8 of the cost of a full decode.
                    im.draft("RGB", (max(1, head.width // 8), max(1, head.height // 8)))
                im.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"image is unreadable or truncated ({err})", path=path, fix=_FIX_CORRUPT) from err
    return head.size


@lru_cache(maxsize=8)
def open_slide(path: Path) -> Any:
    """OpenSlide handle (cached). Raises ImageError for missing/corrupt files."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", path=path, fix="check the path in the sample folder or manifest")
    try:
        if openslide.OpenSlide.detect_format(str(path)) is not None:  # pyramidal: read by tiles
            return openslide.open_slide(str(path))
        image_header(path)  # ImageSlide decodes the whole image: limit and mode first
        with _pil(path) as pil:
            plain = pil.open(path)  # decoded on the first read (patches.crop serialises it)
            slide = openslide.ImageSlide(plain)
            # 8-bit RGB: read_region may crop it directly (same bits, a fraction of the cost)
            slide.plain_rgb = plain if plain.mode == "RGB" else None
            return slide
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
        raise ImageError(f"image is unreadable or truncated ({err})", path=path, fix=_FIX_CORRUPT) from err


def read_region(path: Path, x: int, y: int, size: int, out_size: int) -> np.ndarray:
    """Square RGB uint8 crop with top-left (x, y) and side ``size`` in level-0 pixels,
    resized to ``out_size``. Uses the coarsest pyramid level that still has enough
    resolution, so a whole 9k×9k image is never loaded for a small region of a WSI.
    Pixels outside the image are white (background), as OpenSlide returns them."""
    from PIL import Image as image

    slide = open_slide(Path(path))
    plain = getattr(slide, "plain_rgb", None)
    if plain is not None and x >= 0 and y >= 0 and x + size <= plain.width and y + size <= plain.height:
        # Inside an 8-bit RGB plain image OpenSlide's RGBA tile is opaque, so pasting it on
        # white gives these very pixels; cropping them directly skips two full-size copies
        # (~60% of the cost of a large region/global tile).
        try:
            region_rgb = plain.crop((int(x), int(y), int(x) + int(size), int(y) + int(size)))
        except Exception as err:  # noqa: BLE001 - as the OpenSlide route below: any decode failure
            raise ImageError(f"cannot read region at ({x},{y}) ({err})", path=path, fix=_FIX_CORRUPT) from err
        if region_rgb.size != (out_size, out_size):
            region_rgb = region_rgb.resize((out_size, out_size), image.Resampling.BILINEAR)
        return np.asarray(region_rgb)
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
