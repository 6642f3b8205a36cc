"""Four `asign train` runs at once on one store (one of them started twice) while queries
read it in a loop: every run's results land, nothing is corrupt, `asign check` passes, and
no lock or half-written-file error (LMDB, DuckDB, Parquet) reaches a user. Toy store, two
epochs of a small model: seconds of work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pandas.testing import assert_frame_equal

from asign.store import open_store

# name → model: two baselines (compared with a run that has the store to itself below),
# propagation over the graph, and the full model (which also writes checkpoints)
RUNS = {"par-mean": "mean", "par-idw": "idw", "par-cli": "cli", "par-3d": "asign3d"}
# ... and a second, identical `mean` run at the same time: the same run id, whose start
# clears that run's earlier results while the other one and the readers use them
TWICE = "par-mean"
SMALL = ["--epochs", "2", "--hidden", "16", "--heads", "1"]
SQL = ("select r.name, r.status, count(distinct m.metric) n_metrics, "
       "(select count(*) from predictions p where p.run_id = r.run_id) n_pred "
       "from runs r left join metrics m using (run_id) group by 1, 2, r.run_id order by 1")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asign.cli", *args]


def test_parallel_trains_while_querying(toy_store, tmp_path):
    # one thread each: four processes share two cores
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs = [*RUNS.items(), (TWICE, RUNS[TWICE])]
    logs = {f"{name}#{i}": tmp_path / f"{name}-{i}.stderr" for i, (name, _) in enumerate(jobs)}
    procs = {}
    for (name, model), (job, log) in zip(jobs, logs.items(), strict=True):
        with open(log, "w") as fh:
            procs[job] = subprocess.Popen(_cli("train", "--store", str(toy_store), "--model", model,
                                               "--run", name, *SMALL),
                                          stdout=subprocess.DEVNULL, stderr=fh, env=env)
    # Readers beside the writers: in-process queries in a tight loop (many chances to catch a
    # file between listing and reading), and the CLI now and then (what a user sees).
    store = open_store(toy_store)
    seen: set[str] = set()
    n_queries, cli_outputs = 0, []
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs.values()):
        assert time.monotonic() < deadline, "trains did not finish in 5 minutes"
        rows = store.query(SQL).to_pylist()
        seen |= {r["name"] for r in rows}
        n_queries += 1
        if n_queries % 20 == 1:
            cli_outputs.append(subprocess.run(_cli("query", "--store", str(toy_store),
                                                   "--format", "json", SQL),
                                              capture_output=True, text=True, timeout=120))
        time.sleep(0.02)
    for job, p in procs.items():
        err = logs[job].read_text()
        assert p.wait() == 0, f"{job}: {err[-3000:]}"
        assert "Traceback" not in err and "error:" not in err, f"{job}: {err[-3000:]}"
        assert "lock" not in err.lower(), f"{job}: {err[-3000:]}"  # LMDB/DuckDB lock messages
    for out in cli_outputs:
        assert out.returncode == 0 and out.stderr == "", out.stderr
        json.loads(out.stdout)
    assert n_queries > 10 and seen  # the readers really ran beside the writers

    final = {r["name"]: r for r in store.query(SQL).to_pylist()}
    assert sorted(final) == sorted(RUNS)
    for row in final.values():
        assert row["status"] == "done" and row["n_metrics"] >= 4, row
    assert len({row["n_pred"] for row in final.values()}) == 1 and final["par-mean"]["n_pred"] > 0
    assert not list(toy_store.rglob("*.tmp"))
    check = subprocess.run(_cli("check", "--store", str(toy_store)), capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0 and check.stderr == "", check.stderr

    # the baselines' results equal those of a run with the store to itself
    from asign import train
    from asign.train.config import TrainConfig

    sql = ("select section_id, metric, value from metrics m join runs r using (run_id) "
           "where r.name = '{}' order by 1, 2")
    for name in ("par-mean", "par-idw"):
        train.run(TrainConfig(store=toy_store, model=RUNS[name], run=f"{name}-alone"))
        assert_frame_equal(store.query(sql.format(name)).to_pandas(),
                           store.query(sql.format(f"{name}-alone")).to_pandas(), rtol=0, atol=0)
