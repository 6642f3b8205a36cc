"""Which reader opens an image: a small registry of slide backends, asked in order.

- ``ome-tiff`` (tiffslide): OME-TIFF, whose pyramid lives in SubIFDs that OpenSlide does
  not see (it would read level 0 only);
- ``openslide``: every format OpenSlide detects (SVS, NDPI, MRXS, tiled generic TIFF, ...);
- ``tiled-tiff`` (tiffslide): a tiled TIFF OpenSlide refuses (e.g. an unusual codec);
- ``pil``: plain JPEG/PNG/strip TIFF, decoded whole (under asign's pixel limit).

The tiled backends read by tiles and are verified here by their own reader: levels
consistent, sample tiles of every level decoded, and the file long enough for its tile
table. Only ``pil`` images are ever decoded whole. Every handle offers OpenSlide's API
(``dimensions``, ``level_*``, ``read_region``, ``properties``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asign.errors import ImageError

log = logging.getLogger(__name__)

FIX_CORRUPT = "re-export or re-download the image; asign needs a fully decodable RGB image"
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".scn", ".bif")
SAMPLE_SIDE = 256  # side (level px) of each sample tile read when verifying a pyramid


@dataclass(frozen=True)
class Backend:
    """One way to open an image. ``claims(path)`` reads headers only; ``open(path)`` returns
    an OpenSlide-like handle; ``tiled``: read by tiles (never decoded whole)."""

    name: str
    description: str
    claims: Callable[[Path], bool]
    open: Callable[[Path], Any]
    tiled: bool


def _tiff(path: Path) -> Any | None:
    """tifffile's view of a TIFF-based file (headers only), or None for other files."""
    import tifffile

    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return None
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError):
        return None


def _is_ome_pyramid(path: Path) -> bool:
    tif = _tiff(path)
    if tif is None:
        return False
    with tif:
        return bool(tif.is_ome and tif.pages[0].is_tiled)


def _openslide_detects(path: Path) -> bool:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except (openslide.OpenSlideError, OSError):
        return False


def _is_tiled_tiff(path: Path) -> bool:
    tif = _tiff(path)
    if tif is None:
        return False
    with tif:
        return bool(tif.pages[0].is_tiled)


def _open_tiffslide(path: Path) -> Any:
    import tiffslide

    slide = tiffslide.TiffSlide(str(path))
    slide.fills_black = True  # outside the slide: black RGB, where OpenSlide gives transparent
    return slide


def _open_openslide(path: Path) -> Any:
    import openslide

    return openslide.OpenSlide(str(path))


def _open_pil(path: Path) -> Any:
    """OpenSlide's ImageSlide over a lazily decoded PIL image (decoded on the first read,
    which ``patches.crop`` serialises). ``images`` applies the pixel limit first."""
    import openslide
    from PIL import Image

    plain = Image.open(path)
    slide = openslide.ImageSlide(plain)
    # 8-bit RGB: read_region may crop it directly (same bits, a fraction of the cost)
    slide.plain_rgb = plain if plain.mode == "RGB" else None
    return slide


BACKENDS: dict[str, Backend] = {
    "ome-tiff": Backend("ome-tiff", "OME-TIFF with SubIFD pyramid (tiffslide)", _is_ome_pyramid,
                        _open_tiffslide, tiled=True),
    "openslide": Backend("openslide", "SVS, NDPI, MRXS, tiled TIFF, ... (OpenSlide)",
                         _openslide_detects, _open_openslide, tiled=True),
    "tiled-tiff": Backend("tiled-tiff", "other tiled TIFF (tiffslide)", _is_tiled_tiff,
                          _open_tiffslide, tiled=True),
    "pil": Backend("pil", "plain JPEG/PNG/TIFF, decoded whole (Pillow)", lambda _p: True,
                   _open_pil, tiled=False),
}
"""Asked in this order; the first that claims a file opens it."""


def backend_for(path: Path) -> Backend:
    path = Path(path)
    return next(b for b in BACKENDS.values() if b.claims(path))


def open_with(backend: Backend, path: Path) -> Any:
    """``backend.open(path)`` with every reader failure turned into an ImageError."""
    import openslide
    import tifffile

    try:
        return backend.open(Path(path))
    except (openslide.OpenSlideError, tifffile.TiffFileError, OSError, ValueError, KeyError,
            IndexError) as err:
        raise ImageError(f"image cannot be opened by {backend.name} ({err})", path=path,
                         fix=FIX_CORRUPT) from err


# --- verification of tiled slides ---------------------------------------------------------

def verify_tiled(path: Path, slide: Any) -> tuple[int, int]:
    """Check a tiled slide without decoding it whole: RGB samples, level sizes consistent
    with their downsamples, the tile table inside the file, and a few tiles of every level
    decoded. Returns level 0's (width, height)."""
    path = Path(path)
    _check_tiff_layout(path)
    dims, ds = list(slide.level_dimensions), list(slide.level_downsamples)
    w0, h0 = dims[0]
    if w0 < 1 or h0 < 1:
        raise ImageError(f"slide level 0 has size {w0}×{h0}", path=path, fix=FIX_CORRUPT)
    for level, ((w, h), d) in enumerate(zip(dims, ds, strict=True)):
        # a level's size is level 0's divided by its downsample, give or take rounding
        if d < 1 or abs(w * d - w0) > 2 * d + 1 or abs(h * d - h0) > 2 * d + 1:
            raise ImageError(f"pyramid level {level} is {w}×{h} at downsample {d:g}, inconsistent "
                             f"with level 0 ({w0}×{h0})", path=path, fix=FIX_CORRUPT)
        for x, y in _sample_corners(w, h):
            side = (min(SAMPLE_SIDE, w - x), min(SAMPLE_SIDE, h - y))
            try:
                slide.read_region((int(x * d), int(y * d)), level, side).load()
            except Exception as err:  # noqa: BLE001 - readers raise many codec error types
                raise ImageError(f"tile at level {level} ({x},{y}) is unreadable ({err})",
                                 path=path, fix=FIX_CORRUPT) from err
    return int(w0), int(h0)


def _sample_corners(w: int, h: int) -> list[tuple[int, int]]:
    """Top-left, centre and bottom-right sample tiles of a w×h level (level px)."""
    s = SAMPLE_SIDE
    corners = {(0, 0), (max(0, w // 2 - s // 2), max(0, h // 2 - s // 2)),
               (max(0, w - s), max(0, h - s))}
    return sorted(corners)


def _check_tiff_layout(path: Path) -> None:
    """For TIFF-based slides: 8-bit RGB samples, and every tile/strip of every page (and
    SubIFD) ends inside the file: a truncated download fails here, not mid-ingest."""
    tif = _tiff(path)
    if tif is None:
        return  # MRXS and other non-TIFF layouts: OpenSlide checked its own index
    size = path.stat().st_size
    with tif:
        first = tif.pages[0]
        if first.samplesperpixel < 3 and first.photometric != 6:  # 6: YCbCr
            raise ImageError(f"single-channel slide ({first.samplesperpixel} sample per pixel) "
                             "refused: asign needs an RGB H&E scan", path=path,
                             fix="export the H&E scan as 8-bit RGB")
        for page in _all_pages(tif):
            offsets, counts = page.dataoffsets, page.databytecounts
            if not offsets:
                continue
            end = max(o + c for o, c in zip(offsets, counts, strict=True))
            if end > size:
                raise ImageError(f"file is truncated: its tile table reaches byte {end:,} but "
                                 f"the file has {size:,}", path=path, fix=FIX_CORRUPT)


def _all_pages(tif: Any) -> list[Any]:
    """Every page of every series level (SubIFDs included), headers only."""
    pages: dict[int, Any] = {}
    for series in tif.series:
        for level in series.levels:
            for page in level.pages:
                if page is not None and hasattr(page, "dataoffsets"):
                    pages[page.offset] = page
    for page in tif.pages:
        pages.setdefault(page.offset, page)
    return list(pages.values())


# --- µm per pixel from the slide's own metadata -------------------------------------------

PLAUSIBLE_UM_PER_PX = (0.05, 50.0)
"""Outside this range a resolution tag is a screen default (72 dpi = 353 µm/px), not a scan."""
_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def metadata_um_per_px(path: Path, slide: Any | None = None) -> tuple[float, str] | None:
    """(µm per level-0 pixel, where it was read) from the slide's metadata: OpenSlide's /
    tiffslide's ``mpp-x``, else OME ``PhysicalSizeX``, else the TIFF resolution tags (in cm
    or inch). None when the file states nothing plausible (plain JPEG/PNG never do: their
    dpi fields are screen defaults)."""
    found: list[tuple[float, str]] = []
    props = getattr(slide, "properties", None) or {}
    for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
        if props.get(key) not in (None, ""):
            found.append((float(props[key]), key))
    tif = _tiff(Path(path))
    if tif is not None:
        with tif:
            found += _ome_size(tif) + _resolution_tags(tif)
    lo, hi = PLAUSIBLE_UM_PER_PX
    return next(((v, src) for v, src in found if lo <= v <= hi), None)


def _ome_size(tif: Any) -> list[tuple[float, str]]:
    import xml.etree.ElementTree as ET

    if not tif.is_ome or not tif.ome_metadata:
        return []
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return []
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return []
    unit = _UNIT_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
    if unit is None:
        return []
    return [(float(pixels.get("PhysicalSizeX")) * unit, "OME PhysicalSizeX")]


def _resolution_tags(tif: Any) -> list[tuple[float, str]]:
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return []
    unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(tags["ResolutionUnit"].value))  # inch, cm
    num, den = tags["XResolution"].value
    if unit_um is None or not num or not den:
        return []
    return [(unit_um * den / num, "TIFF XResolution")]
