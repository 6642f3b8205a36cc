"""her2st reader: the real patient-C data, and bad inputs built from copies of it."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from her2st_small import HER2ST

from asign.errors import CountsError, ImageError, InputError
from asign.ingest.readers import detect_format, list_samples, read_samples

pytestmark = pytest.mark.skipif(not HER2ST.is_dir(), reason="../shared/data/her2st not present")

README_SPOTS = {"C1": 176, "C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}
README_GENES = {"C1": 15557, "C2": 15706, "C3": 15821, "C4": 15842, "C5": 15721, "C6": 15772}


@pytest.fixture(scope="module")
def patient_c():
    (sample,) = read_samples(HER2ST, samples="C")
    return sample


def test_detects_layout_and_lists_patients():
    assert detect_format(HER2ST) == "her2st"
    assert list_samples(HER2ST) == ["B", "C"]


def test_patient_c_sections(patient_c):
    s = patient_c
    assert s.sample_id == "C" and s.format == "her2st"
    assert [x.section_id for x in s.sections] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert [x.z for x in s.sections] == [1, 2, 3, 4, 5, 6]
    for sec in s.sections:
        assert len(sec.spots) == README_SPOTS[sec.section_id]
        assert len(sec.genes) == README_GENES[sec.section_id]
        assert sec.counts.shape == (len(sec.spots), len(sec.genes))
        assert sec.counts.dtype == np.int32
        np.testing.assert_array_equal(sec.total_counts, np.asarray(sec.counts.sum(axis=1)).ravel())
        assert sec.um_per_px == pytest.approx(0.69, abs=0.03)
        assert sec.spot_diameter_um == 100.0 and sec.spot_pitch_um == 200.0
        assert sec.spots["spot_id"].is_unique
        assert sec.spots["spot_id"].str.startswith(sec.section_id + "/").all()
    all_ids = pd.concat([sec.spots["spot_id"] for sec in s.sections])
    assert all_ids.is_unique


def test_c1_is_labels_only_with_warning(patient_c):
    c1 = patient_c.section("C1")
    assert not c1.has_image and c1.has_counts
    assert any("C1" in w and "no image" in w for w in patient_c.warnings)
    for sid in ("C2", "C3", "C4", "C5", "C6"):
        assert patient_c.section(sid).image_path.suffix == ".jpg"


def test_spot_pixels_come_from_the_spot_file(patient_c):
    sel = pd.read_csv(HER2ST / "ST-spotfiles" / "C3_selection.tsv", sep="\t")
    row = sel[(sel.x == 10) & (sel.y == 12)].iloc[0]
    spots = patient_c.section("C3").spots.set_index("spot_id")
    assert spots.loc["C3/10x12", "px"] == pytest.approx(row.pixel_x)
    assert spots.loc["C3/10x12", "py"] == pytest.approx(row.pixel_y)
    assert spots.loc["C3/10x12", "barcode"] == "10x12"
    assert (spots.loc["C3/10x12", ["array_x", "array_y"]].tolist()) == [10, 12]


def test_counts_match_the_file(patient_c):
    raw = pd.read_csv(HER2ST / "ST-cnts" / "C4.tsv.gz", sep="\t", index_col=0)
    sec = patient_c.section("C4")
    assert list(sec.spots["barcode"]) == list(raw.index)
    assert sec.genes == tuple(raw.columns)
    np.testing.assert_array_equal(sec.counts.toarray(), raw.to_numpy())


def test_one_section_sample_is_refused_unless_allowed():
    with pytest.raises(InputError, match="sample B has one section.*--extra-2d"):
        read_samples(HER2ST, samples="B")
    (b,) = read_samples(HER2ST, samples="B", allow_single=True)
    assert [s.section_id for s in b.sections] == ["B4"]
    assert b.sections[0].has_image and b.sections[0].has_counts


def test_unknown_sample_names_the_available_ones():
    with pytest.raises(InputError, match=r"no sample matches 'Z'.*available: B, C"):
        read_samples(HER2ST, samples="Z")


# ---- bad inputs on a cut-down copy: C1 (labels only), C2, C3, 30 genes -------------------


@pytest.fixture(scope="module")
def mini_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("her2st_mini")
    for sub in ("ST-cnts", "ST-spotfiles"):
        (root / sub).mkdir()
    for sid in ("C1", "C2", "C3"):
        df = pd.read_csv(HER2ST / "ST-cnts" / f"{sid}.tsv.gz", sep="\t", index_col=0)
        _write_counts(root / "ST-cnts" / f"{sid}.tsv.gz", df.iloc[:, :30])
        shutil.copy(HER2ST / "ST-spotfiles" / f"{sid}_selection.tsv", root / "ST-spotfiles")
        if sid != "C1":
            shutil.copytree(HER2ST / "ST-imgs" / "C" / sid, root / "ST-imgs" / "C" / sid)
    return root


@pytest.fixture
def mini(mini_src, tmp_path) -> Path:
    dst = tmp_path / "her2st"
    shutil.copytree(mini_src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _write_counts(path: Path, df: pd.DataFrame) -> None:
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, sep="\t")


def _counts(root: Path, sid: str) -> pd.DataFrame:
    return pd.read_csv(root / "ST-cnts" / f"{sid}.tsv.gz", sep="\t", index_col=0)


def _image(root: Path, sid: str) -> Path:
    return next((root / "ST-imgs" / "C" / sid).glob("*.jpg"))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_mini_copy_reads(mini):
    (s,) = read_samples(mini, samples="C")
    assert [x.section_id for x in s.sections] == ["C1", "C2", "C3"]
    assert len(s.section("C2").genes) == 30


def test_truncated_jpeg(mini):
    img = _image(mini, "C3")
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        read_samples(mini, samples="C")
    assert img.name in _one_line(err) and "Fix:" in str(err.value)


def test_zero_byte_image(mini):
    img = _image(mini, "C2")
    img.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as err:
        read_samples(mini, samples="C")
    assert img.name in _one_line(err)


def test_deleted_image(mini):
    img = _image(mini, "C2")
    img.unlink()
    with pytest.raises(ImageError, match="no image") as err:
        read_samples(mini, samples="C")
    assert "C2" in _one_line(err)


def test_removed_image_folder_keeps_labels_with_warning(mini, caplog):
    shutil.rmtree(mini / "ST-imgs" / "C" / "C2")
    with caplog.at_level(logging.WARNING):
        (s,) = read_samples(mini, samples="C")
    c2 = s.section("C2")
    assert not c2.has_image and c2.has_counts and len(c2.spots) == 187
    assert any("C2" in r.getMessage() and "labels only" in r.getMessage() for r in caplog.records)


def test_image_only_section_borrows_um_per_px(mini):
    shutil.copytree(mini / "ST-imgs" / "C" / "C3", mini / "ST-imgs" / "C" / "C7")
    (s,) = read_samples(mini, samples="C")
    c7 = s.section("C7")
    assert c7.z == 7 and c7.has_image and not c7.has_counts and len(c7.spots) == 0
    known = [s.section(x).um_per_px for x in ("C1", "C2", "C3")]
    assert c7.um_per_px == pytest.approx(np.median(known))


def test_counts_spot_absent_from_spot_file(mini):
    df = _counts(mini, "C2")
    extra = df.iloc[[0]].rename(index={df.index[0]: "99x99"})
    _write_counts(mini / "ST-cnts" / "C2.tsv.gz", pd.concat([df, extra]))
    with pytest.raises(CountsError, match="99x99") as err:
        read_samples(mini, samples="C")
    msg = _one_line(err)
    assert "C2.tsv.gz" in msg and "C2_selection.tsv" in msg


@pytest.mark.parametrize(
    ("value", "pattern"),
    [(np.nan, "NaN"), (-3, "negative"), (2.5, "non-integer"), ("abc", "non-numeric")],
)
def test_bad_count_values(mini, value, pattern):
    df = _counts(mini, "C3").astype(object)
    df.iloc[4, 7] = value
    _write_counts(mini / "ST-cnts" / "C3.tsv.gz", df)
    with pytest.raises(CountsError, match=pattern) as err:
        read_samples(mini, samples="C")
    msg = _one_line(err)
    assert "C3.tsv.gz" in msg and df.index[4] in msg and df.columns[7] in msg


def test_duplicate_spot_ids(mini):
    df = _counts(mini, "C3")
    _write_counts(mini / "ST-cnts" / "C3.tsv.gz", pd.concat([df, df.iloc[[2]]]))
    with pytest.raises(CountsError, match="duplicate spot id") as err:
        read_samples(mini, samples="C")
    assert "C3.tsv.gz" in _one_line(err)


def test_ragged_row(mini):
    path = mini / "ST-cnts" / "C3.tsv.gz"
    lines = gzip.open(path, "rt").read().splitlines()
    lines[3] = lines[3] + "\t5"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(CountsError, match="line 4") as err:
        read_samples(mini, samples="C")
    assert "C3.tsv.gz" in _one_line(err)


def test_counts_without_spot_file(mini):
    (mini / "ST-spotfiles" / "C3_selection.tsv").unlink()
    with pytest.raises(CountsError, match="no spot file") as err:
        read_samples(mini, samples="C")
    assert "C3.tsv.gz" in _one_line(err)


def test_spots_outside_image(mini):
    path = mini / "ST-spotfiles" / "C2_selection.tsv"
    sel = pd.read_csv(path, sep="\t")
    sel.loc[0, "pixel_x"] = 1e6
    sel.to_csv(path, sep="\t", index=False)
    with pytest.raises(ImageError, match="outside"):
        read_samples(mini, samples="C")


def test_mini_one_section_sample(mini):
    for sid in ("C1", "C3"):
        (mini / "ST-cnts" / f"{sid}.tsv.gz").unlink()
        (mini / "ST-spotfiles" / f"{sid}_selection.tsv").unlink()
    shutil.rmtree(mini / "ST-imgs" / "C" / "C3")
    with pytest.raises(InputError, match="one section") as err:
        read_samples(mini)
    _one_line(err)
