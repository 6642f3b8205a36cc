"""--syn is applied: spots and virtual lattices move through the affine chain *and* the
stored deformation fields, and the field the store holds is the one that moved them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from asign.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def syn_store(tmp_path_factory):
    from asign.commands.synthetic import make_demo_sample

    base = tmp_path_factory.mktemp("syn")
    src = make_demo_sample(base / "demo", n_layers=3, grid=6, image_px=320, um_per_px=4.0,
                           n_genes=8)
    # the last layer becomes image-only, so a virtual lattice is laid (and warped) too
    text = (src / "manifest.toml").read_text().replace(
        'counts = "counts/L3.csv"\nspots = "spots/L3.csv"\n', "")
    (src / "manifest.toml").write_text(text)
    store = base / "store"
    res = runner.invoke(app, ["ingest", str(src), "--store", str(store),
                              "--steps", "register,align", "--syn", "--json"])
    assert res.exit_code == 0, res.output
    return store, json.loads(res.stdout)["samples"]["demo"]["align"]


def test_spots_move_by_the_stored_displacement(syn_store):
    from asign.ingest.align import apply_transform
    from asign.ingest.deform import sample_field
    from asign.store import open_store
    from asign.store.warps import read_warps

    store, info = syn_store
    s = open_store(store)
    warps = read_warps(s, "demo")
    assert set(warps) == {"demo_L1", "demo_L3"}  # both neighbours of the reference demo_L2
    tr = s.read("transforms", key="demo").to_pandas().set_index("section_id")
    sec = s.read("sections").to_pandas().set_index("section_id")
    spots = s.read("spots", key="demo").to_pandas()
    moved = []
    for sid in ("demo_L1", "demo_L3"):
        w = warps[sid]
        assert w.neighbour_id == "demo_L2" == tr.loc[sid, "neighbour_id"]
        sp = spots[spots.section_id == sid]
        um = float(sec.loc[sid, "um_per_px"])
        pair = np.asarray(tr.loc[sid, "pair_matrix"]).reshape(3, 3)
        y = apply_transform(pair, sp.px.to_numpy() * um, sp.py.to_numpy() * um)
        dx, dy = sample_field(w.field, w.grid, *y)
        # the reference's µm frame is the aligned frame: one link, one field
        np.testing.assert_allclose(sp.x_um, y[0] + dx, atol=1e-6)
        np.testing.assert_allclose(sp.y_um, y[1] + dy, atol=1e-6)
        # ... and that is not the affine alone
        ax, ay = apply_transform(np.asarray(tr.loc[sid, "matrix"]).reshape(3, 3), sp.px, sp.py)
        moved.append(np.hypot(sp.x_um - ax, sp.y_um - ay))
    moved = np.concatenate(moved)
    assert moved.max() > 0.5  # µm: the field really moved spots
    assert sp.is_virtual.all() and len(sp) > 0  # demo_L3's spots are its warped lattice


def test_field_matches_ants_point_mapping():
    """Our bilinear sampling of the stored inverse field equals ANTs' own point transform."""
    import os
    import tempfile

    import ants
    import pandas as pd

    from asign.ingest.ants_pair import to_ants
    from asign.ingest.deform import sample_field

    rng = np.random.default_rng(0)
    base = np.zeros((60, 70), np.float32)
    base[15:45, 20:55] = 1.0
    moving = np.roll(base, 2, axis=1)
    moving[20:30, 22:30] = 0.0  # a local dent: SyN has something to deform
    frame = np.array([[10.0, 0, 5.0], [0, 10.0, 5.0], [0, 0, 1]])
    fixed_i, moving_i = to_ants(base, frame), to_ants(moving, frame)
    with tempfile.TemporaryDirectory() as tmp:
        out = ants.registration(fixed_i, moving_i, type_of_transform="SyNOnly",
                                outprefix=os.path.join(tmp, "r"),
                                syn_metric="meansquares", reg_iterations=(40, 20, 0))
        warp = [p for p in out["invtransforms"] if p.endswith(".nii.gz")][0]
        field = np.transpose(ants.image_read(warp).numpy(), (1, 0, 2))
        pts = pd.DataFrame({"x": rng.uniform(200, 550, 50), "y": rng.uniform(150, 450, 50)})
        theirs = ants.apply_transforms_to_points(2, pts, [warp])
    dx, dy = sample_field(field, frame, pts.x.to_numpy(), pts.y.to_numpy())
    assert np.abs(np.c_[dx, dy]).max() > 0.1
    np.testing.assert_allclose(np.c_[pts.x + dx, pts.y + dy], theirs[["x", "y"]].to_numpy(),
                               atol=1e-3)
