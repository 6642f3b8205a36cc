"""Training time and memory against the number of spots, in one run: is an epoch linear in N
and is the training memory bounded by the budget, whatever N?

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_scaling.py [--sides 100,141,200,283]
        [--memory-gb 4] [--threads 1] [--write-docs]

Each size is bench/train.py's synthetic stack (``--layers 5``, a ``side``×``side`` grid per
section at 100 µm pitch, 256-d features as from ``resnet18-l3-64``, 250 spatially structured
genes, 12 same-layer + 8 cross-layer in-edges per spot), trained as ``asign train --model
asign3d --memory-gb G`` trains it (the plan the budget picks, recorded): one epoch, the
first, timed; then idw and the CLI alone on the same data. Every size runs in its own
spawned process, one after the other, so its peak RSS is its own and no two compete for the
cores. The fp32 matmul peak is read before and after (the larger is used) with the same
thread count. ``rate`` is spots per second relative to the smallest size (1.0 = linear
time); training KB per spot is (peak RSS − RSS after the data) / N.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _docs_record  # noqa: E402
from _machine import machine_info, matmul_peak  # noqa: E402

from train import _scenario  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="100,141,200,283",
                    help="grid side per section; 5 sections each (50k, 100k, 200k, 400k spots)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--memory-gb", type=float, default=4.0, help="TrainConfig.memory_gb")
    ap.add_argument("--threads", type=int, default=1)
    _docs_record.add_flag(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(json.dumps({"seeds": [0], "protocol": "synthetic stack (bench/train.py, seed 0), "
                      "network seed 0, first epoch timed, sizes run one after another",
                      "machine": machine}))
    peak = matmul_peak()
    ctx = mp.get_context("spawn")
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        synth = {"n_layers": args.layers, "side": side, "dim": 256, "structured": True}
        with ctx.Pool(1) as pool:
            row = pool.apply(_scenario, ("synthetic", None, None, "asign3d", 1, 256,
                                         args.threads, {"memory_gb": args.memory_gb}, synth,
                                         "per-spot", 0, True))
        print(f"  {row['spots']} spots: {row['epoch_s']} s, peak {row['peak_rss_mib']} MiB, "
              f"load {row['loadavg_end']}", flush=True)
        rows.append(row)
    peak = max(peak, matmul_peak())

    print(f"\n### Training time against size ({args.layers} sections, asign3d, "
          f"--memory-gb {args.memory_gb:g}, {args.threads} thread(s), fp32 matmul peak "
          f"{peak:.0f} GFLOP/s)\n")
    print("| spots | plan: batches (largest input) | s / epoch | µs / spot | rate vs smallest "
          "| peak RSS GB (data) | training KB / spot | fraction of matmul peak | idw s | CLI s "
          "| load at end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base_rate = rows[0]["spots"] / rows[0]["epoch_s"]
    for row in rows:
        plan = row["batching"] or {}
        gflop = row["gflop_per_epoch_dense"] + row["gflop_per_epoch_sparse_est"]
        rate = row["spots"] / row["epoch_s"] / base_rate
        print(f"| {row['spots']:,} | {plan.get('kind', 'whole graph')}: "
              f"{plan.get('blocks', 1)} ({plan.get('max_block_nodes', row['spots']):,} nodes) "
              f"| {row['epoch_s']:.0f} "
              f"| {row['epoch_s'] / row['spots'] * 1e6:.0f} | {rate:.2f} "
              f"| {row['peak_rss_mib'] / 1024:.2f} ({row['rss_after_data_mib'] / 1024:.2f}) "
              f"| {row['train_kb_per_spot']:.1f} | {gflop / row['epoch_s'] / peak:.1%} "
              f"| {row['idw_s']} | {row['cli_s']} | {row['loadavg_end'][0]} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _docs_record.run(main, "train_scaling")
