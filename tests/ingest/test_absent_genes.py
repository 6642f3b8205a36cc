"""Absent is not zero: a panel gene a section's counts lack is masked in its labels (value
NaN, count null), warned about at ingest, left out of scoring and counted, and refused as
a training target. And spot coordinates in another unit are refused before writing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from asign.errors import InputError
from asign.ingest.sample import SampleInput, SectionInput
from asign.ingest.step_register import _warn_absent, check_units, labels_table
from asign.schemas import TABLES
from asign.store.parquet import conform
from asign.train.metrics import evaluate
from asign.train.protocol import visible_labels

PANEL = ["A", "B", "C", "D"]


def _section(sid: str, genes: list[str], counts: np.ndarray, xy: np.ndarray | None = None,
             um_per_px: float = 1.0) -> SectionInput:
    ids = [f"{sid}/s{i}" for i in range(len(counts))]
    xy = np.zeros((len(ids), 2)) if xy is None else xy
    spots = pd.DataFrame({"spot_id": ids, "barcode": ids, "array_x": 0, "array_y": 0,
                          "px": xy[:, 0], "py": xy[:, 1]})
    return SectionInput(sample_id="S", section_id=sid, z=int(sid[1:]), image_path=None,
                        um_per_px=um_per_px, spot_diameter_um=55.0, spot_pitch_um=100.0,
                        spots=spots, genes=tuple(genes), counts=sp.csr_matrix(counts),
                        counts_path=Path(f"/data/{sid}.csv"))


def _sample() -> SampleInput:
    known = _section("L1", PANEL, np.array([[1, 2, 3, 4], [4, 3, 2, 1]]))
    hidden = _section("L2", ["A", "C"], np.array([[5, 0], [0, 5]]))  # lacks B and D
    return SampleInput("S", (known, hidden), "manifest", Path("/data"))


def test_absent_genes_are_masked_not_zero(caplog):
    sample = _sample()
    with caplog.at_level(logging.WARNING):
        absent = _warn_absent([sample], PANEL)
    assert absent == {"L2": ["B", "D"]}
    assert "section L2: 2 of the 4 panel genes are absent" in caplog.text
    table = conform(labels_table(sample, PANEL, "log_ratio"), "labels")
    assert table.schema == TABLES["labels"]
    values = np.array(table.column("value").to_pylist(), dtype=np.float64)
    counts = table.column("counts").to_pylist()
    assert np.isfinite(values[:2]).all() and counts[:2] == [[1, 2, 3, 4], [4, 3, 2, 1]]
    assert np.isnan(values[2:, [1, 3]]).all() and np.isfinite(values[2:, [0, 2]]).all()
    assert counts[2:] == [[5, None, 0, None], [0, None, 5, None]]  # a measured 0 stays 0
    flat = pa.compute.list_flatten(table.column("counts"))
    assert flat.null_count == 4


def test_absent_genes_are_left_out_of_scoring_and_counted():
    rng = np.random.default_rng(0)
    truth, pred = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    masked = truth.copy()
    masked[:, [1, 3]] = np.nan
    got = evaluate(pred, masked)
    want = evaluate(pred[:, [0, 2]], truth[:, [0, 2]])
    assert got["n_genes"] == 4 and got["n_genes_absent"] == 2 and got["n_genes_valid"] == 2
    for metric in ("mse", "mae", "pcc_spot", "pcc_gene"):
        assert got[metric] == pytest.approx(want[metric])
    # the same prediction scored as if the absent genes were measured zeros differs
    zeros = np.nan_to_num(masked)
    assert evaluate(pred, zeros)["mse"] != pytest.approx(got["mse"])
    assert "n_genes_absent" not in evaluate(pred, truth)


def test_absent_genes_of_a_known_layer_are_refused_as_targets():
    labels = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 4.0]], dtype=np.float32)
    has = np.ones(3, dtype=bool)
    section = np.array([0, 0, 1], dtype=np.int32)
    out, mask = visible_labels(labels, has, section, [1])  # the complete layer is fine
    assert mask.tolist() == [False, False, True] and np.isfinite(out).all()
    with pytest.raises(InputError, match="1 panel gene"):
        visible_labels(labels, has, section, [0])


def test_coordinates_in_another_unit_are_refused():
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), axis=-1).reshape(-1, 2).astype(float)
    counts = np.ones((16, 4), dtype=np.int32)
    check_units(_section("L1", PANEL, counts, grid * 400.0, um_per_px=0.25))  # 100 µm apart
    with pytest.raises(InputError, match="spots are 25 µm apart"):  # µm given as pixels
        check_units(_section("L1", PANEL, counts, grid * 100.0, um_per_px=0.25))
