"""Synthetic demo sample: deterministic, read back through the manifest reader, and built so
that image content predicts expression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asign.commands.synthetic import make_demo_sample
from asign.ingest.lattice import apply_transform
from asign.ingest.readers import detect_format, read_samples


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_sample(tmp_path_factory.mktemp("demo"))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic_from_seed(demo, tmp_path):
    again = make_demo_sample(tmp_path / "again")
    assert _files(again) == _files(demo)
    other = make_demo_sample(tmp_path / "other", seed=1)
    assert _files(other)["images/L1.jpg"] != _files(demo)["images/L1.jpg"]


def test_round_trip_through_manifest_reader(demo):
    assert detect_format(demo) == "manifest"
    (s,) = read_samples(demo)
    assert s.sample_id == "demo" and s.format == "manifest" and not s.warnings
    assert [x.z for x in s.sections] == [1, 2, 3, 4]
    for sec in s.sections:
        assert sec.has_image and sec.has_counts and not sec.has_aligned_coords
        assert sec.um_per_px == 2.0 and sec.spot_diameter_um == 55.0 and sec.spot_pitch_um == 100.0
        assert 40 <= len(sec.spots) <= 144 and sec.counts.shape == (len(sec.spots), 50)
        raw = pd.read_csv(demo / "counts" / f"L{sec.z}.csv", index_col=0)
        np.testing.assert_array_equal(sec.counts.toarray(), raw.to_numpy())
        assert sec.spots["spot_id"].str.startswith(f"demo_L{sec.z}/").all()


def test_truth_transforms_match_spots(demo):
    truth = json.loads((demo / "truth.json").read_text())
    spots_truth = pd.read_csv(demo / "truth_spots.csv").set_index("spot_id")
    (s,) = read_samples(demo)
    rotations = []
    for layer, sec in zip(truth["layers"], s.sections, strict=True):
        xy = apply_transform(
            np.array(layer["image_to_aligned"]), sec.spots[["px", "py"]].to_numpy()
        )
        want = spots_truth.loc[sec.spots["spot_id"], ["x_um", "y_um"]].to_numpy()
        np.testing.assert_allclose(xy, want, atol=0.01)
        rotations.append(layer["rotation_deg"])
    assert np.ptp(rotations) > 2.0  # layers differ, so alignment has work to do


def test_image_predicts_expression(demo):
    """Nuclear (dark) fraction around a spot tracks cellularity, which drives the genes."""
    truth = json.loads((demo / "truth.json").read_text())
    gene = truth["genes"][int(np.argmax(np.abs(np.array(truth["gene_loadings"])[:, 0])))]
    (s,) = read_samples(demo)
    darkness, expr = [], []
    for sec in s.sections:
        img = np.asarray(Image.open(sec.image_path).convert("L"), dtype=float)
        for px, py in sec.spots[["px", "py"]].to_numpy().round().astype(int):
            patch = img[py - 12 : py + 13, px - 12 : px + 13]
            darkness.append(float((patch < 120).mean()))
        col = sec.genes.index(gene)
        total = np.maximum(sec.total_counts, 1)
        expr.extend(np.log1p(1e4 * sec.counts[:, col].toarray().ravel() / total))
    r = np.corrcoef(darkness, expr)[0, 1]
    assert abs(r) > 0.5, r


def test_expression_varies_smoothly_across_layers(demo):
    (s,) = read_samples(demo)
    means = [np.log1p(np.asarray(sec.counts.mean(axis=0)).ravel()) for sec in s.sections]
    for a, b in zip(means, means[1:], strict=False):
        assert np.corrcoef(a, b)[0, 1] > 0.9


def test_rejects_grid_larger_than_image(tmp_path):
    with pytest.raises(ValueError):
        make_demo_sample(tmp_path, grid=20, image_px=256)
