"""Generic manifest reader (TOML and CSV) on small fixtures written by the tests."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asign.errors import CountsError, ImageError, InputError, ValidationErrors
from asign.ingest.readers import detect_format, list_samples, read_samples

GENES = ["G1", "G2", "G3"]


def _layer(root: Path, z: int, *, image=True, counts=True, aligned=False, n=6) -> dict:
    """Write one section's files; return its manifest entry."""
    rng = np.random.default_rng(z)
    ids = [f"s{i}" for i in range(n)]
    spots = pd.DataFrame({"spot_id": ids, "px": 10.0 + 8 * np.arange(n), "py": 20.0})
    if aligned:
        spots["x_um"] = 100.0 * np.arange(n) + z
        spots["y_um"] = 50.0
    (root / "spots").mkdir(exist_ok=True)
    spots.to_csv(root / "spots" / f"L{z}.csv", index=False)
    entry = {"sample": "S", "section": f"S_L{z}", "z": z, "spots": f"spots/L{z}.csv"}
    if counts:
        (root / "counts").mkdir(exist_ok=True)
        df = pd.DataFrame(rng.integers(0, 9, (n, len(GENES))), columns=GENES, index=ids)
        df.index.name = "spot_id"
        df.to_csv(root / "counts" / f"L{z}.csv")
        entry["counts"] = f"counts/L{z}.csv"
    if image:
        (root / "img").mkdir(exist_ok=True)
        Image.new("RGB", (80, 60), (230, 180, 200)).save(root / "img" / f"L{z}.png")
        entry["image"] = f"img/L{z}.png"
        entry["um_per_px"] = 0.5
    return entry


def _toml(root: Path, entries: list[dict], defaults: dict | None = None) -> Path:
    def val(v):
        return f'"{v}"' if isinstance(v, str) else repr(v)

    lines = []
    if defaults is not None:
        lines += ["[defaults]", *(f"{k} = {val(v)}" for k, v in defaults.items()), ""]
    for e in entries:
        lines += ["[[sections]]", *(f"{k} = {val(v)}" for k, v in e.items()), ""]
    path = root / "manifest.toml"
    path.write_text("\n".join(lines))
    return path


GEOM = {"spot_diameter_um": 55.0, "spot_pitch_um": 100.0}


def test_toml_manifest(tmp_path):
    entries = [_layer(tmp_path, z) for z in (2, 1, 3)]
    _toml(tmp_path, entries, GEOM)
    assert detect_format(tmp_path) == "manifest"
    assert detect_format(tmp_path / "manifest.toml") == "manifest"
    assert list_samples(tmp_path) == ["S"]
    (s,) = read_samples(tmp_path)
    assert [x.section_id for x in s.sections] == ["S_L1", "S_L2", "S_L3"]
    sec = s.section("S_L2")
    assert sec.image_path == (tmp_path / "img" / "L2.png").resolve()
    assert sec.um_per_px == 0.5 and sec.spot_diameter_um == 55.0 and sec.spot_pitch_um == 100.0
    raw = pd.read_csv(tmp_path / "counts" / "L2.csv", index_col=0)
    np.testing.assert_array_equal(sec.counts.toarray(), raw.to_numpy())
    assert sec.genes == tuple(GENES)
    assert list(sec.spots["spot_id"]) == [f"S_L2/s{i}" for i in range(6)]
    assert sec.spots["px"].tolist() == [10.0 + 8 * i for i in range(6)]
    assert not s.warnings


def test_csv_manifest_matches_toml(tmp_path):
    entries = [{**_layer(tmp_path, z), **GEOM} for z in (1, 2)]
    pd.DataFrame(entries).to_csv(tmp_path / "manifest.csv", index=False)
    assert detect_format(tmp_path / "manifest.csv") == "manifest"
    (a,) = read_samples(tmp_path / "manifest.csv")
    _toml(tmp_path, entries)
    (b,) = read_samples(tmp_path / "manifest.toml")
    for x, y in zip(a.sections, b.sections, strict=True):
        assert x.section_id == y.section_id and x.z == y.z and x.um_per_px == y.um_per_px
        pd.testing.assert_frame_equal(x.spots, y.spots)
        assert (x.counts != y.counts).nnz == 0


def test_counts_csv_is_not_a_manifest(tmp_path):
    _layer(tmp_path, 1)
    with pytest.raises(InputError, match="not a known sample layout"):
        detect_format(tmp_path / "counts" / "L1.csv")


def test_precomputed_coordinates_without_images(tmp_path, caplog):
    entries = [_layer(tmp_path, z, image=False, aligned=True) for z in (1, 2)]
    _toml(tmp_path, entries, GEOM)
    with caplog.at_level(logging.WARNING):
        (s,) = read_samples(tmp_path)
    for sec in s.sections:
        assert sec.has_aligned_coords and not sec.has_image and sec.um_per_px is None
    assert s.section("S_L2").spots["x_um"].tolist()[:2] == [2.0, 102.0]
    assert len(s.warnings) == 2 and all("precomputed aligned" in w for w in s.warnings)
    assert len(caplog.records) == 2


def test_precomputed_coordinates_with_images(tmp_path):
    entries = [_layer(tmp_path, z, aligned=True) for z in (1, 2)]
    _toml(tmp_path, entries, GEOM)
    (s,) = read_samples(tmp_path)
    assert all(x.has_aligned_coords and x.has_image for x in s.sections) and not s.warnings


def test_aligned_coordinates_all_or_none(tmp_path):
    entries = [_layer(tmp_path, 1, aligned=True), _layer(tmp_path, 2)]
    _toml(tmp_path, entries, GEOM)
    with pytest.raises(InputError, match="S_L1 carry x_um, y_um but S_L2 do not"):
        read_samples(tmp_path)


def test_labels_only_and_image_only_sections(tmp_path):
    labels = _layer(tmp_path, 1, image=False)
    known = _layer(tmp_path, 2)
    image_only = {
        "sample": "S",
        "section": "S_L3",
        "z": 3,
        "image": _layer(tmp_path, 3, counts=False)["image"],
        "um_per_px": 0.5,
    }
    known.update(GEOM)
    _toml(tmp_path, [labels, known, image_only])
    (s,) = read_samples(tmp_path)
    l1, l3 = s.section("S_L1"), s.section("S_L3")
    assert l1.has_counts and not l1.has_image
    assert any("S_L1" in w and "labels only" in w for w in s.warnings)
    assert l3.has_image and not l3.has_counts and len(l3.spots) == 0
    assert l3.spot_diameter_um == 55.0 and l3.spot_pitch_um == 100.0  # inherited


def test_parquet_counts_and_r_style_header(tmp_path):
    e1, e2 = _layer(tmp_path, 1), _layer(tmp_path, 2)
    df = pd.read_csv(tmp_path / "counts" / "L1.csv")
    df.to_parquet(tmp_path / "counts" / "L1.parquet", index=False)
    e1["counts"] = "counts/L1.parquet"
    # R's write.csv leaves out the header cell of the row names.
    text = (tmp_path / "counts" / "L2.csv").read_text().split("\n", 1)
    (tmp_path / "counts" / "L2.csv").write_text(",".join(GENES) + "\n" + text[1])
    _toml(tmp_path, [e1, e2], GEOM)
    (s,) = read_samples(tmp_path)
    assert s.section("S_L1").genes == tuple(GENES) == s.section("S_L2").genes
    assert s.section("S_L1").counts.shape == (6, 3)


def test_unknown_spot_in_counts(tmp_path):
    entries = [_layer(tmp_path, z) for z in (1, 2)]
    with open(tmp_path / "counts" / "L2.csv", "a") as fh:
        fh.write("ghost,1,2,3\n")
    _toml(tmp_path, entries, GEOM)
    with pytest.raises(CountsError, match="ghost") as err:
        read_samples(tmp_path)
    msg = str(err.value)
    assert "counts/L2.csv" in msg and "spots/L2.csv" in msg and "\n" not in msg


def test_missing_image(tmp_path):
    entries = [_layer(tmp_path, z) for z in (1, 2)]
    (tmp_path / "img" / "L2.png").unlink()
    _toml(tmp_path, entries, GEOM)
    with pytest.raises(ImageError, match="not found") as err:
        read_samples(tmp_path)
    assert "L2.png" in str(err.value)


def test_schema_problems_reported_together(tmp_path):
    e1 = _layer(tmp_path, 1)
    e2 = _layer(tmp_path, 2)
    del e1["um_per_px"]
    e2["z"] = "two"
    e2["colour"] = "pink"
    _toml(tmp_path, [e1, e2], GEOM)
    with pytest.raises(ValidationErrors) as err:
        read_samples(tmp_path)
    msg = str(err.value)
    assert "3 problem" in msg and "um_per_px" in msg and "'two'" in msg and "colour" in msg


def test_missing_geometry_and_duplicate_z(tmp_path):
    entries = [_layer(tmp_path, z) for z in (1, 2)]
    _toml(tmp_path, entries)
    with pytest.raises(InputError, match="spot_diameter_um"):
        read_samples(tmp_path)
    entries[1]["z"] = 1
    _toml(tmp_path, entries, GEOM)
    with pytest.raises(InputError, match="share z=1"):
        read_samples(tmp_path)


def test_one_section_sample_and_sample_selection(tmp_path):
    e1, e2 = _layer(tmp_path, 1), _layer(tmp_path, 2)
    e2["sample"] = "T"
    e2["section"] = "T_L2"
    _toml(tmp_path, [e1, e2], GEOM)
    assert list_samples(tmp_path) == ["S", "T"]
    with pytest.raises(InputError, match="sample S, T has one section"):
        read_samples(tmp_path)
    (t,) = read_samples(tmp_path, samples="T*", allow_single=True)
    assert t.sample_id == "T"


def test_counts_read_in_blocks_equal_one_pass(tmp_path, monkeypatch):
    from asign.ingest.readers import tables

    entries = [_layer(tmp_path, z, n=7) for z in (1, 2)]
    _toml(tmp_path, entries, GEOM)
    (whole,) = read_samples(tmp_path)
    monkeypatch.setattr(tables, "_CHUNK_VALUES", 7)  # two rows of three genes per block
    (blocks,) = read_samples(tmp_path)
    for x, y in zip(whole.sections, blocks.sections, strict=True):
        assert (x.counts != y.counts).nnz == 0 and x.counts.shape == (7, 3)
        np.testing.assert_array_equal(x.total_counts, y.total_counts)
