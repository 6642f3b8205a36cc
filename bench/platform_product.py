"""Visium HD-like stacks through the product: write five Space Ranger HD outputs, then
`asign ingest` and `asign train` as a user runs them, each timed with its peak RSS.

    .venv/bin/python bench/platform_product.py [--width-um 2500,3540] [--epochs 3]
        [--write-docs]

The sections are the test fixture's (tests/platform_fixtures.py: the Space Ranger HD
on-disk layout, parsed by spatialdata-io; real her2st C2–C6 pixels shrunk into a
``--width-um`` window at 2 µm/px, one stack per width; each 16 µm bin takes the counts
of the nearest her2st spot, binomially thinned). Every command is a separate process
(``/usr/bin/time`` reads its peak RSS), one thread, one after the other: ingest with the
small ``resnet18-l3-64`` encoder (random weights: no download here), then asign3d for
``--epochs`` epochs with a ``--memory-gb`` budget, then idw and the CLI alone. The fp32
matmul peak is read in the same run. A cost bench: the fixture's expression is her2st's,
resampled, so no accuracy is reported here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _docs_record  # noqa: E402
from _machine import machine_info, matmul_peak, timed_command  # noqa: E402

SECTIONS = ("C2", "C3", "C4", "C5", "C6")
ASIGN = [sys.executable, "-m", "asign.cli"]
DEFAULT_WIDTHS = "2500,3540"


def _stack(work: Path, width_um: float, args: argparse.Namespace) -> list[tuple]:
    """Write one stack, ingest it and train on it: (bins, command, s, GB, timings) rows."""
    from platform_fixtures import make_visium_hd_sample

    from asign.store import open_store

    src, store = work / "HD", work / "store"
    if not (src / SECTIONS[-1] / "feature_slice.h5").exists():
        make_visium_hd_sample(src, SECTIONS, bins_um=(16,), width_um=width_um, um_per_px=2.0,
                              n_genes=args.genes)
    ingest = [*ASIGN, "ingest", str(src), "--store", str(store), "--encoder", "resnet18-l3-64",
              "--weights", "random", "--threads", "1", "--n-genes", str(args.genes)]
    sec, gb, _ = timed_command(ingest, work / "ingest.log")
    n = int(open_store(store).query("select count(*) as n from spots where not is_virtual")
            .to_pandas().n.iloc[0])
    rows = [(n, "asign ingest", sec, gb, None)]
    for model, extra in (("asign3d", ["--epochs", str(args.epochs), "--memory-gb",
                                      str(args.memory_gb)]), ("idw", []), ("cli", [])):
        cmd = [*ASIGN, "train", "--store", str(store), "--model", model, "--run", model,
               "--threads", "1", "--json", *extra]
        sec, gb, out = timed_command(cmd, work / f"train-{model}.log")
        rows.append((n, f"asign train --model {model} {' '.join(extra)}".strip(), sec, gb,
                     json.loads(out)["timings"]))
        print(f"  {n} bins, {model}: {sec:.0f} s, {gb:.2f} GB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/asign-platform-product"))
    ap.add_argument("--width-um", default=DEFAULT_WIDTHS,
                    help="window of each section (µm), one stack per value: 2500 gives about "
                         "50k bins in five sections, 3540 about 100k")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory-gb", type=float, default=4.0)
    ap.add_argument("--genes", type=int, default=250)
    _docs_record.add_flag(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)

    print(json.dumps({"seeds": [0], "protocol": "Space Ranger HD fixture of her2st C2-C6 "
                      f"({args.width_um} µm windows, 16 µm bins), known layer C2, one "
                      "thread, commands run one after another", "machine": machine_info()}))
    peak = matmul_peak()
    rows = []
    for width in (float(w) for w in args.width_um.split(",")):
        rows += _stack(args.workdir / f"w{width:g}", width, args)
    peak = max(peak, matmul_peak())

    print(f"\n### Visium HD-like stacks through the product (16 µm bins in {len(SECTIONS)} "
          f"sections, one thread, fp32 matmul peak {peak:.0f} GFLOP/s)\n")
    print("| bins | command | wall s | peak RSS GB | epochs × s per epoch | training plan |")
    print("|---|---|---|---|---|---|")
    for n, name, sec, gb, timing in rows:
        timing = timing or {}
        epochs = (f"{timing['epochs_run']} × {float(timing['epoch_s_mean']):.0f}"
                  if timing.get("epoch_s_mean") else "–")
        plans = list((timing.get("batching") or {}).values())  # one per graph (sample)
        plan_text = (f"{plans[0]['kind']}: {plans[0]['blocks']} batches of ≤ "
                     f"{plans[0]['max_block_nodes']:,} nodes" if plans else "–")
        print(f"| {n:,} | `{name}` | {sec:.0f} | {gb:.2f} | {epochs} | {plan_text} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


def _record_name(argv: list[str]) -> str:
    """``platform_product`` for the default widths; another width set records beside it
    (``platform_product_w9900`` for ``--width-um 9900``), so a long run at one size does
    not replace the record of the others."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--width-um", default=DEFAULT_WIDTHS)
    widths = ap.parse_known_args(argv)[0].width_um
    if widths == DEFAULT_WIDTHS:
        return "platform_product"
    return "platform_product_w" + "_".join(f"{float(w):g}" for w in widths.split(","))


if __name__ == "__main__":
    _docs_record.run(main, _record_name(sys.argv[1:]))
