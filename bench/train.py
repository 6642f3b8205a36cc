"""Training speed of the neural models: seconds per epoch, peak memory, achieved FLOP rate.

    .venv/bin/python bench/train.py [--store DIR [--sample C]] [--epochs 3] [--json out.json]

1. Machine: CPU, cores, torch threads, load average.
2. Peak: best-of-N 4096² fp32 matmuls, measured before and after the runs (the larger is
   used, so the ratio is never flattered by a slow peak run).
3. Scenarios, each in its own spawned process so its peak RSS is its own:
   (a) a real store sample (``--store``): the whole-sample graph as ``asign train`` builds
       it, known layer = first labelled section (the her2st C setting);
   (b) a synthetic 14k-spot, 6-layer sample built directly as arrays: D = 1024, G = 250,
       9 region + 9 global tokens per spot, 12 same-layer + 8 cross-layer in-edges per spot.
   For asign3d and asign2d: ``--warmup`` epochs (default 1; the first builds the DGL
   graph), then ``--epochs`` timed epochs of one training step on the whole graph
   (forward + backward + SGD); with ``--minibatch-above 0`` one step per spatial block of
   ``--block-spots`` spots instead, and with ``--memory-gb`` the plan the budget chooses
   (train/batching.py: whole graph, or DGL-sampled mini-batches).
4. FLOPs per epoch: the *useful* work of one whole-graph step, whatever the plan: torch's
   FlopCounterMode over one MSAGNet forward+backward (dense ops) on the whole graph — or,
   with ``--flops-per-spot``, on a small synthetic graph of the same widths, scaled by
   N / n (every dense op is per spot or per tile) — plus an analytic estimate for the
   sparse parts (GAT message passing ≈ 3·2·E·h per layer forward+backward; propagation
   ≈ 3·(2·E·(G+1) + 6·N·G) per iteration). A rough estimate, stated as such; halo work and
   recomputation count as overhead. Peak RSS is the process peak after training (data
   included); ``train_kb_per_spot`` is (peak − RSS after the data) / N.
5. ``--baselines``: after training, idw (known layer → the others) and the CLI alone over
   the same graph, timed in the same process; ``--models none`` times them without training
   (the data and the baselines only).
6. ``--before DIR``: every scenario runs twice, first with the asign package at DIR (e.g.
   ``git archive main``, extracted as DIR/asign) and then with this checkout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info, matmul_peak, peak_rss_mib


def synthetic_sample(n_layers: int = 6, side: int = 49, dim: int = 1024, n_genes: int = 250,
                     k_same: int = 12, k_cross: int = 8, seed: int = 0,
                     structured: bool = False) -> Any:
    """A Visium-like block: a side×side grid (100 µm pitch) per layer, ~side²·layers spots.
    ``structured``: expression is a smooth field of (x, y, z) plus noise (a few spatial
    modes mixed per gene) instead of white noise."""
    from scipy.spatial import cKDTree

    from asign.train.data import SampleData

    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    base = np.stack([gx.ravel(), gy.ravel()], 1) * 100.0
    per = len(base)
    n = per * n_layers
    xy = np.concatenate([base + rng.normal(scale=10, size=base.shape) for _ in range(n_layers)])
    section = np.repeat(np.arange(n_layers, dtype=np.int32), per)
    src, dst, cross = [], [], []
    for z in range(n_layers):
        idx = np.flatnonzero(section == z)
        _, nb = cKDTree(xy[idx]).query(xy[idx], k=k_same + 1)
        src.append(idx[nb[:, 1:]].ravel())
        dst.append(np.repeat(idx, k_same))
        cross.append(np.zeros(idx.size * k_same, bool))
        others = [o for o in (z - 1, z + 1) if 0 <= o < n_layers]
        for o in others:  # k_cross in-edges split over the neighbouring layers
            k = k_cross // len(others)
            oidx = np.flatnonzero(section == o)
            _, nb = cKDTree(xy[oidx]).query(xy[idx], k=k)
            src.append(oidx[nb.reshape(-1, k)].ravel())
            dst.append(np.repeat(idx, k))
            cross.append(np.ones(idx.size * k, bool))
    src_a, dst_a, cross_a = np.concatenate(src), np.concatenate(dst), np.concatenate(cross)
    weight = np.where(cross_a, rng.uniform(0.1, 1.0, src_a.size),
                      1.0 / np.linalg.norm(xy[src_a] - xy[dst_a], axis=1)).astype(np.float32)
    tokens, feats = {}, {}
    for level, size in (("region", 256.0), ("global", 512.0)):
        cols = int(np.ceil(side * 100 / size)) + 1
        col = np.floor(xy[:, 0] / size).astype(int).clip(0, cols - 1)
        row = np.floor(xy[:, 1] / size).astype(int).clip(0, cols - 1)
        own = section.astype(np.int64) * cols * cols + row * cols + col
        tok = [own]
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    r, c = row + dr, col + dc
                    ok = (r >= 0) & (r < cols) & (c >= 0) & (c < cols)
                    tok.append(np.where(ok, section.astype(np.int64) * cols * cols + r * cols + c,
                                        -1))
        tokens[level] = np.stack(tok, 1)
        feats[level] = rng.normal(size=(n_layers * cols * cols, dim)).astype(np.float16)
    sections = tuple(f"L{z + 1}" for z in range(n_layers))
    return SampleData(
        sample_id="synthetic", genes=tuple(f"G{i}" for i in range(n_genes)), sections=sections,
        section_z=np.arange(1, n_layers + 1),
        spot_ids=np.array([f"s{i}" for i in range(n)], object),
        section=section, xy=xy, is_virtual=np.zeros(n, bool), has_label=np.ones(n, bool),
        labels=_labels(xy, section, n_genes, rng, structured),
        spot_feat=rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16),
        tokens=tokens, tile_feat=feats,
        src=src_a, dst=dst_a, weight=weight, cross=cross_a)


def _labels(xy: np.ndarray, section: np.ndarray, n_genes: int, rng: Any,
            structured: bool) -> np.ndarray:
    if not structured:
        return rng.normal(size=(len(xy), n_genes)).astype(np.float32)
    k = 6  # spatial modes, wavelengths 0.5–3 mm, drifting slowly with z
    freq = rng.uniform(2 * np.pi / 3000, 2 * np.pi / 500, (k, 2))
    phase = rng.uniform(0, 2 * np.pi, k)
    modes = np.cos(xy @ freq.T + phase + 0.05 * section[:, None]).astype(np.float32)
    mix = rng.normal(size=(k, n_genes)).astype(np.float32) / np.sqrt(k)
    out = modes @ mix
    out += 0.5 * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def _rss_mib() -> float:
    return peak_rss_mib()


def _scenario(kind: str, store: str | None, sample_id: str | None, model: str, epochs: int,
              hidden: int, threads: int | None, batching: dict[str, Any],
              synth: dict[str, Any] | None = None, flops: str = "whole", warmup: int = 1,
              baselines: bool = False, code: str | None = None) -> dict[str, Any]:
    """Runs in a fresh process: build the graph task, time epochs, count FLOPs."""
    import sys
    import time

    if code:  # before asign is first imported in this process
        sys.path.insert(0, code)
    import torch

    if threads:
        torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode

    from asign.train import loop
    from asign.train.config import TrainConfig

    rss0 = _rss_mib()
    if kind == "store":
        from asign.store import open_store
        from asign.train.data import load_sample

        st = open_store(Path(store))
        s = load_sample(st, sample_id)
        labelled = [sec for i, sec in enumerate(s.sections) if s.has_label[s.section == i].any()]
        visible = (labelled[0],)
        root = Path(store)
    else:
        s = synthetic_sample(**(synth or {}))
        visible = (s.sections[0],)
        root = Path(".")
    train = model != "none"  # "none": the data and the --baselines only
    cfg = TrainConfig(store=root, model=model if train else "asign3d", epochs=epochs + warmup,
                      hidden=hidden, **batching)
    task = loop.make_task(s, visible, "cpu")
    rss_data = _rss_mib()
    times: list[float] = []
    if train:
        net = loop.build(cfg, s.spot_feat.shape[1], len(s.genes), 0)
        times = []
        loop.fit(cfg, net, [task], 0, on_epoch=lambda e, loss, sec: times.append(sec))

    peak_train = _rss_mib()  # before FLOP counting, which keeps its own references

    # FLOPs of one step, dense part: MSAGNet forward + backward. The propagation is left
    # out of the counter (it would count its sparse N×N products as dense) and estimated.
    dense = 0
    if flops != "none" and train:  # a whole-graph step: on this graph, or per spot on a small one
        net.train()
        small_net, small = net, task
        if flops == "per-spot":
            small_s = synthetic_sample(**{**(synth or {}), "side": 20})
            small = loop.make_task(small_s, (small_s.sections[0],), "cpu")
            small_net = loop.build(cfg, small_s.spot_feat.shape[1], len(small_s.genes), 0)
        with FlopCounterMode(display=False) as counter:
            out = small_net(small.inputs)
            (out.spot.square().mean() + out.region.mean() + out.global_.mean()).backward()
        dense = counter.get_total_flops() * s.n_spots / small.inputs.num_nodes
    timed = {}
    if baselines:
        from asign.train.baselines import cli_alone, idw
        from asign.train.model import scale_edge_weights

        known = s.section == 0
        t = time.perf_counter()
        idw(s.xy[known], s.labels[known], s.xy[~known])
        timed["idw_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        w = scale_edge_weights(torch.as_tensor(s.weight), torch.as_tensor(s.cross.astype(int)))
        cli_alone(s.src, s.dst, w.numpy(), s.labels, known, n_iter=cfg.cli_iters)
        timed["cli_s"] = round(time.perf_counter() - t, 2)
        timed["peak_rss_with_baselines_mib"] = round(_rss_mib(), 0)
    e_used = int(len(s.src) if cfg.spec.cross_layer else (~s.cross).sum())
    g = len(s.genes)
    # GAT messages ≈ 2·E·h forward, ×3 with backward, 3 layers; CLI: one (E × G+1) SpMM and
    # ~6 elementwise (N × G) ops per iteration, ×3 with backward.
    sparse = 3 * 3 * 2 * e_used * hidden
    if cfg.spec.cli:
        sparse += 3 * cfg.cli_iters * (2 * e_used * (g + 1) + 6 * s.n_spots * g)
    return {
        "scenario": kind if kind == "synthetic" else f"store:{sample_id}", "model": model,
        "spots": s.n_spots, "edges": e_used, "layers": len(s.sections),
        "dim": int(s.spot_feat.shape[1]), "genes": g, "hidden": hidden,
        "code": code or "this checkout",
        "first_epoch_s": round(times[0], 3) if times else None,
        "epoch_s": round(float(np.median(times[warmup:] or times)), 3) if times else None,
        "epoch_s_all": [round(t, 3) for t in times],
        "gflop_per_epoch_dense": round(dense / 1e9, 2),
        "gflop_per_epoch_sparse_est": round(sparse / 1e9, 2),
        "rss_after_import_mib": round(rss0, 0), "rss_after_data_mib": round(rss_data, 0),
        "peak_rss_mib": round(peak_train, 0),
        "train_kb_per_spot": round((peak_train - rss_data) * 1024 / s.n_spots, 1),
        "batching": vars(task.cache["batching"]) if "batching" in task.cache else None,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()], **timed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=str, default=None, help="a store to time (scenario a)")
    ap.add_argument("--sample", type=str, default=None, help="sample of --store (default: first)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed epochs first (0: every epoch is timed, the first included)")
    ap.add_argument("--memory-gb", type=float, default=None, help="TrainConfig.memory_gb")
    ap.add_argument("--flops-per-spot", action="store_true",
                    help="count a whole-graph step's FLOPs on a small graph, scaled per spot")
    ap.add_argument("--baselines", action="store_true", help="time idw and the CLI alone too")
    ap.add_argument("--before", type=str, default=None,
                    help="a directory holding another asign package to time first")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--models", default="asign3d,asign2d")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--minibatch-above", type=int, default=None,
                    help="TrainConfig.minibatch_above (0: train on spatial blocks)")
    ap.add_argument("--block-spots", type=int, default=None, help="TrainConfig.block_spots")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--layers", type=int, default=6, help="synthetic: sections")
    ap.add_argument("--side", type=int, default=49, help="synthetic: grid side per section")
    ap.add_argument("--dim", type=int, default=1024, help="synthetic: feature dimension")
    ap.add_argument("--structured", action="store_true",
                    help="synthetic: spatially structured expression (default white noise)")
    ap.add_argument("--no-flops", action="store_true",
                    help="skip the whole-graph FLOP count (needed where it does not fit)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    if args.threads:  # the peak is measured with the same thread count as the runs
        import torch

        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": machine_info()}
    print("machine:", json.dumps(report["machine"]))
    peak = matmul_peak()
    jobs = []
    if args.store:
        sample = args.sample
        if sample is None:
            from asign.store import open_store

            sample = sorted(open_store(Path(args.store)).read("sections")
                            .column("sample_id").to_pylist())[0]
        jobs += [("store", args.store, sample, m) for m in args.models.split(",")]
    if not args.no_synthetic:
        jobs += [("synthetic", None, None, m) for m in args.models.split(",")]
    batching = {k: v for k, v in (("minibatch_above", args.minibatch_above),
                                  ("block_spots", args.block_spots),
                                  ("memory_gb", args.memory_gb)) if v is not None}
    flops = "none" if args.no_flops else "per-spot" if args.flops_per_spot else "whole"
    codes = [args.before, None] if args.before else [None]
    ctx = mp.get_context("spawn")
    rows = []
    for (kind, store, sample, model), code in ((j, c) for j in jobs for c in codes):
        with ctx.Pool(1) as pool:
            synth = {"n_layers": args.layers, "side": args.side, "dim": args.dim,
                     "structured": args.structured}
            row = pool.apply(_scenario, (kind, store, sample, model, args.epochs, args.hidden,
                                         args.threads, batching, synth, flops, args.warmup,
                                         args.baselines, code))
        rows.append(row)
        print("  done:", json.dumps(row), flush=True)
    peak = max(peak, matmul_peak())
    report["matmul_peak_fp32_gflops"] = round(peak, 1)
    print(f"matmul peak 4096² fp32 ({report['machine']['torch_threads']} threads): "
          f"{peak:.0f} GFLOP/s")
    for row in rows:
        if row["model"] == "none":
            print(f"  {row['scenario']:>12s} {row['spots']:6d} spots: idw {row.get('idw_s')} s, "
                  f"CLI {row.get('cli_s')} s, peak RSS {row['peak_rss_with_baselines_mib']} MiB "
                  f"(data {row['rss_after_data_mib']:.0f} MiB); load {row['loadavg_end']}")
            continue
        gflop = row["gflop_per_epoch_dense"] + row["gflop_per_epoch_sparse_est"]
        row["achieved_gflops_est"] = round(gflop / row["epoch_s"], 1)
        row["fraction_of_peak_est"] = round(gflop / row["epoch_s"] / peak, 3)
        print(f"  {row['scenario']:>12s} {row['model']:8s} {row['spots']:6d} spots "
              f"{row['edges']:7d} edges: {row['epoch_s']:7.3f} s/epoch "
              f"(first {row['first_epoch_s']:.2f} s), ~{gflop:.1f} GFLOP/epoch → "
              f"~{row['achieved_gflops_est']:.1f} GFLOP/s = {row['fraction_of_peak_est']:.1%} "
              f"of peak; peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"(data {row['rss_after_data_mib']:.0f} MiB, training "
              f"{row['train_kb_per_spot']} KB/spot); {row['code']}; load {row['loadavg_end']}")
    report["runs"] = rows
    report["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
