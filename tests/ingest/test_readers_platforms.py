"""Visium HD, Xenium and SpatialData readers on vendor-layout fixtures (real her2st pixels
and counts, written by the tests), checked against the files themselves read
independently (h5py, pyarrow, the alignment CSV), not against spatialdata-io's view."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from platform_fixtures import make_visium_hd_sample, make_xenium_sample

from asign.errors import InputError
from asign.ingest.readers import ReadOptions, detect_format, list_samples, read_samples
from asign.ingest.readers.xenium import bin_cells


def _h5(path: Path) -> tuple[list[str], np.ndarray]:
    import scipy.sparse as sp

    with h5py.File(path) as f:
        g = f["matrix"]
        n_feat, n_bc = g["shape"][:]
        m = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_feat, n_bc))
        return [b.decode() for b in g["barcodes"][:]], m.T.toarray()


@pytest.fixture(scope="module")
def hd(tmp_path_factory) -> Path:
    return make_visium_hd_sample(tmp_path_factory.mktemp("hd") / "HD")


@pytest.fixture(scope="module")
def xe(tmp_path_factory) -> Path:
    return make_xenium_sample(tmp_path_factory.mktemp("xe") / "XE")


def test_visium_hd_bins_match_the_files(hd):
    assert detect_format(hd) == "visium_hd" and list_samples(hd) == ["HD"]
    (s,) = read_samples(hd)
    sec = s.section("C2")
    level = hd / "C2" / "binned_outputs" / "square_016um"
    pos = pd.read_parquet(level / "spatial" / "tissue_positions.parquet").set_index("barcode")
    barcodes, dense = _h5(level / "filtered_feature_bc_matrix.h5")
    assert sec.spots.barcode.tolist() == barcodes
    np.testing.assert_array_equal(sec.counts.toarray(), dense)
    np.testing.assert_allclose(sec.spots.px, pos.loc[barcodes, "pxl_col_in_fullres"])
    np.testing.assert_allclose(sec.spots.py, pos.loc[barcodes, "pxl_row_in_fullres"])
    assert sec.image_path == hd / "C2" / "microscope_image" / "C2_HE.tif"
    assert sec.um_per_px == pytest.approx(2.0, rel=1e-9)
    assert (sec.spot_shape, sec.lattice, sec.spot_diameter_um, sec.spot_pitch_um) == (
        "square", "square", 16.0, 16.0)


def test_visium_hd_bin_level_choice(hd, tmp_path):
    (s8,) = read_samples(hd, options=ReadOptions(bin_um=8))
    (s16,) = read_samples(hd)
    a, b = s8.section("C2"), s16.section("C2")
    assert a.spot_diameter_um == 8.0 and len(a.spots) > 3 * len(b.spots)
    assert a.um_per_px == pytest.approx(b.um_per_px)
    with pytest.raises(InputError, match="no square_002um level") as err:
        read_samples(hd, options=ReadOptions(bin_um=2))
    assert "--bin-um" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="not a Visium HD bin size"):
        read_samples(hd, options=ReadOptions(bin_um=55))


def test_visium_hd_without_full_resolution_image_uses_hires(hd, tmp_path):
    src = Path(shutil.copytree(hd, tmp_path / "HD"))
    for s in ("C2", "C3"):
        shutil.rmtree(src / s / "microscope_image")
    (s,) = read_samples(src)
    (full,) = read_samples(hd)
    sec, ref = s.section("C2"), full.section("C2")
    assert sec.image_path.name == "tissue_hires_image.png"
    np.testing.assert_allclose(sec.spots.px, ref.spots.px * 0.5)  # tissue_hires_scalef
    assert sec.um_per_px == pytest.approx(ref.um_per_px / 0.5)


def test_bin_cells_sums_counts_per_square():
    import scipy.sparse as sp

    xy = np.array([[1.0, 1.0], [54.0, 2.0], [56.0, 1.0], [10.0, 60.0]])
    counts = sp.csr_matrix(np.array([[1, 0], [2, 1], [0, 5], [3, 3]]))
    col, row, summed, n = bin_cells(xy, counts, 55.0)
    got = {(c, r): (tuple(summed[i].toarray().ravel()), n[i])
           for i, (c, r) in enumerate(zip(col, row, strict=True))}
    assert got == {(0, 0): ((3, 1), 2), (1, 0): ((0, 5), 1), (0, 1): ((3, 3), 1)}


def test_xenium_bins_and_cells_match_the_files(xe):
    assert detect_format(xe) == "xenium"
    cells = pd.read_parquet(xe / "C2" / "cells.parquet")
    barcodes, dense = _h5(xe / "C2" / "cell_feature_matrix.h5")
    align = pd.read_csv(xe / "C2" / "C2_he_imagealignment.csv", header=None).to_numpy()
    (binned,) = read_samples(xe)
    b = binned.section("C2")
    assert b.counts.sum() == dense.sum()  # every transcript lands in one bin
    assert (b.spot_shape, b.spot_diameter_um, b.spot_pitch_um) == ("square", 55.0, 55.0)
    (as_cells,) = read_samples(xe, options=ReadOptions(bin_um=0))
    c = as_cells.section("C2")
    assert c.spots.barcode.tolist() == barcodes == cells.cell_id.tolist()
    np.testing.assert_array_equal(c.counts.toarray(), dense)
    morph = np.c_[cells[["x_centroid", "y_centroid"]].to_numpy() / 0.85, np.ones(len(cells))]
    expect = np.linalg.solve(align, morph.T).T[:, :2]  # H&E pixels: inverse alignment
    np.testing.assert_allclose(c.spots[["px", "py"]], expect, atol=1e-6)
    assert c.spot_shape == "disc"
    assert c.spot_diameter_um == pytest.approx(2 * np.sqrt(cells.cell_area.median() / np.pi))
    assert c.image_path.name == "C2_he_image.ome.tif" and c.um_per_px == pytest.approx(0.425)


def test_xenium_without_he_cannot_be_placed(xe, tmp_path):
    src = Path(shutil.copytree(xe, tmp_path / "XE"))
    for f in src.glob("*/*he_image*"):
        f.unlink()
    with pytest.raises(InputError, match="neither an H&E image"):
        read_samples(src)
    (s,) = read_samples(src, allow_single=True)
    assert all(sec.image_path is None and sec.has_counts for sec in s.sections)
