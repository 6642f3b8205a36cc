"""Torch threads as a budget: seconds per asign3d epoch for 1, 2 and all threads, alone and
beside competing CPU-bound processes.

    .venv/bin/python bench/threads.py [--side 30] [--layers 4] [--epochs 3] [--competitors 0,1]
                                      [--json out.json]

Each (threads, competitors) cell runs in its own spawned process: a synthetic Visium-like
block (bench/train.py's generator, ``side``² spots per layer), one warm-up epoch, then the
median of ``--epochs`` timed epochs. A competitor is a process doing single-threaded numpy
matmuls for the whole cell (another user's job on a shared machine). The load average at
start is printed: on a shared machine every number is beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info


def _compete(stop: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).normal(size=(256, 256))
    while not stop.is_set():
        a = np.tanh(a @ a)


def _cell(threads: int, side: int, layers: int, dim: int, epochs: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from asign.train import loop
    from asign.train.config import TrainConfig
    from train import synthetic_sample

    s = synthetic_sample(n_layers=layers, side=side, dim=dim, n_genes=250)
    cfg = TrainConfig(store=Path("."), model="asign3d", epochs=epochs + 1, hidden=128,
                      threads=threads)
    task = loop.make_task(s, (s.sections[0],), "cpu")
    net = loop.build(cfg, dim, len(s.genes), 0)
    times: list[float] = []
    loop.fit(cfg, net, [task], 0, on_epoch=lambda e, loss, sec: times.append(sec))
    return {"threads": threads, "spots": s.n_spots,
            "epoch_s": round(float(np.median(times[1:])), 3),
            "epoch_s_all": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--competitors", default="0,1")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0))
    counts = sorted({1, 2, cores})
    report: dict[str, Any] = {"machine": machine_info(), "cells": []}
    print(f"cores {cores}, load average {os.getloadavg()[0]:.2f} at start")
    ctx = mp.get_context("spawn")
    for n_comp in (int(c) for c in args.competitors.split(",")):
        stop = ctx.Event()
        comps = [ctx.Process(target=_compete, args=(stop,)) for _ in range(n_comp)]
        for p in comps:
            p.start()
        try:
            for t in counts:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                with ctx.Pool(1) as pool:
                    row = pool.apply(_cell, (t, args.side, args.layers, args.dim, args.epochs))
                row |= {"competitors": n_comp, "loadavg_1min": round(load, 2),
                        "cell_s": round(time.perf_counter() - t0, 1)}
                report["cells"].append(row)
                print(f"  competitors {n_comp}  threads {t}: {row['epoch_s']:.3f} s/epoch "
                      f"({row['spots']} spots; load {load:.2f})", flush=True)
        finally:
            stop.set()
            for p in comps:
                p.join()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
