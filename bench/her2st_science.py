"""Regenerate docs/science.md's tables on her2st patient C with the product's CLI.

    OMP_NUM_THREADS=1 python bench/her2st_science.py [--root /tmp/asign-her2st-c] [--seeds 0,1,2]

Protocol (every figure): store ``SC`` = ``asign ingest DATA --samples C`` with defaults
(effnet-lite0 ImageNet features of Macenko-normalised patches, 250-gene panel chosen on
C2, log-ratio); known layer C2
(``--known first``), hidden C3–C6, within-sample; every setting chosen on C2 alone
(blocked validation / blocked CV inside C2); C3–C6 labels are read only to score. Networks:
200 epochs, one run per seed (``--seed``), run name ``<model>-seed<seed>``; baselines are
deterministic (one run each). A run whose name exists is kept, so an interrupted
regeneration continues.

Tables printed (markdown):

1. per section, mean ± sd over seeds, MSE / PCC per spot / PCC per gene, every model in the
   registry, beside the measured-neighbour oracle (leave-one-spot-out IDW-8 inside each
   hidden section: as if its neighbours had been measured);
2. ablations (seed 0 unless stated): shrinkage off, random validation spots, ensembles;
3. paired per-gene comparison of asign3d with idw, similarity and ridge+idw: per-(section,
   gene) PCC differences averaged over seeds, two-way bootstrap 95 % interval over genes and
   sections (train/paired.py);
4. interval calibration per model: marginal coverage of the 90 % intervals, 10th percentile
   of per-gene coverage, Spearman correlation of width with |error| over hidden entries;
5. the remedies (bench/her2st_remedies.py): embedding variants (stain normalisation,
   test-time augmentation; stores ``SC-<variant>``, decided on C3 only), the cross-patient
   check C → B4 (store ``SCB``), the noise ceiling, and each remedy's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docs_record  # noqa: E402
from her2st_c import DATA, asign, train  # noqa: E402

from asign.train.config import MODELS  # noqa: E402

NETWORKS = ("asign3d", "asign2d")
# run name → (model, flags): ablations on seed 0 (same seed as the main run)
# (shrinkage off needs no run: every run records its networks' unshrunk metrics)
ABLATIONS = {
    "asign3d-prioridw-seed0": ("asign3d", ["--shrink-prior", "idw"]),
    "asign3d-randomval-seed0": ("asign3d", ["--validation", "random"]),
    "asign3d-ens3-seed0": ("asign3d", ["--ensemble", "3"]),
}
SCORED = ("C3", "C4", "C5", "C6")
METRICS3 = ("mse", "pcc_spot", "pcc_gene")


def run_ids(store: Path) -> dict[str, str]:
    from asign.store import open_store

    runs = open_store(store).read("runs").to_pandas()
    runs = runs[runs.status == "done"].sort_values("created_at")
    return dict(zip(runs.name, runs.run_id, strict=True))


def metrics_of(store: Path, rid: str) -> dict[tuple[str, str], float]:
    from asign.store import open_store

    m = open_store(store).read("metrics", key=rid).to_pandas()
    return {(r.section_id, r.metric): r.value for r in m.itertuples()}


def predictions(store: Path, rid: str, spot_ids: np.ndarray, genes: tuple[str, ...]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, G) value, lower, upper in the sample's row order (NaN where not predicted)."""
    from asign.store import open_store

    con = open_store(store).duckdb()
    try:
        df = con.execute("select spot_id, gene, value, lower, upper from predictions "
                         "where run_id = ?", [rid]).df()
    finally:
        con.close()
    row = {s: i for i, s in enumerate(spot_ids)}
    col = {g: j for j, g in enumerate(genes)}
    out = [np.full((len(spot_ids), len(genes)), np.nan) for _ in range(3)]
    r = df.spot_id.map(row).to_numpy()
    c = df.gene.map(col).to_numpy()
    for k, name in enumerate(("value", "lower", "upper")):
        out[k][r, c] = df[name].to_numpy(dtype=np.float64)
    return out[0], out[1], out[2]


def oracle(s: object, rows: dict[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """Leave-one-spot-out IDW-8 inside each hidden section (the measured-neighbour oracle)."""
    from scipy.spatial import cKDTree

    from asign.train.metrics import evaluate

    out = {}
    for sec, r in rows.items():
        xy, y = s.xy[r], s.labels[r].astype(np.float64)
        d, idx = cKDTree(xy).query(xy, k=9)
        d, idx = d[:, 1:], idx[:, 1:]
        w = 1.0 / np.maximum(d, 1e-6)
        w /= w.sum(axis=1, keepdims=True)
        pred = np.einsum("qk,qkg->qg", w, y[idx])
        for m, v in evaluate(pred, y).items():
            out[(sec, m)] = v
    return out


def fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else "")


def per_section_table(store: Path, names: dict[str, list[str]], ids: dict[str, str],
                      orc: dict) -> None:
    print("\n### Per section, MSE / PCC per spot / PCC per gene (mean ± sd over seeds)\n")
    print("| model | runs | " + " | ".join(SCORED) + " | mean |\n|---|---|"
          + "---|" * (len(SCORED) + 1))
    for model, runs in names.items():
        ms = [metrics_of(store, ids[n]) for n in runs if n in ids]
        if not ms:
            continue
        cells = []
        for sec in (*SCORED, "mean"):
            parts = []
            for metric in METRICS3:
                if sec == "mean":  # NaN for a constant prediction's PCC per gene
                    v = [float(np.mean([m.get((x, metric), np.nan) for x in SCORED]))
                         for m in ms]
                else:
                    v = [m.get((sec, metric), np.nan) for m in ms]
                parts.append(fmt(v))
            cells.append(" / ".join(parts))
        print(f"| {model} | {len(ms)} | " + " | ".join(cells) + " |")
    cells = []
    for sec in (*SCORED, "mean"):
        if sec == "mean":
            cells.append(" / ".join(fmt([np.mean([orc[(x, m)] for x in SCORED])])
                                    for m in METRICS3))
        else:
            cells.append(" / ".join(fmt([orc[(sec, m)]]) for m in METRICS3))
    print("| *measured-neighbour oracle* | – | " + " | ".join(cells) + " |")


def shrink_table(store: Path, names: dict[str, list[str]], ids: dict[str, str]) -> None:
    """Shrinkage on/off: each run's own networks, with and without it (recorded by train)."""
    from asign.store import open_store

    runs = open_store(store).read("runs").to_pandas().set_index("run_id")
    print("\n### Shrinkage on / off (the same networks; mean ± sd over seeds; "
          "MSE / PCC per spot / PCC per gene, mean of C3–C6; worst section MSE)\n")
    print("| model | prior chosen | λ chosen | mean weight | genes at 0 | off | on | "
          "off: max MSE | on: max MSE |\n|---|---|---|---|---|---|---|---|---|")
    for model, run_names in names.items():
        offs, ons, info = [], [], []
        for n in run_names:
            if n not in ids:
                continue
            sel = json.loads(runs.loc[ids[n], "config"])["timings"]["selection"]["0"]
            sh = sel.get("shrink")
            if not sh or "unshrunk" not in sh:
                continue
            offs.append({(sec, k): v for sec, m in sh["unshrunk"].items() for k, v in m.items()})
            ons.append(metrics_of(store, ids[n]))
            info.append(sh)
        if not info:
            continue

        def cell(ms: list[dict]) -> str:
            return " / ".join(fmt([np.mean([m[(x, k)] for x in SCORED]) for m in ms])
                              for k in METRICS3)

        def worst(ms: list[dict]) -> str:
            return fmt([max(m[(x, "mse")] for x in SCORED) for m in ms])

        # λ per seed, in run order ("alone": the prior alone was chosen; runs before
        # shrink.choose pooled with a fixed 0.5)
        pools = ", ".join("alone" if i.get("pool", 0.5) is None else f"{i.get('pool', 0.5):g}"
                          for i in info)
        print(f"| {model} | {', '.join(sorted({i['prior'] for i in info}))} | {pools} | "
              f"{fmt([i['mean'] for i in info])} | {fmt([i['zero'] for i in info])} | "
              f"{cell(offs)} | {cell(ons)} | {worst(offs)} | {worst(ons)} |")


def paired_table(pred_of: dict[str, list[np.ndarray]], truth: np.ndarray,
                 rows: dict[str, np.ndarray]) -> None:
    from asign.train import paired

    print("\n### Paired per-gene PCC difference (two-way bootstrap 95 % over genes × "
          "sections; differences averaged over seeds)\n")
    print("| comparison | difference | 95 % interval | in words |\n|---|---|---|---|")
    masks = [rows[s] for s in SCORED]
    for model in NETWORKS:
        for other in ("idw", "similarity", "ridge+idw", "mean" if model == "asign2d" else ""):
            if not other or other == "mean" or model not in pred_of or other not in pred_of:
                continue
            d = np.mean([paired.differences(p, pred_of[other][0], truth, masks)
                         for p in pred_of[model]], axis=0)
            r = paired.bootstrap(d)
            print(f"| {model} − {other} | {r['diff']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] "
                  f"| {paired.in_words(model, other, r)} |")


def interval_table(store: Path, names: dict[str, list[str]], ids: dict[str, str], s: object,
                   hidden: np.ndarray) -> None:
    from scipy.stats import spearmanr

    print("\n### Interval calibration on C3–C6 (90 % intervals; networks: each seed, in "
          "order)\n")
    print("| model | marginal coverage | per-gene coverage p10 | per-gene min | "
          "Spearman(width, abs error) | mean width |\n|---|---|---|---|---|---|")
    for model, runs in names.items():
        cells: list[list[float]] = []
        for run in runs:
            if run not in ids:
                continue
            v, lo, hi = predictions(store, ids[run], s.spot_ids, s.genes)
            if not np.isfinite(lo[hidden]).all():
                continue
            t = s.labels[hidden]
            inside = (t >= lo[hidden]) & (t <= hi[hidden])
            per_gene = inside.mean(axis=0)
            width = (hi - lo)[hidden].ravel()
            err = np.abs(v[hidden] - t).ravel()
            cells.append([inside.mean(), np.percentile(per_gene, 10), per_gene.min(),
                          spearmanr(width, err).statistic, width.mean()])
        if cells:
            print(f"| {model} | " + " | ".join(", ".join(f"{c[k]:.3f}" for c in cells)
                                              for k in range(5)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/asign-her2st-c"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-train", action="store_true", help="tables from existing runs only")
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    _docs_record.add_flag(ap)
    ap.add_argument("--variants", default="nostain,tta8",
                    help="embedding variants, each its own store (her2st_remedies.VARIANTS)")
    ap.add_argument("--no-transfer", action="store_true", help="skip C → B4")
    args = ap.parse_args()
    import her2st_remedies as remedies
    t = args.threads
    seeds = [int(x) for x in args.seeds.split(",")]
    print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "threads": t,
                      "seeds": seeds, "protocol": "known C2, hidden C3-C6, within-sample"}))
    sc = args.root / "SC"
    if not args.no_train:
        asign("ingest", str(args.data), "--samples", "C", "--store", str(sc), threads=t)
        for m in reversed(MODELS):
            if not MODELS[m].neural:
                train(sc, m, m, [], t)
        for seed in seeds:
            for m in NETWORKS:
                train(sc, m, f"{m}-seed{seed}", ["--seed", str(seed)], t)
        for name in filter(None, args.ablations.split(",")):
            model, flags = ABLATIONS[name]
            train(sc, model, name, flags, t)
        remedies.ingest_variants(args.root, args.data, t, list(filter(None,
                                                                  args.variants.split(","))))
        if not args.no_transfer:
            remedies.ingest_transfer(args.root, args.data, t, seeds)
    from asign.store import open_store
    from asign.train.data import load_sample

    s = load_sample(open_store(sc), "C", graph=False)
    rows = {sec: (s.section == s.sections.index(sec)) & s.has_label for sec in SCORED}
    hidden = np.any(list(rows.values()), axis=0)
    ids = run_ids(sc)
    names = {m: ([f"{m}-seed{x}" for x in seeds] if MODELS[m].neural else [m]) for m in MODELS}
    per_section_table(sc, names, ids, oracle(s, rows))
    abl = {n: [n] for n in ABLATIONS if n in ids}
    if abl:
        per_section_table(sc, {"asign3d (seed 0)": ["asign3d-seed0"],
                               "asign2d (seed 0)": ["asign2d-seed0"], **abl}, ids, oracle(s, rows))
    shrink_table(sc, {m: names[m] for m in NETWORKS}, ids)
    pred_of = {m: [predictions(sc, ids[n], s.spot_ids, s.genes)[0] for n in runs if n in ids]
               for m, runs in names.items()}
    paired_table({m: p for m, p in pred_of.items() if p}, s.labels.astype(np.float64), rows)
    interval_table(sc, names, ids, s, hidden)
    remedies.variant_tables(args.root, SCORED, METRICS3)
    remedies.transfer_table(args.root)
    remedies.noise_ceiling(sc, SCORED)
    remedies.remedy_costs(args.data, t)


def summary(tables: dict[str, dict]) -> dict[str, dict]:
    """The README's view of the per-section table: each model's mean over C3–C6."""
    per = tables["per-section"]
    at = per["columns"].index("mean")
    rows = [[r[0], r[1], *r[at].split(" / ")] for r in per["rows"]]
    return {"summary": {"title": "Mean over C3–C6 (networks: mean ± sd over seeds)",
                        "columns": ["model", "runs", "MSE", "PCC per spot", "PCC per gene"],
                        "rows": rows}}


if __name__ == "__main__":
    _docs_record.run(main, "her2st_science", derive=summary)
