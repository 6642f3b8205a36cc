"""What a user runs after training, on a trained store at its size: `asign export` to
AnnData and to SpatialData, `asign report`, `asign check`, and an `asign query` over the
predictions, each timed with its peak RSS.

    .venv/bin/python bench/export_scale.py --store STORE [--run asign3d] [--write-docs]

Every command is a separate process (``/usr/bin/time`` reads its peak RSS), one thread,
one after the other. The store is the one bench/platform_product.py leaves (for example
``/tmp/asign-platform-product/w9900/store``, 800k bins), or any store with a finished run.
The yardstick is the single-thread copy bandwidth measured in the same run: the export's
output bytes per second are reported as a share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _docs_record  # noqa: E402
from _machine import copy_bandwidth, machine_info, timed_command  # noqa: E402

ASIGN = [sys.executable, "-m", "asign.cli"]


def _size_gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--run", default="asign3d")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/asign-export-scale"))
    _docs_record.add_flag(ap)
    args = ap.parse_args()

    from asign.store import open_store

    store = open_store(args.store)
    bins = int(store.query("select count(*) as n from spots where not is_virtual")
               .to_pandas().n.iloc[0])
    mine = f"run_id in (select run_id from runs where name = '{args.run}')"
    preds = int(store.query(f"select count(*) as n from predictions where {mine}")
                .to_pandas().n.iloc[0])
    print(json.dumps({"seeds": [], "protocol": f"a trained store of {bins} bins (run "
                      f"{args.run}, {preds} prediction rows); commands one after another, "
                      "one thread", "machine": machine_info(torch_info=False)}))
    bandwidth = copy_bandwidth()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    base = [*ASIGN, "export", "--store", str(args.store), "--run", args.run]
    h5ad, zarr = args.workdir / "run.h5ad", args.workdir / "run.zarr"
    steps = [
        ("asign export --h5ad", [*base, "--h5ad", str(h5ad)], h5ad),
        ("asign export --spatialdata", [*base, "--spatialdata", str(zarr)], zarr),
        ("asign report", [*ASIGN, "report", "--store", str(args.store), "--run", args.run,
                          "--out", str(args.workdir / "report")], args.workdir / "report"),
        ("asign check", [*ASIGN, "check", "--store", str(args.store), "--json"], None),
        ("asign query (predictions per section)",
         [*ASIGN, "query", "--store", str(args.store), "--format", "csv",
          f"select section_id, count(*) as n, avg(value) as mean from predictions "
          f"where {mine} group by section_id order by section_id"], None),
    ]
    rows = []
    for i, (name, cmd, out) in enumerate(steps):
        sec, gb, _ = timed_command(cmd, args.workdir / f"step{i}.log")
        size = _size_gb(out) if out is not None else None
        rows.append((name, sec, gb, size))
        print(f"  {name}: {sec:.0f} s, {gb:.2f} GB", flush=True)

    print(f"\n### After training ({bins:,} bins, {preds:,} prediction "
          f"rows, one thread, copy bandwidth {bandwidth:.1f} GB/s)\n")
    print("| command | wall s | peak RSS GB | output GB | output GB/s (share of copy bandwidth) |")
    print("|---|---|---|---|---|")
    for name, sec, gb, size in rows:
        rate = (f"{size / sec:.2f} ({size / sec / bandwidth:.1%})" if size is not None
                else "–")
        out = f"{size:.2f}" if size is not None else "–"
        print(f"| `{name}` | {sec:.0f} | {gb:.2f} | {out} | {rate} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _docs_record.run(main, "export_scale")
