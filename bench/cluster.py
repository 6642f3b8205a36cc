"""Serial vs a local Dask cluster, measured in the same run: per-task overhead, ingest of a
synthetic sample, and four training runs.

    .venv/bin/python bench/cluster.py [--workers 2] [--grid 140] [--layers 4] [--epochs 2]
                                      [--workdir /tmp/asign-cluster] [--json out.json]

1. Overhead: 200 no-op tasks (and 200 returning 1 MB each) through ``asign.cluster.run_tasks``
   on a ``LocalCluster`` of ``--workers`` processes: wall seconds per task.
2. Ingest: ``commands.synthetic.make_demo_sample`` (``--grid``² lattice per layer; 140 × 4
   layers ≈ 42k spots, bench/scale.py's DLPFC-sized case), then ``asign ingest`` serially and
   with ``--workers N`` into two stores (small ``resnet18-l3-64`` encoder, random weights);
   the ratio of wall times, whether the two stores are identical (files by SHA-256, LMDB
   entry by entry), and where the cluster run's time went (tasks, the driver's commit
   seconds, the workers' compute seconds per unit function).
3. Train: ``asign train --model asign3d --seed 0,1,2,3`` (four runs), serially and with
   ``--workers N``; the ratio.

bench/scale.py ``--workers N`` runs 2 and 3 on its scenarios (``compare_ingest``,
``compare_train``).

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


def _cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, dict[str, Any] | None]:
    """Wall seconds of one CLI command (start-up included) and its --json output, if any."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asign.cli", *args], check=True, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - t
    try:
        return seconds, json.loads(proc.stdout)
    except json.JSONDecodeError:
        return seconds, None


def _lmdb_entries(store: Path) -> dict[bytes, bytes]:
    from asign.store import open_store

    with open_store(store).vectors() as vec:
        return vec.entries()


def _files(store: Path) -> dict[str, str]:
    """sha256 of every file but the manifest and the LMDB (compared entry by entry)."""
    import hashlib

    return {p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "manifest.json"
            and "vectors.lmdb" not in p.parts}


def _step_seconds(store: Path) -> dict[str, float]:
    """Seconds per ingest step of a fresh store, from the manifest's timestamps (whole
    seconds: each step's done_at minus the previous one's, register from created_at)."""
    from datetime import datetime

    m = json.loads((store / "manifest.json").read_text())
    t = datetime.fromisoformat(m["created_at"].replace("Z", "+00:00"))
    out: dict[str, float] = {}
    for sample in m["steps"].values():
        for step, info in sorted(sample.items(), key=lambda kv: kv[1]["done_at"]):
            done = datetime.fromisoformat(info["done_at"].replace("Z", "+00:00"))
            out[step] = out.get(step, 0.0) + (done - t).total_seconds()
            t = done
    return out


def compare_ingest(sample: Path, workdir: Path, workers: int, ingest: list[str]) -> dict[str, Any]:
    """``asign ingest`` of ``sample`` serially and with ``--workers``, each into a fresh
    store, one after the other: wall seconds, the ratio, whether the stores are identical,
    and where the cluster run's time went (its summary's ``cluster`` entry)."""
    import shutil

    rows: dict[str, Any] = {}
    stores = {"serial": workdir / "store-serial", "workers": workdir / f"store-w{workers}",
              "serial_1thread": workdir / "store-serial-1t"}
    # serial_1thread: torch's intra-op pool held to one thread (OMP_NUM_THREADS=1), as each
    # worker's is; the serial default uses all cores, which on a busy machine spin-waits
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, extra, env in (("serial", [], None), ("workers", ["--workers", str(workers)], None),
                             ("serial_1thread", [], one)):
        shutil.rmtree(stores[name], ignore_errors=True)
        load = os.getloadavg()[0]
        s, summary = _cli(["ingest", str(sample), "--store", str(stores[name]), *ingest, *extra,
                           "--json"], env)
        rows[name] = {"s": round(s, 1), "loadavg": round(load, 2),
                      "loadavg_end": round(os.getloadavg()[0], 2)}
        if summary and "cluster" in summary:
            rows[name]["cluster"] = summary["cluster"]
        print(f"ingest {name}: {rows[name]}", flush=True)
    rows["ratio"] = round(rows["serial"]["s"] / rows["workers"]["s"], 2)
    rows["ratio_1thread"] = round(rows["serial_1thread"]["s"] / rows["workers"]["s"], 2)
    rows["steps_s"] = {name: _step_seconds(path) for name, path in stores.items()}
    print(f"seconds per step: {rows['steps_s']}", flush=True)
    shutil.rmtree(stores["serial_1thread"], ignore_errors=True)
    rows["identical"] = (_files(stores["serial"]) == _files(stores["workers"])
                         and _lmdb_entries(stores["serial"]) == _lmdb_entries(stores["workers"]))
    from asign.store import open_store

    counted = open_store(stores["serial"]).query("SELECT count(*) AS n FROM spots")
    rows["spots"] = counted.column("n")[0].as_py()
    c = rows["workers"].get("cluster")
    if c:  # per task: what a task cost beyond its compute, with the workers' time as the budget
        busy = sum(c["worker_compute_s"].values())
        rows["tasks"] = c["tasks"]
        rows["efficiency"] = round(busy / (workers * rows["workers"]["s"]), 2)
        rows["idle_s_per_task"] = round((workers * rows["workers"]["s"] - busy) / c["tasks"], 3)
    return rows


def compare_train(store: Path, workers: int, epochs: int, cores: int) -> dict[str, Any]:
    """Four ``asign3d`` runs (``--seed 0,1,2,3``) serially with all cores' threads, and as
    Dask tasks on ``workers`` workers of cores // workers threads: the ratio."""
    rows: dict[str, Any] = {}
    for name, extra in (("serial", ["--threads", str(cores)]),
                        ("workers",
                         ["--threads", str(max(1, cores // workers)), "--workers", str(workers)])):
        load = os.getloadavg()[0]
        s, _ = _cli(["train", "--store", str(store), "--model", "asign3d", "--run", f"b{name}",
                     "--seed", "0,1,2,3", "--epochs", str(epochs), *extra])
        rows[name] = {"s": round(s, 1), "loadavg": round(load, 2),
                      "loadavg_end": round(os.getloadavg()[0], 2)}
        print(f"train {name}: {rows[name]}", flush=True)
    rows["ratio"] = round(rows["serial"]["s"] / rows["workers"]["s"], 2)
    return rows


def workers_table(results: dict[str, dict], workers: int, scenarios: list[str]) -> str:
    """The --workers column: serial vs N workers per scenario and part."""
    lines = [f"| scenario | part | serial s (load) | {workers} workers s (load) | ratio | "
             "identical store | tasks | driver commit s | Σ worker compute s | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for sc in scenarios:
        row = results.get(f"{sc}/workers{workers}")
        if not row:
            continue
        for part in ("ingest", "train"):
            r = row.get(part)
            if not r:
                continue
            c = r["workers"].get("cluster", {})
            name = (f"ingest ({r['spots']:,} spots)" if part == "ingest"
                    else "train (4 asign3d runs)")
            busy = f"{sum(c['worker_compute_s'].values()):,.0f}" if c else "–"
            if part == "ingest" and "serial_1thread" in r:
                one = r["serial_1thread"]
                lines.append(f"| {sc} | {name}, serial with 1 torch thread | {one['s']:,.0f} "
                             f"({one['loadavg']:.1f}) | "
                             f"{r['workers']['s']:,.0f} | **{r['ratio_1thread']:.2f}×** "
                             "| | | | | |")
            lines.append(f"| {sc} | {name} | {r['serial']['s']:,.0f} "
                         f"({r['serial']['loadavg']:.1f}) | "
                         f"{r['workers']['s']:,.0f} ({r['workers']['loadavg']:.1f}) | "
                         f"**{r['ratio']:.2f}×** | "
                         f"{r.get('identical', '–')} | {c.get('tasks', '–')} | "
                         f"{c.get('driver_commit_s', '–')} | {busy} | {r.get('efficiency', '–')} |")
        if row.get("overhead"):
            o = row["overhead"]
            lines.append(f"| {sc} | Dask overhead per task | | {o['noop_ms_per_task']} ms no-op, "
                         f"{o['1mb_ms_per_task']} ms returning 1 MB | | | | | | |")
    return "\n".join(lines)


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

    sample = args.workdir / "sample"
    ingest = ["--format", "manifest", "--n-genes", "250", "--encoder", "resnet18-l3-64",
              "--weights", "random"]
    if "ingest" in parts or "train" in parts:
        if not (sample / "manifest.csv").exists() and not any(sample.glob("*.toml")):
            from asign.commands.synthetic import make_demo_sample

            make_demo_sample(sample, n_layers=args.layers, grid=args.grid, seed=0,
                             image_px=int((args.grid - 1) * 100 / 4.0 * 1.08) + 8, um_per_px=4.0,
                             n_genes=250)
    if "ingest" in parts:
        report["ingest"] = compare_ingest(sample, args.workdir, args.workers, ingest)
        print(f"ingest: serial / workers = {report['ingest']['ratio']} "
              f"({report['ingest']['spots']} spots); "
              f"identical stores: {report['ingest']['identical']}", flush=True)
    if "train" in parts:
        store = args.workdir / "store-serial"
        report["train"] = compare_train(store if store.exists()
                                        else args.workdir / f"store-w{args.workers}",
                                        args.workers, args.epochs, report["cores"])
        print(f"train (4 runs): serial / workers = {report['train']['ratio']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
