"""Derived facts of the ``sections`` table that every stage reads the same way: which
sections are *placed* (in the sample's aligned frame) and where each sits along the stack
in µm. Stores written before the ``has_coords``/``section_um``/``z_um`` columns existed
read as: no given coordinates, and the default spacing."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Spacing assumed when neither the input nor ``--section-um`` gives one: a typical
#: cryosection thickness, i.e. consecutive sections. Recorded in the store when used.
DEFAULT_SECTION_UM = 10.0


def has_coords(sections: pd.DataFrame) -> pd.Series:
    """Aligned x_um, y_um came with the input (aligned elsewhere, e.g. with PASTE)."""
    if "has_coords" not in sections:
        return pd.Series(False, index=sections.index)
    return sections["has_coords"].map(lambda v: bool(v) if v is not None and v == v
                                      else False).astype(bool)


def placed(sections: pd.DataFrame) -> pd.Series:
    """A section is placed by its image (after alignment) or by given aligned coordinates."""
    return sections["has_image"].astype(bool) | has_coords(sections)


def z_um(sections: pd.DataFrame) -> pd.Series:
    """Each section's position along the stack in µm (z × spacing)."""
    z = sections["z"].astype(np.float64)
    if "z_um" not in sections:
        return z * DEFAULT_SECTION_UM
    return sections["z_um"].astype(np.float64).fillna(z * DEFAULT_SECTION_UM)


def spot_z_um(sections: pd.DataFrame, section_ids: pd.Series | np.ndarray) -> np.ndarray:
    """z in µm for each spot, given its section id."""
    by_id = dict(zip(sections["section_id"].astype(str), z_um(sections), strict=True))
    return np.asarray([by_id[str(s)] for s in section_ids], dtype=np.float64)


def spot_shape(section: pd.Series) -> str:
    """A section row's spot shape, ``disc`` or ``square``; ``disc`` for stores written
    before the column existed."""
    shape = section.get("spot_shape")
    return shape if isinstance(shape, str) else "disc"
