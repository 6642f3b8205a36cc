"""Sections placed by given coordinates (no image), as a PASTE user hands them over:
patient C's counts with the authors' aligned coordinates, ingested without any weights,
and the models that need no image run on it."""

from __future__ import annotations

import json

import pytest
from her2st_coords import GENES, inline_idw_pcc_gene, write_coords_manifest
from typer.testing import CliRunner

from asign.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def coords_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("coords")
    manifest = write_coords_manifest(base / "src", section_um=48)
    store = base / "store"
    # default --weights imagenet: nothing may ask for them, since no section has an image
    res = runner.invoke(app, ["ingest", str(manifest), "--store", str(store),
                              "--genes", ",".join(GENES), "--json"])
    assert res.exit_code == 0, res.output
    return store, json.loads(res.stdout)


def _train(store, model: str, *extra: str):
    return runner.invoke(app, ["train", "--store", str(store), "--model", model, "--run", "t",
                               "--json", *extra])


def test_ingest_places_every_spot_without_weights(coords_store):
    store, summary = coords_store
    info = summary["samples"]["C"]
    assert info["align"]["method"] == "precomputed"
    # the expression referee judges the given alignment: adjacent sections predict each other
    referee = info["align"]["referee"]
    assert set(referee) == {"C1-C2", "C2-C3", "C3-C4", "C4-C5", "C5-C6"}
    assert all(0.2 < v < 1 for v in referee.values())
    assert info["embed"]["n_vectors"] == 0 and info["embed"]["encoder"] is None
    from asign.store import open_store

    s = open_store(store)
    n_spots = s.query("select count(*) n from spots").column("n")[0].as_py()
    assert info["graph"]["n_nodes"] == n_spots > 1000  # every placed spot, C1 included
    assert info["graph"]["n_cross"] == info["graph"]["n_cross_iou_only"] > 0
    edges = s.query("select count(*) n, sum(isnan(cosine)::int) c, min(weight) w, "
                    "sum(iou = weight) e from edges where kind = 'cross_layer'").to_pylist()[0]
    # IoU alone, cosine NaN
    assert edges["c"] == edges["n"] and edges["w"] > 0 and edges["e"] == edges["n"]
    secs = s.query(
        "select section_id, has_coords, section_um, z_um, z from sections order by z").to_pylist()
    assert all(r["has_coords"] and r["section_um"] == 48 and r["z_um"] == 48 * r["z"] for r in secs)


def test_idw_equals_inline_numpy(coords_store):
    store, _ = coords_store
    res = _train(store, "idw")
    assert res.exit_code == 0, res.output
    from asign.store import open_store

    rows = open_store(store).query(
        "select m.section_id, m.value from metrics m join runs r using (run_id) "
        "where r.model = 'idw' and m.metric = 'pcc_gene' order by 1").to_pylist()
    ours = {r["section_id"]: r["value"] for r in rows}
    ref = inline_idw_pcc_gene()
    assert set(ours) == set(ref) == {"C2", "C3", "C4", "C5", "C6"}
    for sec, value in ref.items():
        assert abs(ours[sec] - value) <= 0.005, (sec, ours[sec], value)


@pytest.mark.parametrize("model", ["mean", "cli"])
def test_models_without_images_run(coords_store, model):
    res = _train(coords_store[0], model)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"]["pcc_spot"] > 0.5


@pytest.mark.parametrize("model", ["similarity", "asign2d", "asign3d"])
def test_image_models_refuse_in_one_line(coords_store, model):
    res = _train(coords_store[0], model)
    assert res.exit_code == 1
    err = json.loads(res.stdout)
    assert "C1, C2, C3, C4, C5, C6 have no H&E image" in err["error"]
    assert "mean, idw or cli" in err["fix"]
    assert len(res.stderr.strip().splitlines()) == 1


def test_cross_sample_folds_on_counts_only(tmp_path):
    manifest = write_coords_manifest(tmp_path / "src",
                                     {"C": ("C2", "C3", "C4"), "D": ("C4", "C5", "C6")})
    store = tmp_path / "store"
    res = runner.invoke(app, ["ingest", str(manifest), "--store", str(store),
                              "--genes", ",".join(GENES)])
    assert res.exit_code == 0, res.output
    for model in ("idw", "cli"):
        res = _train(store, model, "--folds", "2")
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["setting"] == "cross_sample" and out["metrics"]["pcc_gene"] > 0


def _demo(tmp_path, **kw):
    from asign.commands.synthetic import make_demo_sample

    return make_demo_sample(tmp_path / "demo", n_layers=4, grid=6, image_px=320, um_per_px=4.0,
                            n_genes=8, **kw)


def test_mixed_sample_imaged_and_counts_only(tmp_path):
    """L1, L2 with images, L3, L4 counts only; every spot carries the true aligned x_um, y_um."""
    import pandas as pd

    src = _demo(tmp_path)
    truth = pd.read_csv(src / "truth_spots.csv")
    text = (src / "manifest.toml").read_text()
    for z in (1, 2, 3, 4):
        spots = pd.read_csv(src / "spots" / f"L{z}.csv", dtype={"spot_id": str})
        t = truth[truth.section == f"demo_L{z}"]
        spots[["x_um", "y_um"]] = t[["x_um", "y_um"]].to_numpy()
        spots.to_csv(src / "spots" / f"L{z}.csv", index=False)
        if z >= 3:
            text = text.replace(f'image = "images/L{z}.jpg"\n', "")
    (src / "manifest.toml").write_text(text)
    store = tmp_path / "store"
    res = runner.invoke(app, ["ingest", str(src), "--store", str(store), "--weights", "random",
                              "--encoder", "resnet18-l3-64", "--json"])
    assert res.exit_code == 0, res.output
    graph = json.loads(res.stdout)["samples"]["demo"]["graph"]
    assert 0 < graph["n_cross_iou_only"] < graph["n_cross"]  # L1–L2 edges keep IoU × cosine
    for model in ("idw", "cli", "mean"):
        assert _train(store, model).exit_code == 0
    res = _train(store, "asign3d")
    assert res.exit_code == 1
    assert "demo_L3, demo_L4 have no H&E image" in json.loads(res.stdout)["error"]


def test_minimal_spot_table_with_image_only_section(tmp_path):
    """``spot_id,px,py`` (no array_x/array_y) next to an image-only section: align must not
    trip over the missing array positions when it adds the virtual lattice."""
    import pandas as pd

    src = _demo(tmp_path)
    for z in (1, 2, 3, 4):
        spots = pd.read_csv(src / "spots" / f"L{z}.csv", dtype={"spot_id": str})
        spots[["spot_id", "px", "py"]].to_csv(src / "spots" / f"L{z}.csv", index=False)
    text = (src / "manifest.toml").read_text().replace(
        'counts = "counts/L4.csv"\nspots = "spots/L4.csv"\n', "")
    (src / "manifest.toml").write_text(text)
    store = tmp_path / "store"
    res = runner.invoke(app, ["ingest", str(src), "--store", str(store),
                              "--steps", "register,align", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["samples"]["demo"]["align"]["n_virtual"] > 0


def test_section_um_option_overrides_and_is_recorded(tmp_path):
    manifest = write_coords_manifest(tmp_path / "src", {"C": ("C2", "C3")}, section_um=48)
    store = tmp_path / "store"
    res = runner.invoke(app, ["ingest", str(manifest), "--store", str(store), "--genes",
                              "ERBB2,MDK", "--steps", "register", "--section-um", "15", "--json"])
    assert res.exit_code == 0, res.output
    from asign.store import open_store

    s = open_store(store)
    rows = s.query("select z, section_um, z_um from sections order by z").to_pylist()
    assert [(r["section_um"], r["z_um"]) for r in rows] == [(15.0, 15.0), (15.0, 30.0)]
    assert s.manifest()["params"]["labels"]["section_um"]["C"] == {"um": 15.0, "source": "option"}
    bad = runner.invoke(app, ["ingest", str(manifest), "--store", str(store),
                              "--section-um", "-1", "--json"])
    assert bad.exit_code == 1 and "--section-um" in json.loads(bad.stdout)["error"]


def test_her2st_without_images_names_what_is_missing(tmp_path):
    import shutil

    from her2st_small import HER2ST

    for sub in ("ST-cnts", "ST-spotfiles"):
        (tmp_path / "h" / sub).mkdir(parents=True)
    for s in ("C1", "C2", "C3"):
        shutil.copy(HER2ST / "ST-cnts" / f"{s}.tsv.gz", tmp_path / "h" / "ST-cnts")
        shutil.copy(HER2ST / "ST-spotfiles" / f"{s}_selection.tsv", tmp_path / "h" / "ST-spotfiles")
    res = runner.invoke(app, ["ingest", str(tmp_path / "h"), "--format", "her2st", "--samples", "C",
                              "--store", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 1
    err = json.loads(res.stdout)
    assert "C1, C2, C3 have neither an H&E image nor aligned x_um, y_um" in err["error"]
    assert err["file"] == str(tmp_path / "h")
    assert "ST-imgs" in err["fix"] and "x_um" not in err["file"]
    assert not (tmp_path / "s" / "tables").exists()  # refused before anything was written


def test_report_and_export_on_counts_only(coords_store, tmp_path):
    """Spots placed by coordinates are drawn and exported; z in µm = z × section_um."""
    import anndata as ad
    import numpy as np

    store, _ = coords_store
    assert _train(store, "idw").exit_code == 0
    res = runner.invoke(app, ["export", "--store", str(store), "--run", "t", "--model", "idw",
                              "--h5ad", str(tmp_path / "x.h5ad"), "--json"])
    assert res.exit_code == 0, res.output
    a = ad.read_h5ad(tmp_path / "x.h5ad")
    assert a.n_obs > 1000
    np.testing.assert_allclose(a.obsm["spatial_3d"][:, 2], 48.0 * a.obs.z.to_numpy())
    res = runner.invoke(app, ["report", "--store", str(store), "--run", "t", "--model", "idw",
                              "--genes", "ERBB2", "--out", str(tmp_path / "rep"), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").exists()


def test_cross_weight_is_iou_alone_where_a_spot_has_no_features():
    import numpy as np

    from asign.ingest.graph import cross_layer_edges, disc_iou

    rng = np.random.default_rng(0)
    xy = np.r_[rng.uniform(0, 600, (40, 2)), rng.uniform(0, 600, (40, 2))]
    layer = np.r_[np.zeros(40, int), np.ones(40, int)]
    feats = rng.normal(size=(80, 8)).astype(np.float32)
    has = np.r_[np.ones(40, bool), np.zeros(20, bool), np.ones(20, bool)]
    for combine in ("product", "sum"):
        e = cross_layer_edges(xy, layer, feats, radius_um=50.0, top_k=8, combine=combine,
                              has_features=has)
        both = has[e.src] & has[e.dst]
        assert (~both).any() and both.any()
        np.testing.assert_allclose(e.weight[~both],
                                   disc_iou(e.distance_um[~both].astype(np.float64), 50.0),
                                   rtol=1e-5)
        assert np.isnan(e.cosine[~both]).all() and np.isfinite(e.cosine[both]).all()
        full = (e.iou[both] * e.cosine[both] if combine == "product"
                else e.iou[both] + e.cosine[both])
        np.testing.assert_allclose(e.weight[both], full, rtol=1e-5)


def test_mean_and_idw_need_no_graph_step(tmp_path):
    manifest = write_coords_manifest(tmp_path / "src", {"C": ("C1", "C2", "C3")})
    store = tmp_path / "store"
    res = runner.invoke(app, ["ingest", str(manifest), "--store", str(store),
                              "--genes", "ERBB2,MDK,FASN", "--steps", "register,align"])
    assert res.exit_code == 0, res.output
    idw = _train(store, "idw")
    assert idw.exit_code == 0, idw.output
    assert json.loads(idw.stdout)["metrics"]["pcc_gene"] > 0
    mean = _train(store, "mean")
    # strict JSON
    assert mean.exit_code == 0 and json.loads(mean.stdout)["metrics"]["pcc_gene"] is None
    cli = _train(store, "cli")  # propagation needs the graph: says which step to run
    assert cli.exit_code == 1 and "--steps graph" in json.loads(cli.stdout)["fix"]


def test_referee_drops_when_a_section_is_misplaced():
    """The referee can fail: C3 turned by 20° about its centre scores below its true place."""
    import numpy as np
    from her2st_coords import section_xy_labels

    from asign.ingest.referee import referee_pcc

    (xa, ya), (xb, yb) = section_xy_labels("C2"), section_xy_labels("C3")
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    turned = (xb - xb.mean(0)) @ rot.T + xb.mean(0)
    right, wrong = referee_pcc(xa, ya, xb, yb), referee_pcc(xa, ya, turned, yb)
    assert right > wrong + 0.05, (right, wrong)
