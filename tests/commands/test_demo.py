"""The one end-to-end run: synthetic sample → ingest (all steps) → train all models → query."""

from __future__ import annotations

import math

from asign.commands.demo import demo_models, run_demo
from asign.store import open_store


def test_demo_end_to_end(tmp_path):
    summary = run_demo(tmp_path / "demo", layers=3, epochs=3)
    assert set(summary["runs"]) == set(demo_models())
    rows = {(r["model"], r["metric"]): r["value"] for r in summary["metrics"]}
    assert {m for m, _ in rows} == set(demo_models())
    assert math.isnan(rows[("mean", "pcc_gene")])  # constant prediction: no per-gene PCC
    # the synthetic expression is spatially smooth, so spatial interpolation must beat the mean
    assert rows[("idw", "pcc_spot")] > rows[("mean", "pcc_spot")]
    store = open_store(tmp_path / "demo" / "store")
    done = store.query("select count(*) n from runs where status = 'done'")
    assert done.column("n")[0].as_py() == len(demo_models())
    assert store.query("select count(*) n from predictions").column("n")[0].as_py() > 0
