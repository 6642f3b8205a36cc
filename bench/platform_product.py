"""A Visium HD-like stack through the product: write five Space Ranger HD outputs, then
`asign ingest` and `asign train` as a user runs them, each timed with its peak RSS.

    .venv/bin/python bench/platform_product.py [--width-um 2000] [--epochs 3] [--write-docs]

The sections are the test fixture's (tests/platform_fixtures.py: the Space Ranger HD
on-disk layout, parsed by spatialdata-io; real her2st C2–C6 pixels shrunk into a
``--width-um`` window at 2 µm/px, each 16 µm bin taking the counts of the nearest her2st
spot, binomially thinned). Every command is a separate process (``/usr/bin/time`` reads
its peak RSS), one thread, one after the other: ingest with the small ``resnet18-l3-64``
encoder (random weights: no download here), then asign3d for ``--epochs`` epochs with a
``--memory-gb`` budget, then idw and the CLI alone. The fp32 matmul peak is read in the
same run; a training epoch is reported as seconds and as spots per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _docs_record  # noqa: E402
from _machine import machine_info, matmul_peak  # noqa: E402

SECTIONS = ("C2", "C3", "C4", "C5", "C6")
ASIGN = [sys.executable, "-m", "asign.cli"]


def _timed(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS GB, standard output) of one command; its standard error (the
    progress bars) kept in ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], stdout=subprocess.PIPE,
                              stderr=err, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed ({done.returncode}); see {log}")
    kb = int(log.read_text().rsplit("MAXRSS", 1)[1].split()[0])
    return seconds, kb / 2**20, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/asign-platform-product"))
    ap.add_argument("--width-um", type=float, default=2000.0,
                    help="window of each section (µm); 2000 gives about 50k bins in five")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory-gb", type=float, default=4.0)
    ap.add_argument("--genes", type=int, default=250)
    _docs_record.add_flag(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from platform_fixtures import make_visium_hd_sample

    print(json.dumps({"seeds": [0], "protocol": "Space Ranger HD fixture of her2st C2-C6 "
                      f"({args.width_um:g} µm windows, 16 µm bins), known layer C2, one "
                      "thread, commands run one after another", "machine": machine_info()}))
    peak = matmul_peak()
    work = args.workdir
    src, store = work / "HD", work / "store"
    if not (src / SECTIONS[-1] / "feature_slice.h5").exists():
        t0 = time.perf_counter()
        make_visium_hd_sample(src, SECTIONS, bins_um=(16,), width_um=args.width_um,
                              um_per_px=2.0, n_genes=args.genes)
        print(f"fixture written in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    ingest = [*ASIGN, "ingest", str(src), "--store", str(store), "--encoder", "resnet18-l3-64",
              "--weights", "random", "--threads", "1", "--n-genes", str(args.genes)]
    sec, gb, _ = _timed(ingest, work / "ingest.log")
    from asign.store import open_store

    st = open_store(store)
    n = st.query("select count(*) as n from spots where not is_virtual").to_pandas().n.iloc[0]
    rows.append(("asign ingest (register, align, patches, embed, graph)", sec, gb, None))
    for model, extra in (("asign3d", ["--epochs", str(args.epochs), "--memory-gb",
                                      str(args.memory_gb)]), ("idw", []), ("cli", [])):
        cmd = [*ASIGN, "train", "--store", str(store), "--model", model, "--run", model,
               "--threads", "1", "--json", *extra]
        sec, gb, out = _timed(cmd, work / f"train-{model}.log")
        timing = json.loads(out)["timings"]
        rows.append((f"asign train --model {model} {' '.join(extra)}".strip(), sec, gb, timing))
        print(f"  {model}: {sec:.0f} s, {gb:.2f} GB", flush=True)

    print(f"\n### Visium HD-like stack through the product ({n:,} bins of 16 µm in "
          f"{len(SECTIONS)} sections, one thread, fp32 matmul peak {peak:.0f} GFLOP/s)\n")
    print("| command | wall s | peak RSS GB | epochs × s per epoch | training plan |")
    print("|---|---|---|---|---|")
    for name, sec, gb, timing in rows:
        timing = timing or {}
        epochs = (f"{timing['epochs_run']} × {float(timing['epoch_s_mean']):.0f}"
                  if timing.get("epoch_s_mean") else "–")
        plan = timing.get("batching") or {}
        plan_text = (f"{plan.get('kind')}: {plan.get('blocks')} batches"
                     if plan.get("kind") else "–")
        print(f"| `{name}` | {sec:.0f} | {gb:.2f} | {epochs} | {plan_text} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _docs_record.run(main, "platform_product")
