"""Each platform reader end to end on its vendor-layout fixture (real her2st pixels and
counts, written by the test): ingest → train idw → export, and the SpatialData round trip
(export --spatialdata, then ingest of that zarr gives the same spots, labels, geometry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from platform_fixtures import make_visium_hd_sample, make_xenium_sample

from asign.commands.export import export_command
from asign.ingest import run as ingest_run
from asign.ingest.config import IngestConfig
from asign.store import open_store
from asign.train import run as train_run
from asign.train.config import TrainConfig

FAST = dict(weights="random", encoder="resnet18-l3-64", threads=1, batch_size=64)


def _table(store: Path, sql: str) -> pd.DataFrame:
    return open_store(store).query(sql).to_pandas()


def _ingest_train_export(src: Path, base: Path, **kw) -> tuple[Path, Path]:
    store = base / "store"
    ingest_run(IngestConfig(sources=(src,), store=store, **FAST, **kw))
    assert train_run(TrainConfig(store=store, model="idw", run="r")).status == "done"
    out = export_command(store, "r", h5ad=base / "r.h5ad", spatialdata=base / "r.zarr")
    assert Path(out["h5ad"]).is_file()
    return store, base / "r.zarr"


def _labels(store: Path) -> pd.DataFrame:
    lab = _table(store, "select spot_id, counts from labels")
    genes = _table(store, "select gene from genes order by rank").gene.tolist()
    wide = pd.DataFrame(np.stack(lab.counts.to_numpy()), index=lab.spot_id, columns=genes)
    return wide.sort_index().sort_index(axis=1)


@pytest.fixture(scope="module")
def hd_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("visium_hd_e2e")
    src = make_visium_hd_sample(base / "HD")
    store, zarr = _ingest_train_export(src, base)
    return src, store, zarr


def test_visium_hd_end_to_end(hd_run):
    _, store, _ = hd_run
    secs = _table(store, "select * from sections order by z")
    assert secs.format.tolist() == ["visium_hd", "visium_hd"]
    assert (secs.spot_shape == "square").all() and (secs.lattice == "square").all()
    assert np.allclose(secs.spot_diameter_um, 16) and np.allclose(secs.spot_pitch_um, 16)
    assert np.allclose(secs.um_per_px, 2.0, rtol=1e-6)  # the fit sees through the 1.5° tilt
    cross = _table(store, "select iou, distance_um from edges where kind = 'cross_layer'")
    assert len(cross) > 0 and cross.iou.between(0, 1).all()
    m = _table(store, "select metric, value from metrics where metric = 'pcc_gene'")
    assert len(m) == 1 and m.value.iloc[0] > 0.1  # structured expression: idw finds it


def test_spatialdata_round_trip_keeps_spots_labels_geometry(hd_run, tmp_path):
    _, store, zarr = hd_run
    again = tmp_path / "again"
    ingest_run(IngestConfig(sources=(zarr,), store=again, **FAST))
    cols = "section_id, z, spot_diameter_um, spot_pitch_um, spot_shape, lattice, section_um"
    before = _table(store, f"select {cols} from sections order by z")
    after = _table(again, f"select {cols} from sections order by z")
    pd.testing.assert_frame_equal(before, after)
    assert (_table(again, "select distinct format from sections").format == "zarr").all()
    sp_cols = "spot_id, z, x_um, y_um"
    a = _table(store, f"select {sp_cols} from spots where not is_virtual order by spot_id")
    b = _table(again, f"select {sp_cols} from spots order by spot_id")
    assert a.spot_id.tolist() == b.spot_id.tolist()
    np.testing.assert_allclose(a[["x_um", "y_um"]], b[["x_um", "y_um"]], atol=1e-6)
    pd.testing.assert_frame_equal(_labels(store), _labels(again))


@pytest.fixture(scope="module")
def xenium_src(tmp_path_factory) -> Path:
    return make_xenium_sample(tmp_path_factory.mktemp("xenium_e2e") / "XE")


def test_xenium_end_to_end(xenium_src, tmp_path):
    store, zarr = _ingest_train_export(xenium_src, tmp_path)
    secs = _table(store, "select * from sections order by z")
    assert secs.format.tolist() == ["xenium", "xenium"]
    assert (secs.spot_shape == "square").all() and np.allclose(secs.spot_diameter_um, 55)
    assert np.allclose(secs.um_per_px, 0.85 * 0.5)  # morphology px size × alignment scale
    assert secs.image_path.str.endswith("_he_image.ome.tif").all()
    assert len(_table(store, "select * from metrics")) > 0 and zarr.is_dir()
