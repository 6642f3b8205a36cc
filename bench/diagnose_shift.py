"""Why image features trained on one layer transfer poorly to the next: the measurements
behind docs/method.md's diagnosis. Run by hand on a store of her2st patient C:

    OMP_NUM_THREADS=1 python bench/diagnose_shift.py --store /tmp/asign-her2st-c/SC

1. Feature shift between the known layer and each other layer: accuracy of a linear
   classifier (logistic regression, 5-fold stratified CV) telling the two sections' spot
   embeddings apart, on the raw embeddings and after the per-section z-score the networks
   see; and the standardised mean difference |μ_a − μ_b| / pooled sd per feature (median and
   share above 0.2) before the z-score (after it every feature's mean is 0 in every section,
   so the SMD is 0 by construction: what remains is a shift of the shape, which the
   classifier measures).
3. How far a per-spot error scale can rank errors inside the known layer: idw predictions of
   each held-out block of the known layer from the other blocks; Spearman correlation of
   |error| with the interval scale asign uses (train/intervals.py: local spread of the 8
   nearest known spots), with the gene's spread alone, and with a log-linear fit of both
   and the predicted level (in-sample: an upper bound for that family).
2. In-layer vs other-layer loss: ridge from the z-scored embeddings to the panel, fitted on
   the known layer (penalty by blocked CV, train/ridge.py). Its blocked-CV MSE inside the
   known layer against its MSE on each other layer, each beside the mean profile's MSE on
   the same spots. The hidden layers' labels are read here to *diagnose* only; no setting
   of asign is chosen from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np


def classifier_accuracy(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([a, b]).astype(np.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv).mean())


def smd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pooled = np.sqrt((a.var(axis=0) + b.var(axis=0)) / 2) + 1e-9
    return np.abs(a.mean(axis=0) - b.mean(axis=0)) / pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--sample", default="C")
    args = ap.parse_args()
    from asign.store import open_store
    from asign.train import ridge
    from asign.train.baselines import section_zscored
    from asign.train.data import load_sample

    print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(),
                      "omp_threads": os.environ.get("OMP_NUM_THREADS")}))
    s = load_sample(open_store(args.store), args.sample, graph=False)
    raw = s.spot_feat.astype(np.float32)
    z = section_zscored(s)
    labelled = [i for i in range(len(s.sections)) if s.has_label[s.section == i].any()]
    ref = labelled[0]
    r = s.section == ref
    print(f"\nknown layer {s.sections[ref]} ({int(r.sum())} spots), "
          f"{raw.shape[1]}-d embeddings\n")
    print("| other layer | classifier acc. raw | classifier acc. z-scored | "
          "median SMD raw | share SMD > 0.2 raw |\n|---|---|---|---|---|")
    for i in range(len(s.sections)):
        if i == ref:
            continue
        o = s.section == i
        d = smd(raw[r], raw[o])
        print(f"| {s.sections[i]} | {classifier_accuracy(raw[r], raw[o]):.3f} | "
              f"{classifier_accuracy(z[r], z[o]):.3f} | {np.median(d):.3f} | "
              f"{float((d > 0.2).mean()):.3f} |")

    y = s.labels.astype(np.float64)
    known = r & s.has_label
    alpha, oob = ridge.choose_alpha(z[known], y[known], s.xy[known])
    fit = ridge.RidgePath(z[known], y[known])
    mu = y[known].mean(axis=0)
    ok = np.isfinite(oob).all(axis=1)
    print(f"\nridge on {s.sections[ref]} (α = {alpha:g}, blocked CV):\n")
    print("| spots | ridge MSE | mean-profile MSE | ridge / mean |\n|---|---|---|---|")
    # the mean profile's in-layer MSE on the same blocks: each block's spots from the rest
    from asign.train.blocks import cv_folds

    mean_oob = np.full(y[known].shape, np.nan)
    for held in cv_folds(s.xy[known]):
        mean_oob[held] = y[known][~held].mean(axis=0)
    yk = y[known]
    m_r = float(((oob[ok] - yk[ok]) ** 2).mean())
    m_m = float(((mean_oob[ok] - yk[ok]) ** 2).mean())
    print(f"| {s.sections[ref]} held-out blocks | {m_r:.3f} | {m_m:.3f} | {m_r / m_m:.2f} |")
    for i in labelled:
        if i == ref:
            continue
        o = (s.section == i) & s.has_label
        pred = fit.predict(z[o], alpha)
        m_r = float(((pred - y[o]) ** 2).mean())
        m_m = float(((mu - y[o]) ** 2).mean())
        print(f"| {s.sections[i]} | {m_r:.3f} | {m_m:.3f} | {m_r / m_m:.2f} |")
    scale_probe(s, known)


def scale_probe(s: object, known: np.ndarray) -> None:
    from scipy.stats import spearmanr

    from asign.train.baselines import idw
    from asign.train.blocks import cv_folds
    from asign.train.error_scale import local_spread, source

    xy, y = s.xy[known], s.labels[known].astype(np.float64)
    pred, scale = np.full(y.shape, np.nan), np.full(y.shape, np.nan)
    for held in cv_folds(xy):
        pred[held] = idw(xy[~held], y[~held], xy[held])
        scale[held] = local_spread(source(xy[~held], y[~held]), xy[held])
    ok = np.isfinite(pred).all(axis=1)
    err = np.abs(y - pred)[ok].ravel()
    gene_sd = np.broadcast_to(y.std(axis=0), y.shape)[ok].ravel()
    x = np.c_[np.ones(err.size), pred[ok].ravel(), np.log(scale[ok].ravel()), np.log(gene_sd)]
    beta = np.linalg.lstsq(x, np.log(err + 1e-3), rcond=None)[0]
    print("\nSpearman(scale, |error|), idw on held-out blocks of the known layer:\n")
    print("| scale | Spearman |\n|---|---|")
    for name, v in (("local spread (asign's)", scale[ok].ravel()), ("gene spread", gene_sd),
                    ("log-linear fit of both + level (in-sample)", x @ beta)):
        print(f"| {name} | {spearmanr(v, err).statistic:.3f} |")


if __name__ == "__main__":
    main()
