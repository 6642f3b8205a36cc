"""Paired per-gene comparison of two predictions of the same hidden spots, with a bootstrap
95 % interval over genes and sections.

For every scored section s and gene g, d_sg = PCC_g(a, truth) − PCC_g(b, truth) (PCC across
the section's spots). The estimate is the mean of d over (s, g) pairs where both are defined;
its interval is the 2.5–97.5 % range of that mean over :data:`N_BOOT` two-way bootstrap
replicates (sections resampled with replacement, and genes resampled with replacement, so
both the choice of sections and of genes count as sampling noise). Seeded, deterministic.

``asign train`` compares every network with :data:`COMPARED` (computed from the known
spots in the same run) and prints the result in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
COMPARED = ("idw", "similarity", "ridge+idw")


def differences(pred_a: np.ndarray, pred_b: np.ndarray, truth: np.ndarray,
                rows: Sequence[np.ndarray]) -> np.ndarray:
    """(S, G) per-section, per-gene PCC differences a − b; ``rows`` masks one section each."""
    from asign.train.metrics import pcc_per_gene

    return np.stack([pcc_per_gene(pred_a[r], truth[r]) - pcc_per_gene(pred_b[r], truth[r])
                     for r in rows])


def bootstrap(d: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, float]:
    """Mean of the (S, G) differences and its two-way bootstrap 95 % interval."""
    d = np.asarray(d, np.float64)
    ok = np.isfinite(d)
    est = float(d[ok].mean()) if ok.any() else float("nan")
    rng = np.random.default_rng(seed)
    s, g = d.shape
    vals = np.where(ok, d, 0.0)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        si, gi = rng.integers(0, s, s), rng.integers(0, g, g)
        num = vals[np.ix_(si, gi)].sum()
        den = ok[np.ix_(si, gi)].sum()
        reps[b] = num / den if den else np.nan
    lo, hi = np.nanpercentile(reps, [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
    return {"diff": round(est, 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4),
            "sections": s, "genes": g}


def in_words(model: str, other: str, r: dict[str, Any]) -> str:
    """"asign3d beats idw by +0.030 PCC per gene [0.010, 0.050]", or that it does not."""
    span = f"[{r['lo']:+.3f}, {r['hi']:+.3f}]"
    if r["lo"] > 0:
        verdict = f"beats {other} by {r['diff']:+.3f} PCC per gene {span}"
    elif r["hi"] < 0:
        verdict = f"is below {other} by {r['diff']:+.3f} PCC per gene {span}"
    else:
        verdict = f"does not differ from {other} measurably: {r['diff']:+.3f} PCC per gene {span}"
    return f"{model} {verdict} (95 % bootstrap over {r['genes']} genes × {r['sections']} sections)"


def against_baselines(cfg: Any, s: Any, plan: Any, pred: np.ndarray,
                      others: Sequence[str] = COMPARED) -> dict[str, dict[str, float]]:
    """The paired comparison of ``pred`` with each baseline in ``others``, each computed
    here from the plan's known layers (as its own run would), over the scored sections."""
    from asign.train import baselines
    from asign.train.config import MODELS
    from asign.train.protocol import visible_labels

    y, known = visible_labels(s.labels, s.has_label, s.section,
                              s.section_index(list(plan.knowns)))
    rows = [s.in_sections([sec]) & s.has_label for sec in plan.scored]
    out = {}
    for name in others:
        other = getattr(baselines, str(MODELS[name].baseline))(cfg.with_(model=name), s, y, known)
        # scoring only: the hidden labels are read as ground truth, as metrics.evaluate does
        out[name] = bootstrap(differences(pred, other, s.labels, rows), seed=cfg.seed)
    return out
