"""Results of a run as store tables (runs, metrics, predictions; one Parquet file per run,
written atomically) and the run's provenance (run id, git commit, store hash)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from asign.store import Store
from asign.store.manifest import fingerprint
from asign.train.config import TrainConfig

log = logging.getLogger(__name__)

METRIC_NAMES = ("mse", "mae", "pcc_spot", "pcc_gene")


def store_hash(store: Store) -> str:
    """Fingerprint of what ingest produced: parameters and every step's input fingerprint
    (not the timestamps, so re-running a finished ingest keeps the hash)."""
    m = store.manifest()
    steps = {s: {k: v.get("fingerprint") for k, v in d.items()}
             for s, d in sorted(m.get("steps", {}).items())}
    return fingerprint(m.get("params", {}), steps)


def run_id(cfg: TrainConfig, store_fp: str) -> str:
    """``{run}-{model}-{hash}``: stable for one config on one store (so --resume finds its
    checkpoint), different for any change that can change the result."""
    return f"{cfg.run}-{cfg.model}-{fingerprint(cfg.identity(), store_fp)[:8]}"


def git_commit() -> str | None:
    """HEAD of the checkout asign runs from, ``-dirty`` if it has local changes; None when
    asign is not run from a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


@dataclass
class RunResult:
    run_id: str
    name: str
    model: str
    setting: str
    status: str
    seconds: float
    metrics: pa.Table
    timings: dict[str, Any] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        """Mean of a metric over the scored sections (all folds of this one setting)."""
        vals = [v for m, v in zip(self.metrics.column("metric").to_pylist(),
                                  self.metrics.column("value").to_pylist(), strict=True)
                if m == metric and v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_id": self.run_id, "name": self.name, "model": self.model,
                               "setting": self.setting, "status": self.status,
                               "seconds": round(self.seconds, 3)}
        names = set(self.metrics.column("metric").to_pylist())
        out["metrics"] = {m: self.mean(m) for m in METRIC_NAMES if m in names}
        out["timings"] = self.timings
        return out


def write_run_row(store: Store, rid: str, cfg: TrainConfig, *, status: str, seconds: float | None,
                  store_fp: str, commit: str | None, created_at: dt.datetime,
                  timings: dict[str, Any], plan: dict[str, Any] | None = None) -> None:
    from asign import __version__

    config = dict(cfg.to_json())
    # runs has no columns for these; they travel inside the config JSON
    config["timings"] = timings
    config["plan"] = plan or {}
    store.write("runs", {
        "run_id": [rid], "name": [cfg.run], "model": [cfg.model], "created_at": [created_at],
        "status": [status], "setting": [cfg.setting], "seed": [cfg.seed],
        "asign_version": [__version__], "git_commit": [commit], "store_hash": [store_fp],
        "seconds": [seconds], "config": [json.dumps(config, sort_keys=True)],
    }, key=rid)


def plan_summary(folds: list[Any]) -> dict[str, Any]:
    """Which sample played which role in which fold, with its known and scored layers."""
    return {str(f.fold): [{"sample_id": p.sample_id, "role": p.role, "sections": list(p.sections),
                           "visible": list(p.visible), "known": p.known,
                           "scored": list(p.scored)} for p in f.samples] for f in folds}


def metric_rows(rid: str, fold: int, sample_id: str, section_id: str, setting: str,
                values: dict[str, float]) -> list[dict[str, Any]]:
    return [{"run_id": rid, "fold": fold, "sample_id": sample_id, "section_id": section_id,
             "setting": setting, "metric": k, "value": float(v)} for k, v in values.items()]


def write_metrics(store: Store, rid: str, rows: list[dict[str, Any]]) -> pa.Table:
    cols = ("run_id", "fold", "sample_id", "section_id", "setting", "metric", "value")
    return store.write("metrics", {c: [r[c] for r in rows] for c in cols}, key=rid)


@dataclass
class PredictionBlock:
    """Predictions of one test sample in one fold: spots × genes."""

    fold: int
    sample_id: str
    section_ids: np.ndarray  # (M,) object
    spot_ids: np.ndarray  # (M,) object
    values: np.ndarray  # (M, G) float32


def write_predictions(store: Store, rid: str, genes: tuple[str, ...],
                      blocks: list[PredictionBlock]) -> None:
    """Long format (one row per spot × gene), as the ``predictions`` view promises."""
    g = len(genes)
    parts = []
    for b in blocks:
        m = len(b.spot_ids)
        parts.append(pa.table({
            "run_id": pa.array(np.full(m * g, rid, dtype=object), pa.string()),
            "fold": pa.array(np.full(m * g, b.fold, dtype=np.int32)),
            "sample_id": pa.array(np.full(m * g, b.sample_id, dtype=object), pa.string()),
            "section_id": pa.array(np.repeat(b.section_ids, g), pa.string()),
            "spot_id": pa.array(np.repeat(b.spot_ids, g), pa.string()),
            "gene": pa.array(np.tile(np.asarray(genes, dtype=object), m), pa.string()),
            "value": pa.array(np.asarray(b.values, dtype=np.float32).reshape(-1)),
        }))
    from asign.schemas import PREDICTIONS

    table = pa.concat_tables(parts) if parts else PREDICTIONS.empty_table()
    store.write("predictions", table, key=rid)
