"""The labels table's list columns (``value``, ``counts``: one entry per panel gene) as dense
float32 rows. The one place their width is checked, for training and the report alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from asign.errors import StoreError


def dense_rows(column: Any, width: int, path: Path | None = None) -> np.ndarray:
    """(n, width) float32 from a list column of ``width`` values per row. A row of any
    other length (or a null row) is damage: a StoreError naming ``path``, the labels file."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), -1), dtype=np.int64)
    wrong = np.flatnonzero(lengths != width)
    if wrong.size:
        held = "no list" if lengths[wrong[0]] < 0 else f"{int(lengths[wrong[0]])} values"
        raise StoreError(f"{wrong.size} label vectors do not match the gene panel of {width} "
                         f"(the first holds {held})", path=path,
                         fix="re-run `asign ingest --steps register` so labels follow the panel")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(lengths), width)
