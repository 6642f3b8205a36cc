"""Scale benchmark: synthetic samples of 10k, 42k (DLPFC-sized, 4 layers) and 200k spots
(10 layers) through the whole product — ingest, training, inference — with wall time,
peak RSS and the growth exponent of every stage.

    .venv/bin/python bench/scale.py                                  # all scenarios
    .venv/bin/python bench/scale.py --scenarios 10k 42k --epochs 2 --json out.json
    .venv/bin/python bench/scale.py --scenarios 200k --stages train infer   # resume later stages
    .venv/bin/python bench/scale.py --scenarios 42k --stages synth --workers 2  # serial/2 workers

Run by hand, not in CI (the 200k scenario takes about an hour on 2 cores).

Each stage of each scenario runs in its own fresh process, so its peak RSS (``VmHWM``) is
its own; results are kept in ``WORKDIR/results.json``, so an interrupted run continues
where it stopped (``--force`` re-runs). Stages:

- ``synth``    ``commands.synthetic.make_demo_sample`` writes the manifest folder (JPEGs at
               4 µm/px, counts and spot CSVs, 250 genes);
- ``register`` ... ``graph``  ``asign ingest`` one step at a time (manifest reader, ANTs
               alignment, 224-equivalent patches stored at the encoder's 64 px, the small
               ``resnet18-l3-64`` encoder with ``--weights random``, the sparse 3D graph);
- ``train``    ``asign train --model asign3d --epochs E`` (within-sample, known = first
               layer): load, E epochs, validation, whole-sample inference, result tables;
               samples above ``TrainConfig.minibatch_above`` spots train on spatial blocks;
- ``infer``    load + block-wise inference alone (an untrained model: same cost).

Limits measured in the same run (before and after the scenarios; the larger is used, so
ratios are never flattered): fp32 and bf16 4096² matmul peaks and single-thread copy
bandwidth. The encoder's throughput is reported as a fraction of the bf16 peak (it runs in
bf16 on a CPU with native bf16), training and inference as a fraction of the fp32 peak
(FLOPs of one block counted by torch's FlopCounterMode, scaled to the nodes processed).
The machine is shared: the load average is recorded next to every stage.

``--workers N`` adds serial vs N local Dask workers, measured one after the other in the
same run (bench/cluster.py): a full ``asign ingest`` of each scenario's sample into two fresh
stores (ratio, identical stores, the cluster's tasks, driver commit seconds and the
workers' compute seconds), four ``asign3d`` training runs on the serial store, and the
per-task overhead of 200 no-op / 1 MB tasks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import copy_bandwidth, loadavg, machine_info, matmul_peak, peak_rss_mib

#: name → (layers, grid side): spots are the grid points under the tissue outline (~55 %).
SCENARIOS: dict[str, tuple[int, int]] = {
    "10k": (4, 68),
    "42k": (4, 140),
    "200k": (10, 183),
}
STAGES = ("synth", "register", "align", "patches", "embed", "graph", "train", "infer")
INGEST_STAGES = ("register", "align", "patches", "embed", "graph")
UM_PER_PX = 4.0
N_GENES = 250
ENCODER = "resnet18-l3-64"


def _paths(workdir: Path, scenario: str) -> tuple[Path, Path]:
    return workdir / scenario / "sample", workdir / scenario / "store"


def _image_px(grid: int) -> int:
    from asign.commands.synthetic import SPOT_PITCH_UM

    return int((grid - 1) * SPOT_PITCH_UM / UM_PER_PX * 1.08) + 8


# --------------------------------------------------------------------------- stages


def stage_synth(scenario: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from asign.commands.synthetic import make_demo_sample

    layers, grid = SCENARIOS[scenario]
    sample, _ = _paths(workdir, scenario)
    make_demo_sample(sample, n_layers=layers, grid=grid, seed=0, image_px=_image_px(grid),
                     um_per_px=UM_PER_PX, n_genes=N_GENES)
    n = sum(sum(1 for _ in open(p)) - 1 for p in (sample / "spots").glob("*.csv"))
    mb = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()) / 2**20
    return {"n_spots": n, "layers": layers, "image_px": _image_px(grid), "disk_mb": round(mb)}


def stage_ingest(step: str, scenario: str, workdir: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    from asign.ingest.config import IngestConfig
    from asign.ingest.pipeline import run_pipeline

    sample, store = _paths(workdir, scenario)
    cfg = IngestConfig(sources=(sample,), store=store, format="manifest", steps=(step,),
                       n_genes=N_GENES, encoder=ENCODER, weights="random")
    summary = run_pipeline(cfg)
    info: dict[str, Any] = {"ran": summary["ran"]}
    for per_step in summary["samples"].values():
        info.update({k: v for k, v in (per_step.get(step) or {}).items()
                     if isinstance(v, int | float | str)})
    if step == "embed":
        info["gflop_per_image"] = _encoder_gflop()
    lmdb = store / "vectors.lmdb"
    if lmdb.exists():
        info["lmdb_mb"] = round(sum(p.stat().st_size for p in lmdb.rglob("*")) / 2**20)
    return info


def _encoder_gflop() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from asign.encoders import get_encoder_spec, load_encoder

    px = get_encoder_spec(ENCODER).input_px
    enc = load_encoder(ENCODER, "random")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        enc.module(torch.zeros(1, 3, px, px))
    return counter.get_total_flops() / 1e9


def stage_train(scenario: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from asign.train import TrainConfig, run

    _, store = _paths(workdir, scenario)
    cfg = TrainConfig(store=store, model="asign3d", run=f"scale-e{args.epochs}",
                      epochs=args.epochs)
    t0, cpu0 = time.perf_counter(), os.times()
    result = run(cfg)
    seconds = round(time.perf_counter() - t0, 2)
    cpu = os.times()
    metrics = result.metrics.to_pandas()
    pcc = metrics[metrics.metric == "pcc_gene"].value.mean()
    t = result.timings
    info = {"status": result.status, "pcc_gene_mean": round(float(pcc), 4),
            "load_s": t.get("load_s"), "epoch_s_mean": t.get("epoch_s_mean"),
            "epochs": t.get("epochs_run"), "fold_s": (t.get("fold_s") or [None])[0],
            "batching": t.get("batching"),
            "minibatch_above": cfg.minibatch_above, "block_spots": cfg.block_spots,
            "seconds": seconds, "peak_rss_mib": round(peak_rss_mib()),  # before the FLOPs
            "cpu_s": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 1)}
    info.update(_flops_per_node(cfg, store))
    return info


def stage_infer(scenario: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from asign.store import open_store
    from asign.train import TrainConfig, loop
    from asign.train.data import load_sample

    _, store = _paths(workdir, scenario)
    cfg = TrainConfig(store=store, model="asign3d", epochs=1)
    t0 = t = time.perf_counter()
    cpu0 = os.times()
    sample = load_sample(open_store(store), next(iter(_sample_ids(store))))
    task = loop.make_task(sample, (sample.sections[0],), "cpu")
    load_s = time.perf_counter() - t
    model = loop.build(cfg, sample.spot_feat.shape[1], len(sample.genes), 0)
    t = time.perf_counter()
    pred = loop.predict(cfg, model, task)
    predict_s = time.perf_counter() - t
    cpu = os.times()
    info = {"load_s": round(load_s, 2), "predict_s": round(predict_s, 2),
            "finite": bool(np.isfinite(pred).all()), "n_spots": int(sample.n_spots),
            "n_edges": int(len(sample.src)), "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mib": round(peak_rss_mib()),
            "cpu_s": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 1)}
    del sample, task, model, pred
    info.update(_flops_per_node(cfg, store))
    return info


def _sample_ids(store: Path) -> list[str]:
    from asign.store import open_store

    return sorted(set(open_store(store).read("sections").column("sample_id").to_pylist()))


def _flops_per_node(cfg: Any, store: Path) -> dict[str, Any]:
    """GFLOP per node of the model on one block of the sample: forward + backward
    (training) and forward alone (inference), dense operations counted by FlopCounterMode
    (recomputation by activation checkpointing not included: useful FLOPs only). The
    sparse kernels are estimated: GAT messages 2·E·h per layer, the CLI's SpMMs
    2·E·(G + 1) per step; ×3 with backward. The CLI is left out of the counter, which
    would count its sparse products as dense N×N ones."""
    from torch.utils.flop_counter import FlopCounterMode

    from asign.store import open_store
    from asign.train import batching, loop
    from asign.train.data import load_sample

    sample = load_sample(open_store(store), _sample_ids(store)[0])
    keep = batching.spatial_blocks(sample.xy, min(cfg.block_spots, sample.n_spots))[0]
    sub = sample.subset(np.isin(np.arange(sample.n_spots), keep))
    task = loop.make_task(sub, (sub.sections[0],), "cpu")
    model = loop.build(cfg, sub.spot_feat.shape[1], len(sub.genes), 0)
    e, g, layers = int(len(sub.src)), len(sub.genes), len(model.net.gats)
    sparse = layers * 2 * e * cfg.hidden + cfg.cli_iters * 2 * e * (g + 1)
    # Forward counted in training mode: in eval mode the transformer layers take a fused
    # kernel that the counter does not see (same FLOPs).
    model.train()
    with FlopCounterMode(display=False) as fwd:
        res = model(task.inputs)
        loss = res.spot.square().mean() + res.region.mean() + res.global_.mean()
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    f, b, n = fwd.get_total_flops(), bwd.get_total_flops(), sub.n_spots
    return {"gflop_per_node_train": round((f + b + 3 * sparse) / n / 1e9, 5),
            "gflop_per_node_infer": round((f + sparse) / n / 1e9, 5)}


STAGE_FUNCS = {"synth": stage_synth, "train": stage_train, "infer": stage_infer}


def child(stage: str, scenario: str, workdir: Path, args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    load0 = loadavg()
    cpu0 = os.times()
    t = time.perf_counter()
    if stage in INGEST_STAGES:
        info = stage_ingest(stage, scenario, workdir, args)
    else:
        info = STAGE_FUNCS[stage](scenario, workdir, args)
    seconds = time.perf_counter() - t
    cpu = os.times()
    # CPU seconds (all threads): less sensitive than wall time to other users' load
    info.setdefault("cpu_s", round(cpu.user + cpu.system - cpu0.user - cpu0.system, 1))
    # train/infer report their own time and peak, taken before the FLOP count
    row = {"scenario": scenario, "stage": stage, "seconds": round(seconds, 2),
           "peak_rss_mib": round(peak_rss_mib()), "loadavg_start": load0,
           "loadavg_end": loadavg(), **info}
    print("RESULT " + json.dumps(row, default=str), flush=True)


# --------------------------------------------------------------------------- driver


def run_stage(stage: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", stage, "--scenarios", scenario,
           "--workdir", str(args.workdir), "--epochs", str(args.epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"stage {stage} of {scenario} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def limits() -> dict[str, float]:
    import torch

    return {"fp32_gflops": matmul_peak(torch.float32), "bf16_gflops": matmul_peak(torch.bfloat16),
            "copy_gb_s": copy_bandwidth()}


def growth_exponent(ns: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(N)."""
    ok = [(n, v) for n, v in zip(ns, values, strict=True) if v and v > 0]
    if len(ok) < 2:
        return float("nan")
    return float(np.polyfit(np.log([n for n, _ in ok]), np.log([v for _, v in ok]), 1)[0])


def throughput(row: dict[str, Any], n: int, peak: dict[str, float],
               results: dict[str, dict]) -> str:
    """Throughput as a fraction of a limit measured in the same run, where one applies."""
    s = row["seconds"]
    if row["stage"] == "embed" and row.get("n_vectors") and row.get("gflop_per_image"):
        gflops = row["n_vectors"] * row["gflop_per_image"] / s
        return f"{gflops:.0f} GFLOP/s = {gflops / peak['bf16_gflops']:.2f} bf16 peak"
    if row["stage"] == "train" and row.get("gflop_per_node_train"):
        # an epoch: one step per block (halo nodes included), then validation inference
        blocks = row.get("batching") or {}
        processed = sum(b["nodes_per_epoch"] for b in blocks.values()) or n
        gflop = processed * row["gflop_per_node_train"] + n * row["gflop_per_node_infer"]
        gflops = gflop / (row.get("epoch_s_mean") or s)
        return f"{gflops:.1f} GFLOP/s = {gflops / peak['fp32_gflops']:.2f} fp32 peak"
    if row["stage"] == "infer" and row.get("gflop_per_node_infer"):
        gflops = n * row["gflop_per_node_infer"] / (row.get("predict_s") or s)
        return f"{gflops:.1f} GFLOP/s = {gflops / peak['fp32_gflops']:.2f} fp32 peak"
    return f"{n / s:,.0f} spots/s"


def report(results: dict[str, dict], peak: dict[str, float], scenarios: list[str]) -> str:
    ns = {sc: results[f"{sc}/synth"]["n_spots"] for sc in scenarios if f"{sc}/synth" in results}
    lines = ["| stage | " + " | ".join(f"{sc} ({ns.get(sc, '?'):,} spots)" if sc in ns else sc
                                         for sc in scenarios)
             + " | exponent (all) | exponent (last two) |",
             "|---|" + "---|" * len(scenarios) + "---|---|"]
    for stage in STAGES:
        cells, xs, ts = [], [], []
        for sc in scenarios:
            row = results.get(f"{sc}/{stage}")
            if row is None:
                cells.append("–")
                continue
            secs = row["seconds"]
            if stage == "train" and row.get("epoch_s_mean"):
                extra = f", {row['epoch_s_mean']:.0f} s/epoch"
            elif stage == "infer":
                extra = f", predict {row['predict_s']:.0f} s"
            else:
                extra = ""
            cells.append(f"{secs:,.0f} s{extra}; {row['peak_rss_mib'] / 1024:.2f} GiB; "
                         f"{throughput(row, ns.get(sc, 1), peak, results)}; "
                         f"load {row['loadavg_start']:.1f}")
            xs.append(ns.get(sc, float('nan')))
            ts.append(row.get("epoch_s_mean") if stage == "train" else
                      row.get("predict_s") if stage == "infer" else secs)
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {growth_exponent(xs, ts):.2f} | "
                     f"{growth_exponent(xs[-2:], ts[-2:]):.2f} |")
    return "\n".join(lines)


def compare(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    """Serial vs ``--workers`` on one scenario (bench/cluster.py), the sample synthesised
    first if the stages did not."""
    from cluster import compare_ingest, compare_train, overhead

    sample, _ = _paths(args.workdir, scenario)
    if not (sample / "manifest.toml").exists():
        run_stage("synth", scenario, args)
    work = args.workdir / scenario
    cores = len(os.sched_getaffinity(0))
    out: dict[str, Any] = {"cores": cores}
    if "overhead" in args.workers_parts:
        out["overhead"] = overhead(args.workers)
        print(f"  {scenario} overhead: {out['overhead']}", flush=True)
    if "ingest" in args.workers_parts:
        ingest = ["--format", "manifest", "--n-genes", str(N_GENES), "--encoder", ENCODER,
                  "--weights", "random"]
        out["ingest"] = compare_ingest(sample, work, args.workers, ingest)
    if "train" in args.workers_parts:
        store = work / "store-serial"
        out["train"] = compare_train(store if store.exists() else work / f"store-w{args.workers}",
                                     args.workers, args.epochs, cores)
    return out


def _save(path: Path, rows: dict[str, dict], **top: Any) -> dict[str, Any]:
    """Merge ``rows`` (and top-level entries) into the results file, re-read first so
    drivers running other scenarios at the same time keep their rows; atomic replace."""
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload.setdefault("results", {}).update(rows)
    payload.update(top)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/asign-scale"))
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (timing only)")
    ap.add_argument("--force", action="store_true", help="re-run stages that have results")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--workers", type=int, default=0,
                    help="also measure serial vs N local Dask workers (ingest, four train runs, "
                         "overhead)")
    ap.add_argument("--workers-parts", nargs="+", default=["overhead", "ingest", "train"],
                    choices=["overhead", "ingest", "train"],
                    help="which comparisons --workers runs")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.scenarios[0], args.workdir, args)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    results: dict[str, dict] = saved.get("results", {})
    info = machine_info()
    print("machine:", json.dumps(info), flush=True)
    peak = limits()
    print(f"limits: fp32 {peak['fp32_gflops']:.0f} GFLOP/s, bf16 {peak['bf16_gflops']:.0f} "
          f"GFLOP/s, copy {peak['copy_gb_s']:.1f} GB/s", flush=True)
    for sc in args.scenarios:
        for stage in args.stages:
            key = f"{sc}/{stage}"
            if key in results and not args.force:
                continue
            row = run_stage(stage, sc, args)
            print(f"  {key}: {row['seconds']:.1f} s, peak {row['peak_rss_mib']:.0f} MiB, "
                  f"load {row['loadavg_start']:.1f}→{row['loadavg_end']:.1f}", flush=True)
            results = _save(store, {key: row})["results"]
    if args.workers:
        for sc in args.scenarios:  # merged: parts measured in an earlier run are kept
            key = f"{sc}/workers{args.workers}"
            results = _save(store, {key: {**results.get(key, {}), **compare(sc, args)}})["results"]
    end = limits()
    for k in peak:
        peak[k] = max(peak[k], end[k], saved.get("limits", {}).get(k, 0.0))
    info["loadavg_end"] = os.getloadavg()
    payload = _save(store, {}, machine=info, limits=peak)
    results = payload["results"]
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    done = [sc for sc in SCENARIOS if f"{sc}/synth" in results]
    print()
    print(report(results, peak, done))
    if args.workers:
        print()
        from cluster import workers_table

        print(workers_table(results, args.workers, args.scenarios))
    big = [results[k]["peak_rss_mib"] for k in results if k.startswith("200k/")
           and "peak_rss_mib" in results[k]]
    if big:
        verdict = "under" if max(big) * 2**20 < 8e9 else "OVER"
        print(f"\n200k-spot peak RSS over all stages: {max(big) / 1024:.2f} GiB "
              f"({verdict} the 8 GB budget)")
    growth = math.log(2e5 * math.log(2e5) / (1e4 * math.log(1e4))) / math.log(20)
    print(f"(N log N from 10k to 200k grows as N^{growth:.2f})")


if __name__ == "__main__":
    main()
