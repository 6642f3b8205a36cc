"""asign plan: ranks candidate known sets from images and alignment; labels never enter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa

from asign.store import open_store
from asign.train.plan import plan, rank_sets


def test_middle_wins_when_layers_look_alike():
    xy = np.tile(np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2) * 200,
                 (5, 1))
    section = np.repeat(np.arange(5), 25)
    feat = np.ones((125, 4)) + 0.01 * np.random.default_rng(0).normal(size=(125, 4))
    rows = rank_sets(feat, xy, section, tuple(f"L{i}" for i in range(5)), 200.0, 1)
    assert rows[0]["known"] == ["L2"]
    assert {tuple(r["known"]) for r in rows[-2:]} == {("L0",), ("L4",)}
    pairs = rank_sets(feat, xy, section, tuple(f"L{i}" for i in range(5)), 200.0, 2)
    assert len(pairs) == 10 and pairs[0]["known"] == ["L1", "L3"]


def test_plan_reads_no_labels(toy_store):
    from typer.testing import CliRunner

    from asign.cli import app

    first = plan(toy_store, budget=1)
    other = toy_store.parent / "nolabels"
    shutil.copytree(toy_store, other)
    store = open_store(other)
    tab = store.read("labels", key="S1")
    zeros = [[0.0] * len(v) for v in tab.column("value").to_pylist()]
    store.write("labels", tab.set_column(tab.schema.get_field_index("value"), "value",
                                         pa.array(zeros, pa.list_(pa.float32()))), key="S1")
    assert plan(other, budget=1) == first
    out = CliRunner().invoke(app, ["plan", "--store", str(toy_store), "--budget", "2", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)["samples"]["S1"]
    assert [r["rank"] for r in got] == list(range(1, len(got) + 1))
