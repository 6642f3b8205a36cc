"""asign export: the imputed volume as AnnData, read back with anndata; scanpy/squidpy
conventions checked by structure on the toy store, and scanpy/squidpy themselves run on an
export of the cut-down real her2st store (patient C, C2–C4)."""

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
    # the model's own scale is layers['asign']; X is its log1p(CP10k) (checked below)
    np.testing.assert_array_equal(a[hidden].layers["asign"],
                                  wide.loc[hidden].to_numpy(dtype=np.float32))

    labels = store.read("labels", key="S1").to_pandas().set_index("spot_id")
    measured = a.obs_names[a.obs.has_measured]
    truth = np.stack(labels.loc[measured].value.to_numpy()).astype(np.float32)
    np.testing.assert_array_equal(a[measured].layers["measured"], truth)
    known = a.obs_names[a.obs.role == "known"]
    np.testing.assert_array_equal(a[known].layers["asign"],
                                  a[known].layers["measured"])  # measured there
    for name in ("lower", "upper"):  # the interval, on hidden rows only
        wide_b = pred.pivot(index="spot_id", columns="gene", values=name)[genes]
        np.testing.assert_array_equal(a[hidden].layers[name],
                                      wide_b.loc[hidden].to_numpy(dtype=np.float32))
        assert np.isnan(a[known].layers[name]).all()
    layers = a[hidden].layers
    assert (layers["lower"] <= layers["asign"]).all() and (layers["asign"] <= layers["upper"]).all()
    virtual = a.obs.section == "S1_L5"
    assert a.obs.virtual[virtual].all() and not a.obs.has_measured[virtual].any()
    assert np.isnan(a.layers["measured"][virtual.to_numpy()]).all()
    counts = np.stack(labels.loc[measured].counts.to_numpy()).astype(np.float32)
    np.testing.assert_array_equal(a[measured].layers["counts"], counts)
    assert (a.layers["counts"][virtual.to_numpy()] == 0).all()  # 0, not NaN: see the docstring

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


def test_x_is_log1p_cp10k_of_the_counts_proportions(exported):
    """On the known layer the store's log-ratios come from counts, so X there must equal
    log1p(1e4 · (c+1)/Σ(c+1)) computed from layers['counts'] directly."""
    import anndata as ad

    a = ad.read_h5ad(exported[1])
    assert np.isfinite(a.X).all() and (a.X >= 0).all()
    assert a.uns["asign"]["normalisation"] == "log_ratio"
    assert a.uns["asign"]["x_scale"] == "log1p_cp10k"
    assert "softmax" not in a.uns["asign"]["x_formula"]
    assert a.uns["asign"]["weights_random"] is True or a.uns["asign"]["weights_random"] == 1
    m = a[(a.obs.role == "known").to_numpy()]
    assert m.obs.has_measured.all()
    c = m.layers["counts"].astype(np.float64) + 1
    want = np.log1p(1e4 * c / c.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(m.X, want, rtol=1e-5, atol=1e-5)
    # and the per-spot expression totals back out to 10⁴ on the hidden (predicted) spots
    np.testing.assert_allclose(np.expm1(a.X.astype(np.float64)).sum(axis=1), 1e4, rtol=1e-4)


def test_scale_conversion_of_both_normalisations():
    from asign.report.scale import to_log1p_cp10k

    counts = np.array([[0, 3, 7, 10], [5, 0, 0, 15]], dtype=np.float64)
    ratio = np.log((counts + 1) / (counts + 1).sum(axis=1, keepdims=True))
    shifted = ratio + 0.7  # a prediction need not sum to one: renormalised
    want = np.log1p(1e4 * (counts + 1) / (counts + 1).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(to_log1p_cp10k(shifted, "log_ratio"), want, rtol=1e-6)
    total = np.array([[100.0], [400.0]])  # whole-transcriptome library sizes
    cp10k = np.log1p(1e4 * counts / total)
    np.testing.assert_allclose(to_log1p_cp10k(cp10k, "log1p_cp10k"), cp10k, rtol=1e-6)
    assert (to_log1p_cp10k(cp10k - 0.5, "log1p_cp10k") >= 0).all()
    with pytest.raises(ValueError, match="unknown normalisation"):
        to_log1p_cp10k(cp10k, "zscore")


@pytest.fixture(scope="module")
def her2st_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cut-down real patient C store (C2–C4, 30 genes, random weights), an idw run,
    exported."""
    import shutil

    from her2st_small import small_her2st_store

    from asign.train import run
    from asign.train.config import TrainConfig

    base = tmp_path_factory.mktemp("her2st_export")
    root = Path(shutil.copytree(small_her2st_store(tmp_path_factory)[1], base / "store"))
    assert run(TrainConfig(store=root, model="idw", run="c")).status == "done"
    return root, export_h5ad(root, "c", base / "c.h5ad")


def test_scanpy_and_squidpy_run_on_the_her2st_export(her2st_export):
    import anndata as ad
    import scanpy as sc
    import squidpy as sq

    a = ad.read_h5ad(her2st_export[1])
    assert a.n_obs > 500 and a.n_vars == 30 and np.isfinite(a.X).all()
    assert list(a.obs.section.cat.categories) == ["C2", "C3", "C4"]
    assert a.uns["asign"]["weights"] == "random"
    sc.pp.highly_variable_genes(a, n_top_genes=10)
    assert a.var.highly_variable.sum() == 10 and np.isfinite(a.var.dispersions_norm).any()
    sc.tl.rank_genes_groups(a, "section", method="wilcoxon")
    lfc = pd.DataFrame(a.uns["rank_genes_groups"]["logfoldchanges"])
    # fold changes on log1p(CP10k) have a real spread (on the old log-ratio X they were ~0)
    assert np.nanmax(np.abs(lfc.to_numpy(dtype=float))) > 0.1
    sq.gr.spatial_neighbors(a, library_key="section", coord_type="generic", n_neighs=6)
    conn = a.obsp["spatial_connectivities"]
    assert conn.shape == (a.n_obs, a.n_obs) and conn.nnz >= 6 * a.n_obs * 0.9
    # neighbours never cross sections (one graph per library)
    i, j = conn.nonzero()
    sec = a.obs.section.to_numpy()
    assert (sec[i] == sec[j]).all()
    # counts: raw integers on measured spots; scanpy's own normalisation of them is finite
    m = a[a.obs.has_measured.to_numpy()].copy()
    assert np.array_equal(m.layers["counts"], np.round(m.layers["counts"]))
    m.X = m.layers["counts"].copy()
    sc.pp.normalize_total(m, target_sum=1e4)
    sc.pp.log1p(m)
    assert np.isfinite(m.X).all() and m.X.max() > 1


def test_spatialdata_and_ome_tiff_round_trip(her2st_export, tmp_path):
    import spatialdata as sd
    import tifffile
    from spatialdata.transformations import get_transformation

    from asign.report.sdata import export_stack

    root, _ = her2st_export
    out = export_stack(root, "c", spatialdata=tmp_path / "c.zarr",
                       ome_tiff=tmp_path / "c.ome.tif", z_spacing_um=40.0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    shape = out["stacks"]["C"]["shape"]  # (z, y, x, rgb)
    assert shape[0] == 3 and shape[3] == 3 and out["stacks"]["C"]["um_per_px"] < 12

    s = sd.read_zarr(tmp_path / "c.zarr")
    assert set(s.images) == {"he_C"}
    assert set(s.shapes) == {"spots_C2", "spots_C3", "spots_C4"}
    assert set(s.tables) == {"table"}
    assert s.coordinate_systems == ["aligned_C"]
    img = s.images["he_C"]["scale0"]["image"]
    assert img.dims == ("c", "z", "y", "x") and img.shape == (3, *shape[:3])
    t = get_transformation(s.images["he_C"], "aligned_C")
    assert t.transformations[0].scale[1] == pytest.approx(40.0)  # z: the section spacing
    z = {n: get_transformation(s.shapes[n], "aligned_C").matrix[2, 2] for n in s.shapes}
    assert z == {"spots_C2": 0.0, "spots_C3": 40.0, "spots_C4": 80.0}
    table = s.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == sorted(s.shapes)
    assert table.uns["asign"]["z_spacing_um"] == 40.0
    for name, shapes in s.shapes.items():
        rows = table.obs[table.obs.region == name]
        assert len(rows) == len(shapes) and sorted(rows.instance_id) == list(shapes.index)
        assert shapes.radius.iloc[0] == pytest.approx(50.0)  # 100 µm spots

    # the spots sit on tissue in the aligned stack: darker there than the canvas overall
    res, scale = out["stacks"]["C"]["um_per_px"], t.transformations[1].translation
    stack = np.moveaxis(img.values, 0, -1)  # (z, y, x, rgb)
    for k, name in enumerate(("spots_C2", "spots_C3", "spots_C4")):
        g = s.shapes[name].geometry
        col = np.round((g.x.to_numpy() - scale[3]) / res - 0.5).astype(int)
        row = np.round((g.y.to_numpy() - scale[2]) / res - 0.5).astype(int)
        under = stack[k, row, col].mean()
        assert under < stack[k].mean() - 20, (name, under, stack[k].mean())

    with tifffile.TiffFile(out["ome_tiff"][0]) as tif:
        series = tif.series[0]
        assert series.axes == "ZYXS" and series.shape == tuple(shape)
        assert 'PhysicalSizeZ="40.0"' in tif.ome_metadata
        np.testing.assert_array_equal(series.asarray(), stack)


def test_reingest_backfills_fine_thumbnails_of_an_older_store(tmp_path_factory, tmp_path):
    """A store aligned before fine thumbnails existed gets them from a plain re-run of
    ingest, with every step still skipped (the alignment is not redone)."""
    import json
    import shutil

    from her2st_small import SMALL_INGEST, small_her2st_store

    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig

    src, master = small_her2st_store(tmp_path_factory)
    root = Path(shutil.copytree(master, tmp_path / "store"))
    store = open_store(root)
    fine = sorted((root / "qc" / "thumbnails").glob("*_fine.png"))
    assert [p.name for p in fine] == ["C2_fine.png", "C3_fine.png", "C4_fine.png"]
    for p in fine:
        p.unlink()
    manifest = store.manifest()
    before = manifest["steps"]["C"]["align"].pop("fine_thumb_downsample")
    store.save_manifest(manifest)

    summary = ingest_run(IngestConfig(sources=(src,), store=root, **SMALL_INGEST))
    assert summary["ran"] == [] and "C:align" in summary["skipped"]
    after = json.loads((root / "manifest.json").read_text())["steps"]["C"]["align"]
    assert after["fine_thumb_downsample"] == pytest.approx(before)
    assert all(p.exists() for p in fine)
    um = store.read("sections").to_pandas().set_index("section_id").um_per_px
    assert all(before[s] * um[s] <= 4.05 for s in before)  # ≤ 4 µm per thumbnail pixel


def test_one_export_call_writes_both_formats_from_shared_arrays(exported, tmp_path):
    """h5ad and SpatialData asked at once share one loaded run and one AnnData's arrays
    (no copy per format): neither format may change what the other writes."""
    import anndata as ad
    import spatialdata as sd

    from asign.report.formats import export_run

    root, alone = exported
    out = export_run(root, "base", {"h5ad": tmp_path / "both.h5ad",
                                    "spatialdata": tmp_path / "both.zarr"})
    a, b = ad.read_h5ad(alone), ad.read_h5ad(out["h5ad"])
    table = sd.read_zarr(out["spatialdata"]).tables["table"]
    assert "spatial" in b.uns and "spatial" not in table.uns
    assert "region" not in b.obs and "region" in table.obs
    for got in (b, table):
        np.testing.assert_array_equal(got.X, a.X)
        for name in a.layers:
            np.testing.assert_array_equal(got.layers[name], a.layers[name])
