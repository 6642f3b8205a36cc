"""H&E thumbnails that align writes into the store, so reports and exports never open the
raw slides: which one a section has, at what scale, and reading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asign.store.layout import StoreLayout
from asign.store.manifest_records import StepRecord

MAX_SLIDE_PIXELS = 1_000_000_000  # ingest's default limit on a slide's level 0 (images.py)


@dataclass(frozen=True)
class Thumbnail:
    """An H&E thumbnail and its scale: ``downsample`` full-resolution px per thumbnail px."""

    path: Path
    downsample: float

    def read(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB. The header's size is checked before decoding: a thumbnail is
        at most what the largest slide ingest opens gives at its downsample."""
        from PIL import Image, UnidentifiedImageError

        from asign.errors import ImageError
        from asign.store.codecs import check_image_claims

        limit = int(MAX_SLIDE_PIXELS / max(1.0, self.downsample) ** 2) + 4_000_000
        try:
            with Image.open(self.path) as im:
                check_image_claims(im.size, limit, "thumbnail", self.path)
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise ImageError(f"thumbnail is not a readable image ({err})", path=self.path,
                             fix="re-run `asign ingest --steps align` for its sample") from err


def section_thumbnail(layout: StoreLayout, record: StepRecord | None,
                      section_id: str) -> Thumbnail | None:
    """The finest thumbnail a section has: align's ≤ 4 µm/px one, else the 11 µm/px
    registration thumbnail (stores aligned before fine thumbnails existed); ``record`` is
    the sample's align step record in the manifest (its downsamples)."""
    align = {} if record is None else record.extra
    fine = (layout.fine_thumbnail(section_id), align.get("fine_thumb_downsample", {}))
    for path, scales in (fine, (layout.thumbnail(section_id), align.get("thumb_downsample", {}))):
        downsample = scales.get(section_id)
        if path.exists() and downsample:
            return Thumbnail(path, float(downsample))
    return None
