"""Serial vs a local Dask cluster, measured in the same run: per-task overhead, ingest of a
synthetic sample, and four training runs.

    .venv/bin/python bench/cluster.py [--workers 2] [--grid 140] [--layers 4] [--epochs 2]
                                      [--workdir /tmp/asign-cluster] [--json out.json]

1. Overhead: 200 no-op tasks (and 200 returning 1 MB each) through ``asign.cluster.run_tasks``
   on a ``LocalCluster`` of ``--workers`` processes: wall seconds per task.
2. Ingest: ``commands.synthetic.make_demo_sample`` (``--grid``² lattice per layer; 140 × 4
   layers ≈ 42k spots, bench/scale.py's DLPFC-sized case), then ``asign ingest`` serially and
   with ``--workers N`` into two stores (small ``resnet18-l3-64`` encoder, random weights);
   the ratio of wall times, and whether the two stores hold the same LMDB entries.
3. Train: ``asign train --model asign3d --seed 0,1,2,3`` (four runs), serially and with
   ``--workers N``; the ratio, and whether their metrics are equal.

Every command runs as a subprocess of the real CLI (so start-up costs count). The load
average is printed beside each timing: on a shared machine the ratio means little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _noop(i: int) -> int:
    return i


def _payload(i: int) -> bytes:
    return bytes(1 << 20)


def overhead(workers: int, n: int = 200) -> dict[str, float]:
    from asign.cluster import ClusterConfig, connect, run_tasks
    from asign.progress import silent

    out = {}
    with connect(ClusterConfig(workers=workers)) as client:
        for name, fn in (("noop", _noop), ("1mb", _payload)):
            t = time.perf_counter()
            run_tasks(client, fn, [(i,) for i in range(n)], [str(i) for i in range(n)], silent(),
                      description=name)
            out[f"{name}_ms_per_task"] = round((time.perf_counter() - t) / n * 1000, 2)
    return out


def _cli(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "asign.cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _lmdb_entries(store: Path) -> dict[bytes, bytes]:
    from asign.store import open_store

    with open_store(store).vectors() as vec, vec.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid", type=int, default=140)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/asign-cluster"))
    ap.add_argument("--parts", default="overhead,ingest,train")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    parts = args.parts.split(",")
    report: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "workers": args.workers}
    print(f"cores {report['cores']}, workers {args.workers}", flush=True)

    if "overhead" in parts:
        report["overhead"] = overhead(args.workers)
        print("overhead:", report["overhead"], flush=True)

    sample, serial, dask = (args.workdir / n for n in ("sample", "serial", "dask"))
    ingest = ["--format", "manifest", "--n-genes", "250", "--encoder", "resnet18-l3-64",
              "--weights", "random"]
    if "ingest" in parts or "train" in parts:
        if not (sample / "manifest.csv").exists() and not any(sample.glob("*.toml")):
            from asign.commands.synthetic import make_demo_sample

            make_demo_sample(sample, n_layers=args.layers, grid=args.grid, seed=0,
                             image_px=int((args.grid - 1) * 100 / 4.0 * 1.08) + 8, um_per_px=4.0,
                             n_genes=250)
    if "ingest" in parts:
        import shutil

        for store in (serial, dask):
            shutil.rmtree(store, ignore_errors=True)
        rows = {}
        for name, store, extra in (("serial", serial, []), ("workers", dask, ["--workers", str(args.workers)])):
            load = os.getloadavg()[0]
            rows[name] = {"s": round(_cli(["ingest", str(sample), "--store", str(store), *ingest, *extra]), 1),
                          "loadavg": round(load, 2)}
            print(f"ingest {name}: {rows[name]}", flush=True)
        rows["ratio"] = round(rows["serial"]["s"] / rows["workers"]["s"], 2)
        rows["same_lmdb_entries"] = _lmdb_entries(serial) == _lmdb_entries(dask)
        from asign.store import open_store

        rows["spots"] = open_store(serial).query("SELECT count(*) AS n FROM spots").column("n")[0].as_py()
        report["ingest"] = rows
        print(f"ingest: serial / workers = {rows['ratio']} ({rows['spots']} spots); "
              f"identical LMDB: {rows['same_lmdb_entries']}", flush=True)
    if "train" in parts:
        store = serial if serial.exists() else dask
        rows = {}
        for name, extra in (("serial", []), ("workers", ["--workers", str(args.workers)])):
            load = os.getloadavg()[0]
            threads = ["--threads", str(max(1, report["cores"] // args.workers))] if extra else ["--threads", str(report["cores"])]
            rows[name] = {"s": round(_cli(["train", "--store", str(store), "--model", "asign3d", "--run", f"b{name}",
                                           "--seed", "0,1,2,3", "--epochs", str(args.epochs), *threads, *extra]), 1),
                          "loadavg": round(load, 2)}
            print(f"train {name}: {rows[name]}", flush=True)
        rows["ratio"] = round(rows["serial"]["s"] / rows["workers"]["s"], 2)
        report["train"] = rows
        print(f"train (4 runs): serial / workers = {rows['ratio']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
