"""In-memory form of a raw sample, as every reader returns it. Readers only parse and
validate; nothing here touches the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPOT_COLUMNS = ("spot_id", "barcode", "array_x", "array_y", "px", "py")


@dataclass(frozen=True)
class SectionInput:
    """One tissue section of a sample.

    ``spots`` has the columns of ``SPOT_COLUMNS`` (``spot_id`` is store-unique, e.g.
    ``"C3/10x21"``; ``barcode`` is the id inside the section; ``px, py`` are the spot
    centre in full-resolution image pixels, px = column). Optional columns ``x_um, y_um``
    carry precomputed aligned coordinates (manifest users who aligned elsewhere).
    ``counts`` rows follow ``spots`` rows; ``None`` for a section with an image only.
    """

    sample_id: str
    section_id: str
    z: int
    image_path: Path | None
    um_per_px: float | None
    spot_diameter_um: float
    spot_pitch_um: float
    spots: pd.DataFrame
    genes: tuple[str, ...] = ()
    counts: sp.csr_matrix | None = None
    counts_path: Path | None = None
    total_counts: np.ndarray | None = None  # per spot, over all genes (for log1p-CP10k)
    section_um: float | None = None  # spacing between consecutive z (µm), when the input gives it
    spot_shape: str = "disc"  # "disc" (diameter) or "square" (side = spot_diameter_um)
    lattice: str = "square"  # layout of the platform's spots: "hex" (Visium) or "square"

    @property
    def has_counts(self) -> bool:
        return self.counts is not None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None

    @property
    def has_aligned_coords(self) -> bool:
        return {"x_um", "y_um"} <= set(self.spots.columns)


@dataclass(frozen=True)
class SampleInput:
    sample_id: str
    sections: tuple[SectionInput, ...]
    format: str
    source: Path
    warnings: tuple[str, ...] = field(default=())

    def section(self, section_id: str) -> SectionInput:
        for s in self.sections:
            if s.section_id == section_id:
                return s
        raise KeyError(section_id)
