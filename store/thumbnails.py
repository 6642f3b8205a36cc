"""H&E thumbnails that align writes into the store, so reports and exports never open the
raw slides: which one a section has, at what scale, and reading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asign.store.layout import StoreLayout


@dataclass(frozen=True)
class Thumbnail:
    """An H&E thumbnail and its scale: ``downsample`` full-resolution px per thumbnail px."""

    path: Path
    downsample: float

    def read(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        from PIL import Image

        with Image.open(self.path) as im:
            return np.asarray(im.convert("RGB"))


def section_thumbnail(layout: StoreLayout, align: dict[str, Any], section_id: str) -> Thumbnail | None:
    """The finest thumbnail a section has: align's ≤ 4 µm/px one, else the 11 µm/px
    registration thumbnail (stores aligned before fine thumbnails existed); ``align`` is the
    sample's align step record in the manifest."""
    for path, scales in ((layout.fine_thumbnail(section_id), align.get("fine_thumb_downsample", {})),
                         (layout.thumbnail(section_id), align.get("thumb_downsample", {}))):
        downsample = scales.get(section_id)
        if path.exists() and downsample:
            return Thumbnail(path, float(downsample))
    return None
