"""Visium reader on a tiny Space Ranger-shaped fixture written by the test (h5 and mtx,
tissue positions with and without header)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from asign.errors import CountsError, InputError
from asign.ingest.readers import detect_format, list_samples, read_samples

FULL_UM_PER_PX = 0.5
HIRES = 0.2
FEATURES = [
    ("ENSG1", "GAPDH", "Gene Expression"),
    ("ENSG2", "ACTB", "Gene Expression"),
    ("ENSG3", "MT-CO1", "Gene Expression"),
    ("ENSG4", "ACTB", "Gene Expression"),  # duplicate symbol, as in real references
    ("AB1", "CD3_TotalSeqB", "Antibody Capture"),
]
FULL_W, FULL_H = 1600, 1100


def _positions() -> pd.DataFrame:
    """A 4-row hex patch: array_col step 50 µm, array_row step 86.6 µm."""
    rows = []
    for r in range(4):
        for c in range(r % 2, 12, 2):
            rows.append(
                {
                    "barcode": f"AC{r:02d}{c:02d}-1",
                    "in_tissue": int(c < 9),
                    "array_row": r,
                    "array_col": c,
                    "pxl_row_in_fullres": 250 + r * 86.6025 / FULL_UM_PER_PX,
                    "pxl_col_in_fullres": 200 + c * 50 / FULL_UM_PER_PX,
                }
            )
    return pd.DataFrame(rows)


def write_section(
    folder: Path,
    *,
    variant: str = "h5",
    header: bool = True,
    seed: int = 0,
    extra_barcode: str | None = None,
    values: np.ndarray | None = None,
) -> dict:
    """Write SECTION/outs/... and return what the reader should find."""
    outs = folder / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True)
    pos = _positions()
    tissue = pos[pos.in_tissue == 1]
    # Filtered matrix: in-tissue barcodes, plus one off-tissue barcode (must be dropped).
    barcodes = [*tissue.barcode, pos.barcode[pos.in_tissue == 0].iloc[0]]
    if extra_barcode:
        barcodes.append(extra_barcode)
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 6, (len(barcodes), len(FEATURES))) if values is None else values
    matrix = sp.csc_matrix(dense.T)  # features × barcodes, as 10x stores it
    if variant == "h5":
        import h5py

        with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
            g = f.create_group("matrix")
            g["barcodes"] = np.array(barcodes, dtype="S")
            g["data"] = matrix.data
            g["indices"] = matrix.indices.astype(np.int64)
            g["indptr"] = matrix.indptr.astype(np.int64)
            g["shape"] = np.array(matrix.shape, dtype=np.int32)
            fg = g.create_group("features")
            fg["id"] = np.array([f[0] for f in FEATURES], dtype="S")
            fg["name"] = np.array([f[1] for f in FEATURES], dtype="S")
            fg["feature_type"] = np.array([f[2] for f in FEATURES], dtype="S")
    else:
        mdir = outs / "filtered_feature_bc_matrix"
        mdir.mkdir()
        with gzip.open(mdir / "matrix.mtx.gz", "wb") as fh:
            scipy.io.mmwrite(
                fh, sp.coo_matrix(matrix), field="integer" if values is None else "real"
            )
        with gzip.open(mdir / "barcodes.tsv.gz", "wt") as fh:
            fh.write("\n".join(barcodes) + "\n")
        with gzip.open(mdir / "features.tsv.gz", "wt") as fh:
            fh.write("\n".join("\t".join(f) for f in FEATURES) + "\n")
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    pos.to_csv(spatial / name, index=False, header=header)
    (spatial / "scalefactors_json.json").write_text(
        json.dumps(
            {
                "spot_diameter_fullres": 55 / FULL_UM_PER_PX,
                "tissue_hires_scalef": HIRES,
                "fiducial_diameter_fullres": 200.0,
                "tissue_lowres_scalef": 0.05,
            }
        )
    )
    size = (int(FULL_W * HIRES), int(FULL_H * HIRES))
    Image.new("RGB", size, (230, 190, 210)).save(spatial / "tissue_hires_image.png")
    return {"barcodes": barcodes, "dense": dense, "tissue": tissue}


def test_h5_sections_in_natural_order(tmp_path):
    truth = {
        n: write_section(tmp_path / "BLOCK" / n, seed=i) for i, n in enumerate(["S10", "S2", "S1"])
    }
    src = tmp_path / "BLOCK"
    assert detect_format(src) == "visium"
    assert list_samples(src) == ["BLOCK"]
    (s,) = read_samples(src)
    assert s.format == "visium" and [x.section_id for x in s.sections] == ["S1", "S2", "S10"]
    assert [x.z for x in s.sections] == [1, 2, 3]
    sec = s.section("S2")
    t = truth["S2"]
    # Only in-tissue spots; gene features only, duplicate symbol made unique.
    assert list(sec.spots["barcode"]) == list(t["tissue"].barcode)
    assert sec.genes == ("GAPDH", "ACTB", "MT-CO1", "ACTB-1")
    np.testing.assert_array_equal(sec.counts.toarray(), t["dense"][: len(t["tissue"]), :4])
    np.testing.assert_array_equal(sec.total_counts, t["dense"][: len(t["tissue"]), :4].sum(1))
    # Hires image: pixel coordinates scaled, µm/px from the 100-µm lattice.
    assert sec.image_path.name == "tissue_hires_image.png"
    np.testing.assert_allclose(sec.spots["px"], t["tissue"].pxl_col_in_fullres * HIRES)
    np.testing.assert_allclose(sec.spots["py"], t["tissue"].pxl_row_in_fullres * HIRES)
    assert sec.um_per_px == pytest.approx(FULL_UM_PER_PX / HIRES, rel=1e-4)
    assert sec.spot_diameter_um == 55.0 and sec.spot_pitch_um == 100.0
    assert sec.spots["spot_id"].iloc[0] == f"S2/{t['tissue'].barcode.iloc[0]}"
    assert sec.counts_path.name == "filtered_feature_bc_matrix.h5"


def test_mtx_and_headerless_positions_match_h5(tmp_path):
    write_section(tmp_path / "A" / "S1", variant="h5", seed=3)
    write_section(tmp_path / "A" / "S2", variant="h5", seed=4)
    write_section(tmp_path / "B" / "S1", variant="mtx", header=False, seed=3)
    write_section(tmp_path / "B" / "S2", variant="mtx", header=False, seed=4)
    (a,) = read_samples(tmp_path / "A")
    (b,) = read_samples(tmp_path / "B")
    for x, y in zip(a.sections, b.sections, strict=True):
        assert x.genes == y.genes
        pd.testing.assert_frame_equal(x.spots, y.spots)
        assert (x.counts != y.counts).nnz == 0
        assert x.um_per_px == pytest.approx(y.um_per_px)


def test_multi_sample_folder_selection_and_clash(tmp_path):
    for sample in ("P1", "P2"):
        for sec in ("a", "b"):
            write_section(tmp_path / sample / f"{sample}_{sec}")
    assert list_samples(tmp_path) == ["P1", "P2"]
    (p2,) = read_samples(tmp_path, samples="P2")
    assert [x.section_id for x in p2.sections] == ["P2_a", "P2_b"]
    assert len(read_samples(tmp_path, samples="P*")) == 2
    write_section(tmp_path / "P3" / "P1_a")
    write_section(tmp_path / "P3" / "P3_b")
    with pytest.raises(InputError, match="section id P1_a is used by samples P1 and P3"):
        read_samples(tmp_path)


def test_sections_txt_order_and_full_resolution_image(tmp_path):
    src = tmp_path / "BLOCK"
    for n in ("top", "mid", "bot"):
        write_section(src / n)
    Image.new("RGB", (FULL_W, FULL_H), (220, 180, 200)).save(src / "mid_fullres.tif")
    (src / "sections.txt").write_text("# z order\ntop\nmid  mid_fullres.tif\nbot\n")
    (s,) = read_samples(src)
    assert [x.section_id for x in s.sections] == ["top", "mid", "bot"]
    mid = s.section("mid")
    assert mid.image_path == src / "mid_fullres.tif"
    assert mid.um_per_px == pytest.approx(FULL_UM_PER_PX, rel=1e-4)
    pos = _positions()
    assert mid.spots["px"].iloc[0] == pytest.approx(
        pos[pos.in_tissue == 1].pxl_col_in_fullres.iloc[0]
    )
    assert s.section("top").image_path.name == "tissue_hires_image.png"


def test_sections_txt_unlisted_warns_and_unknown_fails(tmp_path):
    src = tmp_path / "BLOCK"
    for n in ("a", "b", "c"):
        write_section(src / n)
    (src / "sections.txt").write_text("b\na\n")
    (s,) = read_samples(src)
    assert [x.section_id for x in s.sections] == ["b", "a"]
    assert any("c" in w and "ignored" in w for w in s.warnings)
    (src / "sections.txt").write_text("b\nzz\n")
    with pytest.raises(InputError, match="zz") as err:
        read_samples(src)
    assert "sections.txt" in str(err.value)


def test_full_resolution_image_beside_outs(tmp_path):
    src = tmp_path / "BLOCK"
    write_section(src / "s1")
    write_section(src / "s2")
    Image.new("RGB", (FULL_W, FULL_H)).save(src / "s1" / "he.jpg")
    (s,) = read_samples(src)
    assert s.section("s1").image_path.name == "he.jpg"
    assert s.section("s1").um_per_px == pytest.approx(FULL_UM_PER_PX, rel=1e-4)
    assert s.section("s2").image_path.name == "tissue_hires_image.png"


def test_barcode_absent_from_positions(tmp_path):
    write_section(tmp_path / "BLOCK" / "s1")
    write_section(tmp_path / "BLOCK" / "s2", extra_barcode="GHOST-1")
    with pytest.raises(CountsError, match="GHOST-1") as err:
        read_samples(tmp_path / "BLOCK")
    msg = str(err.value)
    assert "filtered_feature_bc_matrix.h5" in msg and "tissue_positions.csv" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("bad", "pattern"), [(-2.0, "negative"), (1.5, "non-integer")])
def test_bad_values_in_mtx(tmp_path, bad, pattern):
    write_section(tmp_path / "BLOCK" / "s1")
    n = len(_positions().query("in_tissue == 1")) + 1
    values = np.ones((n, len(FEATURES)))
    values[2, 1] = bad
    write_section(tmp_path / "BLOCK" / "s2", variant="mtx", values=values)
    with pytest.raises(CountsError, match=pattern):
        read_samples(tmp_path / "BLOCK")


def test_lone_section_is_one_section_sample(tmp_path):
    write_section(tmp_path / "only")
    assert detect_format(tmp_path / "only") == "visium"
    with pytest.raises(InputError, match="one section"):
        read_samples(tmp_path / "only")
    (s,) = read_samples(tmp_path / "only", allow_single=True)
    assert s.sections[0].section_id == "only"


def test_explicit_format_mismatch(tmp_path):
    write_section(tmp_path / "BLOCK" / "s1")
    with pytest.raises(InputError, match="her2st layout"):
        read_samples(tmp_path / "BLOCK", fmt="her2st")
