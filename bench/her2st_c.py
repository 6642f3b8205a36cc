"""Regenerate the README's her2st patient C result tables from scratch, with the product's CLI.

    PYTHONPATH=... python bench/her2st_c.py [--root /tmp/asign-her2st-c] \\
        [--tables main,encoders,ablations,b4]

Everything runs through `asign ingest`, `asign train` and `asign query`, exactly as a user
would type them (the commands are printed), with `--threads 1` (OMP too) and seed 0.
Stores under --root:

- ``SC``: ``asign ingest DATA --samples C --store SC``: all defaults (``--encoder auto``, so
  effnet-lite0 with its bundled ImageNet weights unless ResNet50 weights are local; gene
  panel = top 250 by mean count on C2, the known layer).
- ``SC-<variant>``: copies of ``SC`` taken before any training, re-embedded with
  ``--steps patches,embed,graph --encoder X [--weights random]`` (same sections, alignment,
  spots and gene panel, patches re-cut only for another input size; only the image features and the
  graph's cosines change).
- ``SCB``: ``asign ingest DATA --samples C --extra-2d B --store SCB``. Its gene panel is
  chosen on C2 *and B4* (both are training sections), so its numbers are comparable only
  with each other: the B4 table trains asign3d with and without ``--extra-2d B`` on SCB.

Known layer C2 (``--known first``), hidden C3–C6, within-sample; metrics on hidden sections
only, averaged over C3–C6 (per-section tables too). A run whose name already exists in a
store is not re-run, so an interrupted regeneration continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docs_record  # noqa: E402

from asign.train.config import MODELS  # noqa: E402
from asign.train.metrics import METRICS, accuracy_metrics  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"
# store suffix → (encoder, weights)
VARIANTS = {
    "histo": ("histo-classic", "imagenet"),
    "concat": ("effnet-lite0+histo-classic", "imagenet"),
    "random": ("effnet-lite0", "random"),
    "random-resnet": ("resnet50-l3", "random"),  # the README's earlier features
    "lite2": ("effnet-lite2", "imagenet"),  # 260-px input: its patches are re-cut
}
DEFAULT_VARIANTS = "histo,concat,random,random-resnet"
# run name → extra `asign train` flags, asign3d on SC
ABLATIONS = {
    # cross-attention over the own tile only (a first version of this ablation, run as
    # asign3d-no-xattn, replaced the fused tokens by the bare tile projection instead)
    "asign3d-own-tile": ["--ablate", "cross-attention"],
    "asign3d-no-gat": ["--ablate", "gat"],
    "asign3d-no-cli": ["--ablate", "cli"],
}
# run name → flags: this project's CLI changes taken back (table "cli")
CLI_VARIANTS = {
    "asign3d-no-prior": ["--no-spatial-prior"],
    "asign3d-paper-cli": ["--no-spatial-prior", "--no-calibrate-gate"],
}


def asign(*args: str, threads: int, capture: bool = False) -> str:
    exe = Path(sys.executable).with_name("asign")
    cmd = [str(exe), *args]
    print("$ asign " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    if not capture:
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return done.stdout if capture else ""


def query(store: Path, sql: str, threads: int) -> list[dict]:
    return json.loads(asign("query", "--store", str(store), "--format", "json", sql,
                            threads=threads, capture=True))


def runs(store: Path, threads: int) -> set[str]:
    if not (store / "manifest.json").exists():
        return set()
    try:
        return {r["name"] for r in query(store, "select name from runs", threads)}
    except subprocess.CalledProcessError:  # no runs yet: the view does not exist
        return set()


def train(store: Path, model: str, name: str, flags: list[str], threads: int) -> None:
    if name in runs(store, threads):
        print(f"  run {name} exists in {store.name}: kept", file=sys.stderr)
        return
    asign("train", "--store", str(store), "--model", model, "--run", name, "--samples", "C",
          "--threads", str(threads), *flags, threads=threads)


def store_params(store: Path) -> dict:
    """What decided the numbers: panel, normalisation, encoder and weights, graph."""
    from asign.store import open_store

    s = open_store(store)
    m = s.manifest()
    embed = m["params"].get("embed", {})
    labels = s.labels_info(m)
    return {
        "store": store.name,
        "labels": None if labels is None else labels.to_dict(),
        "encoder": embed.get("encoder"), "dim": embed.get("dim"),
        "weights": embed.get("weights"), "weights_sha256": embed.get("weights_sha256"),
        "weights_source": embed.get("weights_source"),
        "precision": embed.get("precision"), "runtime": embed.get("runtime"),
        "standardised": embed.get("standardised"),
        "stain_norm": embed.get("stain_norm"), "tta": embed.get("tta", 1),
    }


def table(store: Path, names: list[str], threads: int, label: str) -> None:
    quoted = ",".join(f"'{n}'" for n in names)
    rows = query(store, "select r.name, m.section_id, m.metric, m.value from metrics m "
                 "join runs r using (run_id) where m.setting = 'within_sample' "
                 f"and r.name in ({quoted})", threads)
    by: dict[tuple[str, str, str], float] = {(r["name"], r["section_id"], r["metric"]): r["value"]
                                             for r in rows}
    sections = sorted({r["section_id"] for r in rows})
    names = [n for n in names if any(k[0] == n for k in by)]  # a run not in the store: left out
    if not names:
        print(f"  {label}: no run of it in {store.name}", file=sys.stderr)
        return
    print(f"\n### {label} (store {store.name}; mean over {', '.join(sections)})\n")
    # the columns in the registry's order, titled by it (a hand-typed header went stale once)
    print("| run | " + " | ".join(METRICS[m].title for m in accuracy_metrics()) + " |\n|---|"
          + "---|" * len(accuracy_metrics()))
    for n in names:
        vals = []
        for metric in accuracy_metrics():
            v = [by[(n, s, metric)] for s in sections if (n, s, metric) in by
                 and by[(n, s, metric)] is not None]
            mean = sum(v) / len(v) if v else float("nan")
            vals.append("n/a" if mean != mean else f"{mean:.3f}")  # NaN: a constant prediction
        print(f"| {n} | " + " | ".join(vals) + " |")
    print(f"\n#### {label}, per section (MSE / PCC per spot / PCC per gene)\n")
    print("| run | " + " | ".join(sections) + " |\n|---|" + "---|" * len(sections))
    for n in names:
        cells = []
        for s in sections:
            v = [by.get((n, s, m)) for m in ("mse", "pcc_spot", "pcc_gene")]
            cells.append(" / ".join("n/a" if x is None or x != x else f"{x:.3f}" for x in v))
        print(f"| {n} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/asign-her2st-c"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tables", default="main,encoders,ablations,b4,cli")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-train", action="store_true",
                    help="ingest and train nothing: tables from the runs already in the stores "
                         "(a run that is not there is left out)")
    _docs_record.add_flag(ap)
    args = ap.parse_args()
    tables = set(args.tables.split(","))
    variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    t = args.threads
    sc = args.root / "SC"
    print(json.dumps({"seeds": [0], "protocol": "known C2, hidden C3-C6, within-sample, "
                      "seed 0, --threads 1", "stores": {"SC": store_params(sc)}
                      if (sc / "manifest.json").exists() else {}}))
    if args.no_train:
        _tables(args, tables, variants)
        return
    args.root.mkdir(parents=True, exist_ok=True)
    asign("ingest", str(args.data), "--samples", "C", "--store", str(sc), threads=t)
    print(json.dumps(store_params(sc)))
    if "encoders" in tables:  # copies first: they must not carry SC's runs
        for suffix in variants:
            dst = args.root / f"SC-{suffix}"
            if not dst.exists():
                shutil.copytree(sc, dst, ignore=shutil.ignore_patterns("results", "checkpoints"))
    if "main" in tables:
        for m in reversed(MODELS):
            train(sc, m, m, [], t)
        table(sc, list(reversed(MODELS)), t, "Every model, known C2, hidden C3-C6")
    if "encoders" in tables:
        for suffix, (encoder, weights) in variants.items():
            dst = args.root / f"SC-{suffix}"
            # patches re-run only for an encoder of another input size (their fingerprint)
            asign("ingest", str(args.data), "--samples", "C", "--store", str(dst), "--steps",
                  "patches,embed,graph", "--encoder", encoder, "--weights", weights, threads=t)
            print(json.dumps(store_params(dst)))
            for m in ("mean", "similarity", "asign3d"):
                train(dst, m, m, [], t)
            table(dst, ["mean", "similarity", "asign3d"], t,
                  f"Image features: {encoder} ({weights})")
    if "b4" in tables:
        scb = args.root / "SCB"
        asign("ingest", str(args.data), "--samples", "C", "--extra-2d", "B", "--store", str(scb),
              threads=t)
        print(json.dumps(store_params(scb)))
        train(scb, "mean", "mean", [], t)  # cheap: shows what the panel alone changes
    if "ablations" in tables:
        for name, flags in ABLATIONS.items():
            train(sc, "asign3d", name, flags, t)
        table(sc, ["asign3d", *ABLATIONS], t, "Ablations of asign3d")
    if "b4" in tables:
        scb = args.root / "SCB"
        train(scb, "asign3d", "asign3d", [], t)
        train(scb, "asign3d", "asign3d-extra-B", ["--extra-2d", "B"], t)
        table(scb, ["mean", "asign3d", "asign3d-extra-B"], t, "B4 as extra 2D training data")
    if "cli" in tables:
        for name, flags in CLI_VARIANTS.items():
            train(sc, "asign3d", name, flags, t)
        table(sc, ["asign3d", *CLI_VARIANTS], t, "asign3d without this project's CLI changes")


def _tables(args: argparse.Namespace, tables: set[str], variants: dict) -> None:
    """Every table of the stores under --root that exist, from their runs alone."""
    t, sc = args.threads, args.root / "SC"
    if "main" in tables and sc.exists():
        table(sc, list(reversed(MODELS)), t, "Every model, known C2, hidden C3-C6")
    for suffix, (encoder, weights) in variants.items():
        dst = args.root / f"SC-{suffix}"
        if "encoders" in tables and dst.exists():
            table(dst, ["mean", "similarity", "asign3d"], t,
                  f"Image features: {encoder} ({weights})")
    if "ablations" in tables and sc.exists():
        table(sc, ["asign3d", *ABLATIONS], t, "Ablations of asign3d")
    if "b4" in tables and (args.root / "SCB").exists():
        table(args.root / "SCB", ["mean", "asign3d", "asign3d-extra-B"], t,
              "B4 as extra 2D training data")
    if "cli" in tables and sc.exists():
        table(sc, ["asign3d", *CLI_VARIANTS], t, "asign3d without this project's CLI changes")


if __name__ == "__main__":
    _docs_record.run(main, "her2st_c")
