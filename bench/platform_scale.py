"""Graph, idw and CLI at platform scale: seconds and peak RSS for a synthetic 5-section
stack of square 16 µm bins (Visium HD-like), at several sizes.

    .venv/bin/python bench/platform_scale.py [--sizes 50000,200000] [--json out.json]

Each size runs in its own spawned process (its peak RSS is its own). Steps, each timed:
(1) the 3D graph as ingest builds it (12 same-layer kNN edges, top-8 cross-layer edges by
square-bin IoU × cosine of 256-d features); (2) idw from the known first section to the
others (KD-tree); (3) CLI propagation alone (sparse, 10 iterations) over that graph.
Expression is a smooth spatial field plus noise (bench/train.py's structured labels).
Throughput is reported as spots per second, and as a ratio to the smallest size's rate
measured in the same run (1.0 = linear time)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info, peak_rss_mib

LAYERS = 5
BIN_UM = 16.0
DIM = 256
GENES = 250


def _stack(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xy µm, layer, features float16, labels float32): each layer a square 16 µm grid,
    turned and shifted a little against the others, as aligned serial sections are."""
    from train import _labels

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n / LAYERS)))
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * BIN_UM
    g = g[: n // LAYERS]
    xy, layer = [], []
    for z in range(LAYERS):
        a = np.radians(rng.uniform(-1, 1))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        xy.append(g @ rot.T + rng.uniform(0, BIN_UM, 2))
        layer.append(np.full(len(g), z))
    xy_a, layer_a = np.concatenate(xy), np.concatenate(layer)
    labels = _labels(xy_a, layer_a, GENES, rng, structured=True)
    feats = (labels[:, :DIM] if GENES >= DIM else np.resize(labels, (len(xy_a), DIM)))
    feats = (feats + rng.standard_normal(feats.shape, dtype=np.float32)).astype(np.float16)
    return xy_a, layer_a, feats, labels


def _run(n: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from asign.ingest.graph import build_graph
    from asign.ingest.overlap import grid_angle
    from asign.train.baselines import cli_alone, idw

    xy, layer, feats, y = _stack(n)
    rss_data = peak_rss_mib()
    angle = np.zeros(len(xy))
    side = int(np.ceil(np.sqrt(n / LAYERS)))
    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
    for z in range(LAYERS):
        m = layer == z
        angle[m] = grid_angle(ij[: m.sum()], xy[m])
    out: dict[str, Any] = {"spots": int(len(xy)), "rss_after_data_mib": round(rss_data)}
    t = time.perf_counter()
    edges = build_graph(xy, layer, feats, radius_um=BIN_UM / 2, shape="square", angle_rad=angle)
    out["graph_s"] = round(time.perf_counter() - t, 2)
    out["edges"] = len(edges)
    known = layer == 0
    t = time.perf_counter()
    idw(xy[known], y[known], xy[~known])
    out["idw_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    cli_alone(edges.src, edges.dst, edges.weight, y, known)
    out["cli_s"] = round(time.perf_counter() - t, 2)
    out["peak_rss_mib"] = round(peak_rss_mib())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report: dict[str, Any] = {"machine": machine_info(torch_info=False), "runs": []}
    print("machine:", json.dumps(report["machine"]))
    ctx = mp.get_context("spawn")
    for n in (int(v) for v in args.sizes.split(",")):
        with ctx.Pool(1) as pool:
            row = pool.apply(_run, (n, args.threads))
        report["runs"].append(row)
    base = report["runs"][0]
    for row in report["runs"]:
        for step in ("graph", "idw", "cli"):
            rate = row["spots"] / max(row[f"{step}_s"], 1e-9)
            row[f"{step}_rate_vs_smallest"] = round(
                rate / (base["spots"] / max(base[f"{step}_s"], 1e-9)), 2)
        print(f"  {row['spots']:8d} spots {row['edges']:9d} edges: graph {row['graph_s']:7.1f} s "
              f"(×{row['graph_rate_vs_smallest']}), idw {row['idw_s']:6.1f} s "
              f"(×{row['idw_rate_vs_smallest']}), cli {row['cli_s']:6.1f} s "
              f"(×{row['cli_rate_vs_smallest']}); peak RSS {row['peak_rss_mib']} MiB "
              f"(data {row['rss_after_data_mib']} MiB)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
