"""Benchmark of the 3D spot graph (DESIGN §3.6): build time and peak memory on synthetic
6-layer samples of 10k, 100k and 1M spots, the fitted growth exponent, and two machine
limits measured in the same run (memory copy bandwidth and KD-tree kNN throughput).

    .venv/bin/python bench/graph.py                      # default sizes
    .venv/bin/python bench/graph.py --sizes 10000 100000 --json out.json

Each build runs in a fresh subprocess, so its peak RSS (``VmHWM``) is its own.

Features: 1024-d float16 (the ResNet50-layer3 width of DESIGN §3.5), non-negative uniform
values (cosines around 0.75, like post-ReLU pooled features), stored as an ``.npy`` file
and opened with ``np.load(mmap_mode="r")`` — the way the pipeline hands a large embedding
table to the graph builder. At 1M spots that file alone is 2 GB, so it is not held in
memory: the builder reads it in spatial blocks and releases the mapped pages after each
block. Peak RSS therefore counts the file pages of at most one block; the OS page cache
may still hold the whole file, outside the process. ``--control`` adds a run where the
memmap is copy-on-write (mode "c"), which the builder does not release, to show the RSS
the same build reaches when every touched page stays mapped.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine
import numpy as np

LAYERS = 6
DIM = 1024
GEOMETRIES = {
    # name: (lattice, pitch µm, spot diameter µm)
    "visium": ("hex", 100.0, 55.0),
    "her2st": ("square", 200.0, 100.0),
}


def synthetic_sample(
    n_spots: int, geometry: str, layers: int = LAYERS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Spot centres (µm) and layer of a stack of lattices, each layer rotated by up to ±3°
    and shifted by up to half a pitch (residual misalignment), with 2 µm spot jitter."""
    lattice, pitch, _ = GEOMETRIES[geometry]
    rng = np.random.default_rng(seed)
    sizes = [n_spots // layers + (i < n_spots % layers) for i in range(layers)]
    xy_parts = []
    for n in sizes:
        side = math.ceil(math.sqrt(n))
        row, col = np.divmod(np.arange(n), side)
        if lattice == "hex":
            pts = np.stack([(col + 0.5 * (row % 2)) * pitch, row * pitch * math.sqrt(3) / 2], 1)
        else:
            pts = np.stack([col * pitch, row * pitch], 1).astype(np.float64)
        centre = pts.mean(axis=0)
        theta = np.deg2rad(rng.uniform(-3.0, 3.0))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        shift = rng.uniform(-pitch / 2, pitch / 2, 2)
        pts = (pts - centre) @ rot.T + centre + shift + rng.normal(0.0, 2.0, pts.shape)
        xy_parts.append(pts)
    layer = np.repeat(np.arange(layers), sizes)
    return np.concatenate(xy_parts), layer


def write_features(path: Path, n_spots: int, dim: int = DIM, seed: int = 1) -> None:
    """An .npy of (n, dim) float16 written in row blocks with plain file writes, so the
    writer never maps (or holds) the whole matrix."""
    rng = np.random.default_rng(seed)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16))}
    header.update(fortran_order=False, shape=(n_spots, dim))
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, n_spots, 16384):
            rows = min(16384, n_spots - start)
            fh.write(rng.random((rows, dim), dtype=np.float32).astype(np.float16).tobytes())


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One build in this (fresh) process; prints one JSON line."""
    from asign.ingest.graph import (
        concat_edges,
        cross_layer_edges,
        default_search_radius,
        same_layer_edges,
    )

    _, _, diameter = GEOMETRIES[args.geometry]
    xy, layer = synthetic_sample(args.child, args.geometry)
    features = np.load(args.features, mmap_mode=args.mmap_mode)
    radius = diameter / 2
    rss_before = _proc_status_mb("VmRSS")
    # The body of build_graph, timed per stage; no local names for the parts, so that
    # concat_edges can free each input field as it copies it (as build_graph does).
    t0 = time.perf_counter()
    parts = [same_layer_edges(xy, layer, k=12)]
    t1 = time.perf_counter()
    parts.append(cross_layer_edges(xy, layer, features, radius, top_k=8, combine=args.combine))
    t2 = time.perf_counter()
    n_same, n_cross = len(parts[0]), len(parts[1])
    edges = concat_edges(parts)
    t3 = time.perf_counter()
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark across fork+exec
    # into ru_maxrss, while VmHWM belongs to this process's own address space.
    peak = _proc_status_mb("VmHWM")
    result = {
        "n": args.child,
        "geometry": args.geometry,
        "combine": args.combine,
        "mmap_mode": args.mmap_mode,
        "search_radius_um": default_search_radius(xy, layer, radius, args.combine),
        "edges": len(edges),
        "same_edges": n_same,
        "cross_edges": n_cross,
        "edge_mb": sum(getattr(edges, f).nbytes for f in edges.__dataclass_fields__) / 2**20,
        "seconds": t3 - t0,
        "same_s": t1 - t0,
        "cross_s": t2 - t1,
        "concat_s": t3 - t2,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "rss_file_end_mb": _proc_status_mb("RssFile"),
        "feature_file_mb": Path(args.features).stat().st_size / 2**20,
    }
    print(json.dumps(result))


def machine_limits() -> dict[str, float]:
    """Single-thread yardsticks for the same run: large-array copy bandwidth (the graph's
    feature stage streams rows) and KD-tree kNN throughput (its geometric stage)."""
    from scipy.spatial import cKDTree

    pts = np.random.default_rng(0).random((1_000_000, 2))
    tree = cKDTree(pts)
    knn_s = min(_timed(lambda: tree.query(pts[:200_000], k=13)) for _ in range(2))
    return {"copy_gb_s": _machine.copy_bandwidth(2**28), "knn13_per_s": 200_000 / knn_s}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine_info() -> dict[str, str]:
    return {k: (" ".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in _machine.machine_info(torch_info=False).items()}


def run_child(n: int, geometry: str, combine: str, features: Path, mmap_mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--geometry", geometry]
    cmd += ["--combine", combine, "--features", str(features), "--mmap-mode", mmap_mode]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth_exponent(rows: list[dict]) -> float:
    if len(rows) < 2:
        return float("nan")
    logn = np.log([r["n"] for r in rows])
    logt = np.log([r["seconds"] for r in rows])
    return float(np.polyfit(logn, logt, 1)[0])


def print_table(rows: list[dict], limits: dict[str, float]) -> None:
    base = rows[0]
    base_rate = base["seconds"] / (base["n"] * math.log(base["n"]))
    head = (
        f"{'N':>9} {'geom':>6} {'comb':>7} {'mmap':>4} {'edges':>10} {'same':>7} {'cross':>7}"
        f" {'total s':>8} {'peak MB':>8} {'Δ MB':>7} {'edge MB':>8} {'s/NlogN':>8}"
        f" {'×kNN':>6} {'feat GB/s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        rate = r["seconds"] / (r["n"] * math.log(r["n"])) / base_rate
        knn_equiv = r["seconds"] / (r["n"] / limits["knn13_per_s"])
        feat_gb_s = r["feature_file_mb"] * 2**20 / r["cross_s"] / 1e9
        print(
            f"{r['n']:>9} {r['geometry']:>6} {r['combine']:>7} {r['mmap_mode']:>4}"
            f" {r['edges']:>10} {r['same_s']:>7.2f} {r['cross_s']:>7.2f} {r['seconds']:>8.2f}"
            f" {r['peak_rss_mb']:>8.0f} {r['peak_rss_mb'] - r['rss_before_mb']:>7.0f}"
            f" {r['edge_mb']:>8.0f} {rate:>8.2f} {knn_equiv:>6.1f} {feat_gb_s:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--her2st-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--sum-sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; best time kept")
    parser.add_argument("--control", action="store_true", help="also run copy-on-write memmap")
    parser.add_argument("--json", type=Path, help="write all rows and machine info here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--geometry", default="visium", help=argparse.SUPPRESS)
    parser.add_argument("--combine", default="product", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--mmap-mode", default="r", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    limits = machine_limits()
    print(
        f"limits (1 thread): copy {limits['copy_gb_s']:.1f} GB/s (read+write), "
        f"cKDTree k=13 query on 1M points {limits['knn13_per_s'] / 1e3:.0f}k queries/s"
    )
    print(
        f"features: {DIM}-d float16 .npy opened with np.load(mmap_mode='r'), read in spatial"
        " blocks, mapped pages released per block; the OS page cache is outside the RSS"
    )
    jobs = [(n, "visium", "product", "r") for n in args.sizes]
    jobs += [(n, "her2st", "product", "r") for n in args.her2st_sizes]
    jobs += [(n, "visium", "sum", "r") for n in args.sum_sizes]
    if args.control:
        jobs.append((max(args.sizes), "visium", "product", "c"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="asign-bench-graph-") as tmp:
        for n in sorted({job[0] for job in jobs}):
            feats = Path(tmp) / f"features_{n}.npy"
            write_features(feats, n)
            for job in [j for j in jobs if j[0] == n]:
                runs = [run_child(*job[:3], feats, job[3]) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["seconds"])
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                best["repeats"] = len(runs)
                rows.append(best)
                print(
                    f"  done N={n} {job[1]} {job[2]} mmap={job[3]}: {rows[-1]['seconds']:.2f} s",
                    flush=True,
                )
            feats.unlink()
    main_rows = [
        r
        for r in rows
        if (r["geometry"], r["combine"], r["mmap_mode"]) == ("visium", "product", "r")
    ]
    other = [r for r in rows if r not in main_rows]
    print()
    print(f"best of {args.repeat} fresh processes per row (time); peak RSS is the worst run.")
    print("Δ MB = peak RSS − RSS before the build (interpreter, libraries, coordinates);")
    print("s/NlogN = seconds/(N ln N) relative to the first row; ×kNN = build time in units")
    print("of one k=13 cKDTree query per spot; feat GB/s = feature file size / cross-stage s.")
    print_table(main_rows + other, limits)
    print(f"\nfitted growth exponent (visium, product): t ∝ N^{growth_exponent(main_rows):.3f}")
    peak_1m = [r["peak_rss_mb"] for r in main_rows if r["n"] >= 1_000_000]
    if peak_1m:
        verdict = "under" if max(peak_1m) < 2048 else "OVER"
        print(f"1M-spot peak RSS {max(peak_1m):.0f} MB: {verdict} the 2 GB budget")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "limits": limits, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
