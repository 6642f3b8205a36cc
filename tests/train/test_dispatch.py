"""Independent train runs dispatched as Dask tasks on 2 local worker processes give the
same metrics as the same runs one after another, and each run row says where it ran."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asign.cluster import ClusterConfig, TaskFailure, threads_per_worker
from asign.store import open_store
from asign.train import TrainConfig
from asign.train.dispatch import expand, run_many

pytest.importorskip("distributed")
pytest.importorskip("torch")


def _metrics(result) -> dict[tuple, float]:
    return {(r["fold"], r["section_id"], r["metric"]): r["value"]
            for r in result.metrics.to_pylist()}


@pytest.fixture(scope="module")
def scheduler():
    """One local cluster for the module's tests, joined by address as --scheduler does."""
    from asign.cluster import connect

    with connect(ClusterConfig(workers=2)) as client:
        yield client.scheduler.address


def test_four_runs_on_two_workers_equal_serial(toy_store):
    base = TrainConfig(store=toy_store, run="d", epochs=2, hidden=16, heads=2, threads=1)
    cfgs = expand(base, ["mean", "idw", "cli", "asign3d"], [0])
    serial = run_many(cfgs, ClusterConfig())
    by_rid = {r.run_id: _metrics(r) for r in serial}
    dispatched = run_many(cfgs, ClusterConfig(workers=2))
    assert not [r for r in dispatched if isinstance(r, TaskFailure)]
    assert [r.run_id for r in dispatched] == [r.run_id for r in serial]
    for r in dispatched:
        assert r.status == "done"
        got, want = _metrics(r), by_rid[r.run_id]
        assert got.keys() == want.keys()
        # bit-identical (NaN where both are NaN, e.g. pcc_gene of the constant mean profile)
        np.testing.assert_array_equal([got[k] for k in sorted(want)],
                                      [want[k] for k in sorted(want)])
    runs = open_store(toy_store).query("SELECT run_id, config FROM runs").to_pylist()
    where = {r["run_id"]: json.loads(r["config"])["where"] for r in runs}
    assert len(where) == 4
    assert all(w["worker"] and w["worker"].startswith("tcp://") and w["host"]
               for w in where.values())


def test_seeds_expand_to_distinct_runs(toy_store):
    cfgs = expand(TrainConfig(store=toy_store, model="mean"), ["mean", "idw"], [0, 1, 2])
    assert [(c.model, c.seed) for c in cfgs] == [(m, s) for m in ("mean", "idw") for s in (0, 1, 2)]


def test_threads_never_exceed_the_cores():
    assert threads_per_worker(2, 2) == 1
    assert threads_per_worker(3, 16) == 5
    assert threads_per_worker(4, 2) == 1  # more workers than cores: one thread each


def test_folds_as_tasks_equal_serial_folds(toy_store_factory, scheduler):
    from asign.train import run

    root = toy_store_factory("folds", samples=("S1", "S2", "S3", "S4"), n_layers=3)
    cfg = TrainConfig(store=root, model="asign3d", run="f", folds=2, epochs=2, hidden=16, heads=2,
                      threads=1)
    serial = run(cfg)
    dispatched = run(cfg, cluster=ClusterConfig(scheduler=scheduler))
    assert dispatched.run_id == serial.run_id and dispatched.status == "done"
    got, want = _metrics(dispatched), _metrics(serial)
    assert got.keys() == want.keys() and {k[0] for k in want} == {0, 1}
    np.testing.assert_array_equal([got[k] for k in sorted(want)], [want[k] for k in sorted(want)])
    where = dispatched.timings["fold_where"]
    assert len(where) == 2 and all(w["worker"].startswith("tcp://") for w in where)


def test_cli_lists_of_models_and_seeds_build_the_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from asign.cli import app

    seen = {}

    def fake(cfgs, cluster):
        seen["cfgs"], seen["cluster"] = cfgs, cluster
        return []

    monkeypatch.setattr("asign.train.dispatch.run_many", fake)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--store", str(tmp_path), "--model", "mean,asign3d",
                              "--seed", "0,1", "--workers", "2", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert [(c.model, c.seed, c.epochs) for c in seen["cfgs"]] == [
        ("mean", 0, 3), ("mean", 1, 3), ("asign3d", 0, 3), ("asign3d", 1, 3)]
    assert seen["cluster"] == ClusterConfig(workers=2)
    bad = runner.invoke(app, ["train", "--store", str(tmp_path), "--seed", "0,x"])
    assert bad.exit_code == 1
    assert len(bad.output.strip().splitlines()) == 1 and "--seed" in bad.output
    both = runner.invoke(app, ["train", "--store", str(tmp_path), "--model", "mean,idw",
                               "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert both.exit_code == 1 and "--workers and --scheduler" in both.output


def test_serial_threads_default_is_recorded_in_the_run_config(toy_store):
    """Without --threads a serial CPU run picks the idle cores at start (asign.cluster.idle_cores);
    the count it chose is in the run's config, and it does not change the run id."""
    import os

    from asign import train

    result = train.run(TrainConfig(store=toy_store, model="cli", run="threads", epochs=1, hidden=16,
                                   heads=2))
    pinned = train.run(TrainConfig(store=toy_store, model="cli", run="threads", epochs=1, hidden=16,
                                   heads=2, threads=1))
    assert result.run_id == pinned.run_id
    row = open_store(toy_store).query(
        f"SELECT config FROM runs WHERE run_id = '{result.run_id}'").to_pylist()
    assert len(row) == 1
    assert json.loads(row[0]["config"])["threads"] == 1  # the pinned rerun overwrote the row
    fresh = train.run(TrainConfig(store=toy_store, model="cli", run="threads2", epochs=1, hidden=16,
                                  heads=2))
    config = json.loads(open_store(toy_store).query(
        f"SELECT config FROM runs WHERE run_id = '{fresh.run_id}'").to_pylist()[0]["config"])
    assert isinstance(config["threads"], int) and 1 <= config["threads"] <= (os.cpu_count() or 1)
