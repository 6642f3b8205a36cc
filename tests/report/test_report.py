"""asign report: data resolution from the store, figures, and report.html rendered by
headless Chromium.

The store is the toy store of conftest (sample S1: four labelled layers + an image-only
layer S1_L5; a 2D sample B) with synthetic H&E thumbnails, and real `asign train` runs of
the fast baselines: run ``base`` = idw + cli (no mean run: the report computes the mean
baseline), run ``full`` = idw + mean.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_store

from asign.errors import InputError
from asign.report import write_report
from asign.report.data import COMPUTED_MEAN, gene_pcc_table, load_run_data
from asign.report.plots import shared_limits
from asign.store import open_store

NO_THUMB = "S1_L3"  # a section whose thumbnail is missing: maps are drawn without H&E
DOWNSAMPLE = 4.0


def _fake_he(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Pink background with purple nuclei-like blobs: enough texture to see orientation."""
    from scipy.ndimage import gaussian_filter

    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = (242, 214, 230)
    nuclei = gaussian_filter(rng.random((h, w)), 2.0)
    dark = nuclei > np.quantile(nuclei, 0.75)
    img[dark] = (120, 70, 150)
    img[: h // 5, : w // 5] = (60, 30, 90)  # a dark top-left corner marks the orientation
    return img.astype(np.uint8)


def build_report_store(base: Path) -> Path:
    from asign.train import run
    from asign.train.config import TrainConfig

    root = make_toy_store(base, extra_2d="B", image_only_layer=True)
    store = open_store(root)
    rng = np.random.default_rng(1)
    ds = {}
    for sec in ("S1_L1", "S1_L2", "S1_L3", "S1_L4", "S1_L5"):
        if sec == NO_THUMB:
            continue
        # toy images: 1 µm/px, spots within ~[-60, 1060] x [-60, 860] px
        store.write_thumbnail(sec, _fake_he(250, 300, rng))
        ds[sec] = DOWNSAMPLE
    manifest = store.manifest()
    manifest["steps"]["S1"]["align"] = {"fingerprint": "toy", "thumb_downsample": ds}
    store.save_manifest(manifest)
    for name, models in (("base", ("idw", "cli")), ("full", ("idw", "mean"))):
        for model in models:
            result = run(TrainConfig(store=root, model=model, run=name, extra_2d=("B",)))
            assert result.status == "done"
    return root


@pytest.fixture(scope="module")
def report_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report_store(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report_dir(report_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report_out")
    write_report(report_store, "base", out)
    return out


def test_known_hidden_and_scored_layers(report_store):
    data = load_run_data(open_store(report_store), "base")
    assert data.known == {"S1": "S1_L1"}
    assert data.hidden == {"S1": ["S1_L2", "S1_L3", "S1_L4", "S1_L5"]}
    assert data.scored == {"S1": ["S1_L2", "S1_L3", "S1_L4"]}
    assert data.map_model == "cli"  # no asign3d/asign2d in this run name
    assert set(data.runs) == {"idw", "cli"}
    assert data.setting == "within_sample"
    assert COMPUTED_MEAN in set(data.metrics.model)


def test_computed_mean_equals_the_mean_run(report_store):
    store = open_store(report_store)
    computed = load_run_data(store, "base").metrics
    stored = load_run_data(store, "full").metrics
    a = computed[computed.model == COMPUTED_MEAN].set_index(["section_id", "metric"]).value
    b = stored[stored.model == "mean"].set_index(["section_id", "metric"]).value
    assert len(a) == len(b) == 3 * 4
    a, b = a.sort_index(), b.sort_index()
    assert list(a.index) == list(b.index)
    # the mean profile is constant per gene: pcc_gene is undefined in both
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, equal_nan=True)
    assert np.isnan(a.loc[("S1_L2", "pcc_gene")])


def test_per_gene_pcc_agrees_with_the_metrics_table(report_store):
    data = load_run_data(open_store(report_store), "base")
    table = gene_pcc_table(data)
    for model in ("idw", "cli"):
        metric = data.metrics[(data.metrics.model == model) & (data.metrics.metric == "pcc_gene")]
        assert np.isfinite(table[model]).all()
        assert table[model].mean() == pytest.approx(metric.value.mean(), abs=1e-5)
    assert table[COMPUTED_MEAN].isna().all()


def test_report_files(report_dir):
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    maps = [p for p in pngs if p.startswith("map_S1_")]
    assert len(maps) == 2  # no ERBB2/MDK in the toy panel: best + worst predicted gene
    assert "volume_S1_" + maps[0][len("map_S1_"):] in pngs
    assert {"metrics.png", "pcc_per_gene.png"} <= set(pngs)
    assert (report_dir / "metrics.csv").exists() and (report_dir / "gene_pcc.csv").exists()
    page = (report_dir / "report.html").read_text()
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == len(pngs)
    from PIL import Image

    for blob in imgs:
        with Image.open(io.BytesIO(base64.b64decode(blob))) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300
    assert "<title>asign report — run base</title>" in page
    assert "within_sample" in page and "mean-profile baseline" in page
    assert "mean (computed)" in page
    # self-contained: plotly.js is inline (the 3D view works offline), nothing is fetched
    assert "src=\"http" not in page and "<script src" not in page and "<link" not in page
    assert "plotly.js v" in page and 'id="view3d-S1"' in page
    # the gene menu of the 3D view: every panel gene of the toy store (6 < MAX_GENES)
    assert all(f'"label":"G{i}"' in page for i in range(6))
    # the header says what the numbers rest on; the toy store's features are random
    assert "id='random-weights'" in page and "RANDOM encoder weights" in page
    for field in ("Encoder", "Weights", "Epochs", "Known layer(s)", "Alignment"):
        assert f"<th>{field}</th>" in page
    # the summary compares with the best baseline of the run on every metric
    assert "best baseline" in page


def test_maps_include_the_known_layer_on_a_percentile_scale(report_store):
    from asign.report import section_maps
    from asign.report.plots import percentiles

    data = load_run_data(open_store(report_store), "base")
    maps = section_maps(data, "S1", "G1")
    assert [m.section_id for m in maps] == ["S1_L1", "S1_L2", "S1_L3", "S1_L4", "S1_L5"]
    assert maps[0].known and maps[0].predicted is None and maps[0].measured is not None
    assert all(m.predicted is not None for m in maps[1:])
    # the display scale is log1p(CP10k): positive, unlike the store's log-ratios
    assert (maps[1].predicted_scale > 0).all() and (maps[1].predicted < 0).all()
    p = percentiles(np.array([3.0, 1.0, np.nan, 2.0, 2.0]))
    np.testing.assert_allclose(p, [100.0, 0.0, np.nan, 50.0, 50.0])


def test_best_baseline_per_metric():
    import pandas as pd

    from asign.report.html import best_baseline, comparison_lines

    summary = pd.DataFrame({
        "model": ["asign3d"] * 2 + ["idw"] * 2 + ["mean"] * 2,
        "metric": ["pcc_gene", "mse"] * 3,
        "mean": [0.30, 0.20, 0.35, 0.25, np.nan, 0.30]})
    assert best_baseline(summary, "pcc_gene", "asign3d") == ("idw", 0.35)
    assert best_baseline(summary, "mse", "asign3d") == ("idw", 0.25)
    lines = comparison_lines(summary, "asign3d")
    assert "best baseline idw 0.350: asign3d is NOT better" in lines[0]
    assert "best baseline idw 0.250: asign3d is better" in lines[1]


def test_aligned_stack_and_its_3d_textures():
    """A section moved by a known transform lands where the transform says, and the 3D
    view's texture of it is cropped to the requested box in aligned µm."""
    from asign.report.stack import SectionImage, aligned_stack
    from asign.report.view3d import textures

    thumb = np.full((40, 60, 3), 255, dtype=np.uint8)
    thumb[10:20, 30:40] = 0  # a dark square at thumbnail px x 30–39, y 10–19
    ds, um = 2.0, 1.5  # 2 full-res px per thumbnail px, 1.5 µm per full-res px
    shift = np.array([[um, 0, 100.0], [0, um, -50.0], [0, 0, 1]])  # image px -> aligned µm
    a = SectionImage("A", 1, thumb, ds, np.diag([um, um, 1.0]))
    b = SectionImage("B", 3, thumb, ds, shift)
    st = aligned_stack([a, b], spacing_um=40.0)
    assert st.image.shape[0] == 3 and st.sections == ["A", None, "B"]
    assert st.res_um == pytest.approx(3.0) and st.z_um(3) == 80.0
    assert (st.image[1] == 255).all()  # layer 2 has no image: blank
    for plane, (dx, dy) in ((0, (0.0, 0.0)), (2, (100.0, -50.0))):
        dark = np.argwhere(st.image[plane, :, :, 0] < 128)
        x = st.origin_um[0] + dark[:, 1].mean() * st.res_um
        y = st.origin_um[1] + dark[:, 0].mean() * st.res_um
        # the square's centre: thumbnail px (34.5, 14.5) -> full res ((t+0.5)·ds - 0.5)
        assert x == pytest.approx((35 * ds - 0.5) * um + dx, abs=st.res_um)
        assert y == pytest.approx((15 * ds - 0.5) * um + dy, abs=st.res_um)
    tex = textures(st, {"A": 0.0, "B": 80.0}, (0.0, 150.0, 0.0, 60.0))
    assert [t.section_id for t in tex] == ["A", "B"]
    assert tex[0].x0 == pytest.approx(0.0, abs=st.res_um) and tex[0].grey.dtype == np.uint8
    assert tex[0].grey.shape == (20, 50)


def test_label_spreading_keeps_a_gap():
    from asign.report.plots import spread_labels

    ys = spread_labels([0.50, 0.51, 0.2, 0.505], min_gap=0.04)
    order = np.argsort(ys)
    assert np.all(np.diff(np.sort(ys)) >= 0.04 - 1e-9)
    assert list(np.argsort([0.50, 0.51, 0.2, 0.505], kind="stable")) == list(order)


def test_explicit_genes_model_and_errors(report_store, tmp_path):
    out = tmp_path / "r"
    write_report(report_store, "full", out, genes=["G2"], model="idw")
    assert sorted(p.name for p in out.glob("map_*.png")) == ["map_S1_G2.png"]
    page = (out / "report.html").read_text()
    assert "maps show idw" in page and "mean (computed)" not in page
    with pytest.raises(InputError, match="not in the store's gene panel"):
        write_report(report_store, "full", tmp_path / "x", genes=["NOPE"])
    with pytest.raises(InputError, match="no 'asign3d' model"):
        write_report(report_store, "full", tmp_path / "x", model="asign3d")
    with pytest.raises(InputError, match="no run named 'nope'"):
        write_report(report_store, "nope", tmp_path / "x")


def test_cli_command_bodies(report_store, tmp_path):
    from asign.commands.export import export_command, report_command, split_genes

    assert split_genes(" G1, G2 ,,") == ("G1", "G2") and split_genes("") is None
    summary = report_command(report_store, "base", tmp_path / "r", genes="G1", model="idw")
    assert Path(summary["report"]).name == "report.html"
    assert "map_S1_G1.png" in summary["figures"]
    assert export_command(report_store, "base", h5ad=tmp_path / "b.h5ad")["h5ad"].endswith("b.h5ad")


def test_shared_limits_pool_measured_and_predicted():
    measured = np.linspace(0, 10, 101)
    predicted = np.linspace(5, 20, 101)
    lo, hi = shared_limits([measured, predicted, None])
    pooled = np.concatenate([measured, predicted])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(pooled, [2, 98])))
    assert shared_limits([np.full(4, 3.0)]) == (2.5, 3.5)  # constant: a visible range


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium); "
                    "`make test` installs it")
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=1400,2400", (report_dir / "report.html").resolve().as_uri()],
            capture_output=True, text=True, timeout=90, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"))
    assert px.shape[:2] == (2400, 1400)
    assert px.std() > 20  # not a blank page
    non_white = (px < 235).any(axis=2).mean()
    assert non_white > 0.1, f"only {non_white:.1%} of the page is drawn on"
    # a page of text alone has a few hundred grey levels; embedded figures (H&E, colour map)
    # bring thousands of colours, so this fails if the images did not render
    packed = (px[..., 0].astype(np.int32) << 16) | (px[..., 1].astype(np.int32) << 8) | px[..., 2]
    colours = np.unique(packed)
    assert len(colours) > 2000, f"{len(colours)} colours: the figures did not render"


def test_3d_view_draws_in_headless_chromium(report_dir, tmp_path):
    """The interactive view alone (cut from report.html, plotly.js inline) drawn by
    Chromium's software WebGL: the spots must appear in viridis colours."""
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    page = (report_dir / "report.html").read_text()
    start = page.index("<div class='view3d'>")
    end = page.index("<h2 id='3d-view--static'>")
    view = tmp_path / "view.html"
    view.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + page[start:end] + "</body></html>", encoding="utf-8")
    shot = tmp_path / "view.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--enable-unsafe-swiftshader",
             "--virtual-time-budget=15000", f"--user-data-dir={profile}",
             f"--screenshot={shot}", "--window-size=1200,800", view.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from matplotlib import colormaps
    from PIL import Image
    from scipy.spatial import cKDTree

    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    # the middle of the scene only: the colour bar (right) and legend (left) are SVG and
    # would be viridis-coloured even if WebGL drew nothing
    h, w = px.shape[:2]
    px = px[int(0.3 * h):int(0.95 * h), int(0.3 * w):int(0.75 * w)].reshape(-1, 3)
    viridis = colormaps["viridis"](np.linspace(0, 1, 64))[:, :3] * 255
    dist = cKDTree(viridis).query(px)[0]
    saturated = px.max(axis=1) - px.min(axis=1) > 60  # not grey/white page or axes
    assert (saturated & (dist < 20)).sum() > 2000, "no coloured spots: WebGL did not draw"


def test_an_export_format_is_one_registry_entry(report_store, tmp_path, monkeypatch):
    """A new format is its writer and its EXPORTS entry: the CLI option, the checks and the
    summary follow (the option list is generated from the registry)."""
    import dataclasses

    from asign.commands.export import _export_config, export_command
    from asign.errors import ConfigError
    from asign.report.formats import EXPORTS, ExportFormat

    def write_csv(job, out):
        job.anndata().to_df().to_csv(out)
        return str(out)

    monkeypatch.setitem(EXPORTS, "csv", ExportFormat(
        help="Predictions as CSV.", what="the CSV export", metavar="FILE.csv",
        write=write_csv, suffix=".csv"))
    assert "csv" in {f.name for f in dataclasses.fields(_export_config())}
    out = export_command(report_store, "base", csv=tmp_path / "p.csv")
    assert Path(out["csv"]).stat().st_size > 0 and "h5ad" not in out
    with pytest.raises(ConfigError, match="--csv FILE.csv"):
        export_command(report_store, "base")
    with pytest.raises(InputError, match="must end in .csv"):
        export_command(report_store, "base", csv=tmp_path / "p.txt")


def test_a_run_larger_than_one_read_allows_is_still_loaded(report_store, monkeypatch):
    """A run's predictions (spots × genes rows) are read in pieces: with a decode budget
    below the predictions table (a Visium HD stack's is hundreds of millions of rows) the
    whole-file read refuses it, and the report and export load the same arrays as before."""
    import glob

    import pyarrow.parquet as pq

    from asign.errors import StoreError
    from asign.store import parquet as store_parquet

    store = open_store(report_store)
    before = load_run_data(store, "base")
    budget = min(store_parquet.decoded_bytes(pq.read_metadata(p)) for p in
                 glob.glob(str(report_store / "results" / "predictions" / "*.parquet"))) - 1
    monkeypatch.setattr(store_parquet, "decode_budget", lambda: budget)
    run_id = before.runs["cli"].run_id
    with pytest.raises(StoreError, match="to decode"):
        store.read("predictions", key=run_id)
    after = load_run_data(store, "base")
    for model in before.predictions:
        np.testing.assert_array_equal(after.predictions[model], before.predictions[model])
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.counts, before.counts)
    assert after.known == before.known and after.hidden == before.hidden
    assert (after.spots.fold == before.spots.fold).all()
    only = load_run_data(store, "base", compare=False)  # what an export loads
    assert set(only.predictions) == {"cli"}
    np.testing.assert_array_equal(only.predictions["cli"], before.predictions["cli"])


def test_3d_view_draws_at_most_max_view_spots_per_section(report_store, monkeypatch):
    """The 3D view embeds every drawn spot's value for every menu gene: a Visium HD section
    (~165,000 bins) would make a page of hundreds of MB. Each section is thinned to
    MAX_VIEW_SPOTS spots, the same ones for its predicted and measured layers, and the
    legend says how many of how many are shown."""
    from asign.report import view3d, view_3d

    data = load_run_data(open_store(report_store), "base")
    full = view_3d(data, "S1", [data.genes[0]], first=False)
    assert not re.findall(r"(\d+) of (\d+) spots\)", full)  # small sections: all drawn
    monkeypatch.setattr(view3d, "MAX_VIEW_SPOTS", 7)
    page = view_3d(data, "S1", [data.genes[0]], first=False)
    shown = re.findall(r"(\d+) of (\d+) spots\)", page)
    per_section = data.spots.groupby("section_id").size()
    assert len(shown) >= 1 + 2 * 3  # known; predicted and measured of the scored layers
    assert all(int(a) <= 7 < int(b) and int(b) in set(per_section) for a, b in shown)
    assert page == view_3d(data, "S1", [data.genes[0]], first=False)  # same spots each time
    assert len(page) < len(full)
    mask = np.zeros(100, dtype=bool)
    mask[::3] = True
    kept = view3d.thin(mask, 5)
    assert kept.sum() == 5 and not (kept & ~mask).any()


def test_binned_spots_are_drawn_as_squares_of_their_size_without_outlines():
    """A Visium HD map drew each 16 µm bin as a disc with a black outline: a mesh of
    outlines hid the values. Bins are squares of the bin's side, edge to edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection, PolyCollection

    from asign.report.plots import SectionMap, _spots

    xy = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2) * 16
    values = np.arange(len(xy), dtype=float)
    fig, ax = plt.subplots()
    for shape, kind in (("square", PolyCollection), ("disc", EllipseCollection)):
        m = SectionMap("L1", xy, 16.0, values, None, None, None, None, shape=shape)
        coll = _spots(ax, m, values)
        assert isinstance(coll, kind)
        np.testing.assert_array_equal(coll.get_array(), values)
    square = ax.collections[0]
    assert len(square.get_edgecolor()) == 0 or (square.get_edgecolor()[:, 3] == 0).all()
    corners = square.get_paths()[0].vertices[:4]
    np.testing.assert_allclose(np.ptp(corners, axis=0), [16.0, 16.0])
    plt.close(fig)
