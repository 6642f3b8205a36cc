"""asign export: the imputed volume as AnnData, read back with anndata; scanpy/squidpy
conventions checked by structure (neither is a dependency)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import DOWNSAMPLE, NO_THUMB, build_report_store

from asign.errors import InputError
from asign.report.export import export_h5ad
from asign.store import open_store


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("export")
    root = build_report_store(base)
    return root, export_h5ad(root, "base", base / "out" / "base.h5ad")


def test_h5ad_reads_back_with_the_predictions_and_labels(exported):
    import anndata as ad

    root, path = exported
    a = ad.read_h5ad(path)
    store = open_store(root)
    genes = store.read("genes").to_pandas().sort_values("rank").gene.tolist()
    assert list(a.var_names) == genes
    assert a.n_obs == 5 * 30  # S1: 4 labelled layers + the image-only layer, 30 spots each
    assert a.X.dtype == np.float32
    assert a.obs.role.value_counts().to_dict() == {"hidden": 120, "known": 30}
    assert set(a.obs.section.cat.categories) == {f"S1_L{z}" for z in range(1, 6)}

    run_id = a.uns["asign"]["run_id"]
    assert a.uns["asign"]["model"] == "cli" and a.uns["asign"]["setting"] == "within_sample"
    assert json.loads(a.uns["asign"]["config"])["model"] == "cli"
    pred = store.read("predictions", key=run_id).to_pandas()
    wide = pred.pivot(index="spot_id", columns="gene", values="value")[genes]
    hidden = a.obs_names[a.obs.role == "hidden"]
    np.testing.assert_array_equal(a[hidden].X, wide.loc[hidden].to_numpy(dtype=np.float32))

    labels = store.read("labels", key="S1").to_pandas().set_index("spot_id")
    measured = a.obs_names[a.obs.has_measured]
    truth = np.stack(labels.loc[measured].value.to_numpy()).astype(np.float32)
    np.testing.assert_array_equal(a[measured].layers["measured"], truth)
    known = a.obs_names[a.obs.role == "known"]
    np.testing.assert_array_equal(a[known].X, a[known].layers["measured"])  # X = measured there
    for name in ("lower", "upper"):  # the interval, on hidden rows only
        wide_b = pred.pivot(index="spot_id", columns="gene", values=name)[genes]
        np.testing.assert_array_equal(a[hidden].layers[name], wide_b.loc[hidden].to_numpy(dtype=np.float32))
        assert np.isnan(a[known].layers[name]).all()
    assert (a[hidden].layers["lower"] <= a[hidden].X).all() and (a[hidden].X <= a[hidden].layers["upper"]).all()
    virtual = a.obs.section == "S1_L5"
    assert a.obs.virtual[virtual].all() and not a.obs.has_measured[virtual].any()
    assert np.isnan(a.layers["measured"][virtual.to_numpy()]).all()

    metrics = a.uns["asign_metrics"]
    assert isinstance(metrics, pd.DataFrame)
    stored = store.read("metrics", key=run_id).to_pandas()
    mine = metrics.set_index(["section_id", "metric"]).value
    theirs = stored.set_index(["section_id", "metric"]).value.loc[mine.index]
    np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy())


def test_coordinates_and_scanpy_spatial_layout(exported):
    import anndata as ad

    root, path = exported
    a = ad.read_h5ad(path)
    spots = open_store(root).read("spots", key="S1").to_pandas().set_index("spot_id")
    spots = spots.loc[a.obs_names]
    np.testing.assert_allclose(a.obsm["spatial"], spots[["px", "py"]].to_numpy())
    # z in µm: the section's z × the spacing recorded at ingest (toy store: the default)
    from asign.store.sections import spot_z_um

    sections = open_store(root).read("sections").to_pandas()
    z_um = spot_z_um(sections, spots.section_id)
    np.testing.assert_allclose(z_um, spots.z.to_numpy() * 10.0)
    np.testing.assert_allclose(a.obsm["spatial_3d"],
                               np.column_stack([spots.x_um, spots.y_um, z_um]))
    np.testing.assert_array_equal(a.obs.z.to_numpy(), spots.z.to_numpy())

    # sc.pl.spatial(adata[adata.obs.section == S], library_id=S) reads exactly these keys
    spatial = a.uns["spatial"]
    assert set(spatial) == {f"S1_L{z}" for z in range(1, 6)} - {NO_THUMB}
    for sec, lib in spatial.items():
        img = lib["images"]["hires"]
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        sf = lib["scalefactors"]
        assert sf["tissue_hires_scalef"] == pytest.approx(1 / DOWNSAMPLE)
        assert sf["spot_diameter_fullres"] == pytest.approx(100.0)  # 100 µm at 1 µm/px
        # spots scaled by tissue_hires_scalef land on the thumbnail
        xy = a.obsm["spatial"][(a.obs.section == sec).to_numpy()] * sf["tissue_hires_scalef"]
        inside = ((xy >= -5) & (xy <= np.array(img.shape[1::-1]) + 5)).all(axis=1)
        assert inside.mean() > 0.9


def test_export_rejects_a_wrong_suffix_and_unknown_runs(exported, tmp_path):
    root, _ = exported
    with pytest.raises(InputError, match=r"must end in \.h5ad"):
        export_h5ad(root, "base", tmp_path / "out.csv")
    with pytest.raises(InputError, match="no run named"):
        export_h5ad(root, "nope", tmp_path / "out.h5ad")
    out = export_h5ad(root, "full", tmp_path / "full.h5ad", model="idw")
    import anndata as ad

    assert ad.read_h5ad(out).uns["asign"]["model"] == "idw"
