"""Whole-slide ingest cost: her2st patient C as native JPEGs and as pyramidal scans.

    python bench/wsi.py [--root /tmp/slides] [--stacks native,3x,4x,4gpx] [--build-only]

Builds, under --root, manifests of C2–C6 (C1 has no image) in four forms:

- ``native``: the published JPEGs (~9,300 × 9,900 px, 0.69 µm/px);
- ``3x``: every section upsampled 3× (0.23 µm/px, a 40x scan, 0.83 Gpx at level 0);
- ``4x``: C2, C3 upsampled 4× (0.17 µm/px, 1.47 Gpx);
- ``4gpx``: C2, C3 upsampled 6.7× (0.10 µm/px, 4.1 Gpx);

the scans as JPEG-tiled (q90) pyramidal TIFFs written tile by tile (``tests/wsi_fixtures``),
their µm/px in the resolution tags and in the manifest (so the two are checked against each
other), spot pixels scaled to match. Then ingests each stack step by step with the product's
CLI (``asign ingest MANIFEST --steps S --threads 1``, OMP 1), one process per step, and
prints wall time and that process's peak RSS per step; the limit the goals are stated
against (3 GB, 5 s per slide to register, the native stack's ingest time) in the same run.
Last, spot patches of the 3× scan against the native ones (mean |Δ| of 255, same tissue box).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _machine import machine_info  # noqa: E402
from her2st_small import HER2ST, IMAGE_NAMES  # noqa: E402
from wsi_fixtures import upsampled, write_slide  # noqa: E402

from asign.ingest.readers.her2st import (  # noqa: E402
    SPOT_DIAMETER_UM,
    SPOT_PITCH_UM,
    um_per_px_from_spots,  # noqa: E402
)
from asign.ingest.steps import STEPS  # noqa: E402

STACKS = {"native": (1.0, ("C2", "C3", "C4", "C5", "C6")),
          "3x": (3.0, ("C2", "C3", "C4", "C5", "C6")),
          "4x": (4.0, ("C2", "C3")),
          "4gpx": (6.7, ("C2", "C3"))}
ASIGN = Path(sys.executable).with_name("asign")


def _spots(section: str) -> tuple[pd.DataFrame, float]:
    path = HER2ST / "ST-spotfiles" / f"{section}_selection.tsv"
    df = pd.read_csv(path, sep="\t")
    df = df[df["selected"] == 1] if "selected" in df else df
    return df, um_per_px_from_spots(df, path)


def build(root: Path, name: str) -> Path:
    """Write the stack's slides (skipped when present) and manifest; return the manifest."""
    from PIL import Image

    factor, sections = STACKS[name]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for sec in sections:
        spots, um = _spots(sec)
        image = HER2ST / "ST-imgs" / "C" / sec / IMAGE_NAMES[sec]
        if factor != 1.0:
            target = folder / f"{sec}.tif"
            if not target.exists():
                Image.MAX_IMAGE_PIXELS = None
                t0 = time.perf_counter()
                with Image.open(image) as im:
                    src = im.convert("RGB")
                w, h = int(src.size[0] * factor), int(src.size[1] * factor)
                tmp = target.with_suffix(".part.tif")
                write_slide(tmp, w, h, upsampled(src, factor), um / factor, tile=512)
                os.replace(tmp, target)
                print(f"  wrote {target} ({w}×{h} = {w * h / 1e9:.2f} Gpx, "
                      f"{target.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s",
                      flush=True)
            image = target
        ids = [f"{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)]
        table = pd.DataFrame({"spot_id": ids,
                              "px": (spots.pixel_x + 0.5) * factor - 0.5,
                              "py": (spots.pixel_y + 0.5) * factor - 0.5})
        table.to_csv(folder / f"{sec}_spots.csv", index=False)
        rows.append({"sample": "C", "section": sec, "z": int(sec[1:]), "image": str(image),
                     "counts": str(HER2ST / "ST-cnts" / f"{sec}.tsv.gz"),
                     "spots": f"{sec}_spots.csv", "um_per_px": round(um / factor, 6),
                     "spot_diameter_um": SPOT_DIAMETER_UM, "spot_pitch_um": SPOT_PITCH_UM})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def ingest(manifest: Path, store: Path, threads: int) -> list[dict]:
    """One `asign ingest --steps S` process per step: wall s and its own peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = []
    for step in STEPS:
        cmd = [str(ASIGN), "ingest", str(manifest), "--store", str(store), "--steps", step,
               "--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        cpu = usage.ru_utime + usage.ru_stime
        out.append({"step": step, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                    "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2)})
        print(f"  {step:9s} {wall:7.1f} s wall {cpu:7.1f} s CPU {usage.ru_maxrss / 1e6:5.2f} GB "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def patch_agreement(root: Path, n: int = 40) -> dict[str, float]:
    """Mean |Δ| between native spot patches and the same tissue cut from the 3× scans, and
    the noise floor: what one JPEG q90 pass (as the scans' tiles) leaves on the native patch."""
    import io

    from PIL import Image

    from asign.ingest import patches

    def jpeg_noise(rgb: np.ndarray) -> float:
        buf = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=90)
        return float(np.abs(rgb - np.asarray(Image.open(buf), dtype=float)).mean())

    diffs, floor = [], []
    for sec in STACKS["3x"][1]:
        spots, um = _spots(sec)
        native = HER2ST / "ST-imgs" / "C" / sec / IMAGE_NAMES[sec]
        side = patches.equivalent_px(224, um)
        boxes = patches.spot_patch_box(spots.pixel_x.to_numpy(), spots.pixel_y.to_numpy(), side)
        for nx, ny in boxes[np.linspace(0, len(boxes) - 1, n).astype(int)]:
            a = patches.crop(native, nx, ny, side, 224).astype(float)
            b = patches.crop(root / "3x" / f"{sec}.tif", 3 * nx, 3 * ny, 3 * side, 224)
            diffs.append(float(np.abs(a - b).mean()))
            floor.append(jpeg_noise(a))
    ratio = np.divide(diffs, floor)
    return {"n": len(diffs), "mean": round(float(np.mean(diffs)), 2),
            "p95": round(float(np.percentile(diffs, 95)), 2), "max": round(float(np.max(diffs)), 2),
            "jpeg_q90_floor_mean": round(float(np.mean(floor)), 2),
            "ratio_to_floor_max": round(float(ratio.max()), 2)}


def metrics(root: Path, models: list[str], threads: int) -> None:
    """Train each model on the native and the 3x store (known layer C2, hidden C3–C6) and
    print the within-sample metrics of both and their difference."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    got: dict[str, dict[tuple[str, str], float]] = {}
    for name in ("native", "3x"):
        store = root / f"store-{name}"
        for model in models:
            t0 = time.perf_counter()
            subprocess.run([str(ASIGN), "train", "--store", str(store), "--model", model, "--run",
                            model, "--samples", "C", "--threads", str(threads)], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"  trained {model} on {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        sql = ("select r.name, m.metric, avg(m.value) as value from metrics m join runs r "
               "using (run_id) where m.setting = 'within_sample' group by r.name, m.metric")
        out = subprocess.run([str(ASIGN), "query", "--store", str(store), "--format", "json", sql],
                             env=env, check=True, text=True, stdout=subprocess.PIPE).stdout
        got[name] = {(r["name"], r["metric"]): r["value"] for r in json.loads(out)}
    print("\n| model | metric | native | 3x | Δ |\n|---|---|---|---|---|")
    for key in sorted(got["native"]):
        if key in got["3x"]:
            a, b = got["native"][key], got["3x"][key]
            print(f"| {key[0]} | {key[1]} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/slides"))
    ap.add_argument("--stacks", default="native,3x,4x,4gpx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--metrics", default="", help="models to train on native and 3x, e.g. idw")
    ap.add_argument("--no-ingest", action="store_true", help="use the stores already built")
    args = ap.parse_args()
    print(json.dumps(machine_info()), flush=True)
    results = {}
    for name in args.stacks.split(","):
        print(f"[{name}] build", flush=True)
        manifest = build(args.root, name)
        if args.build_only or args.no_ingest:
            continue
        store = args.root / f"store-{name}"
        subprocess.run(["rm", "-rf", str(store)], check=True)
        print(f"[{name}] ingest", flush=True)
        results[name] = ingest(manifest, store, args.threads)
    if results:
        _table(results)
    if "3x" in args.stacks.split(",") and not args.build_only:
        print("patches 3x vs native (mean |Δ| of 255):", patch_agreement(args.root))
    if args.metrics:
        metrics(args.root, args.metrics.split(","), args.threads)


def _table(results: dict[str, list[dict]]) -> None:
    """Per step: wall s / CPU s (CPU time is what a shared machine's load does not inflate)."""
    base = {k: sum(r[k] for r in results["native"]) for k in ("wall_s", "cpu_s")} \
        if "native" in results else None
    print("\n| stack | sections | " + " | ".join(f"{s} wall / CPU" for s in STEPS)
          + " | ingest wall / CPU | peak RSS | vs native (wall / CPU) |")
    print("|---" * (len(STEPS) + 5) + "|")
    for name, rows in results.items():
        total = {k: sum(r[k] for r in rows) for k in ("wall_s", "cpu_s")}
        ratio = (f"{total['wall_s'] / base['wall_s']:.2f}× / {total['cpu_s'] / base['cpu_s']:.2f}×"
                 if base else "–")
        cells = " | ".join(f"{r['wall_s']:.1f} / {r['cpu_s']:.1f} s" for r in rows)
        print(f"| {name} | {len(STACKS[name][1])} | {cells} | {total['wall_s']:.0f} / "
              f"{total['cpu_s']:.0f} s | {max(r['peak_rss_gb'] for r in rows):.2f} GB | {ratio} |")
    print("limits: peak RSS 3 GB; register 5 s per slide; 3x ingest ≤ 1.3× native")


if __name__ == "__main__":
    main()
