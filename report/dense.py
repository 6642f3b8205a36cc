"""A run's long tables (one row per spot × gene) as dense (spots, genes) arrays, read in
pieces (``Store.iter_table``): a Visium HD stack's predictions are hundreds of millions of
rows, more than a whole-table read or pandas could hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from asign.store import Store


@dataclass(frozen=True)
class Predicted:
    """Where a run predicted, read from its predictions without their values."""

    sections: dict[str, set[str]]  # sample -> sections with predictions
    fold: dict[str, int]  # sample -> its first fold


def predicted(store: Store, run_id: str) -> Predicted:
    sections: dict[str, set[str]] = {}
    fold: dict[str, int] = {}
    if not store.has("predictions", key=run_id):
        return Predicted(sections, fold)
    for piece in store.iter_table("predictions", run_id, ["sample_id", "section_id", "fold"]):
        groups = piece.group_by(["sample_id", "section_id"]).aggregate([("fold", "min")])
        for sample, sec, f in zip(*(groups.column(c).to_pylist()
                                    for c in ("sample_id", "section_id", "fold_min")),
                                  strict=True):
            sections.setdefault(sample, set()).add(sec)
            fold[sample] = min(fold.get(sample, f), f)
    return Predicted(sections, fold)


def dense_run(store: Store, run_id: str, spot_index: pd.Index, genes: list[str]
               ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A run's long predictions (one row per spot × gene) as a (spots, genes) array and,
    when the run computed them, its interval bounds; NaN where nothing was predicted. Read
    in pieces: the long table of a Visium HD stack has hundreds of millions of rows, more
    than pandas could hold."""
    shape = (len(spot_index), len(genes))
    value = np.full(shape, np.nan, dtype=np.float32)
    lower = upper = None
    gene_index = pd.Index(genes)
    for piece in store.iter_table("predictions", run_id,
                                  ["spot_id", "gene", "value", "lower", "upper"],
                                  dictionary=["spot_id", "gene"]):
        rows = codes(piece.column("spot_id"), spot_index)
        cols = codes(piece.column("gene"), gene_index)
        ok = (rows >= 0) & (cols >= 0)
        rows, cols = rows[ok], cols[ok]
        value[rows, cols] = _floats(piece.column("value"))[ok]
        if piece.column("lower").null_count < piece.num_rows:
            if lower is None:
                lower, upper = np.full(shape, np.nan, np.float32), np.full(shape, np.nan,
                                                                             np.float32)
            lower[rows, cols] = _floats(piece.column("lower"))[ok]
            upper[rows, cols] = _floats(piece.column("upper"))[ok]
    return value, None if lower is None else (lower, upper)


def codes(column: Any, index: pd.Index) -> np.ndarray:
    """Position in ``index`` of every entry of a dictionary-encoded column (-1: absent):
    each distinct string is looked up once."""
    parts = [index.get_indexer(chunk.dictionary.to_pandas())[
        np.asarray(chunk.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]
        for chunk in column.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _floats(column: Any) -> np.ndarray:
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(column, float("nan")).to_numpy(), dtype=np.float32)
