"""Results of a run as store tables (runs, metrics, predictions; one Parquet file per run,
written atomically) and the run's provenance (run id, git commit, store hash)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from asign.hashing import fingerprint
from asign.store import Store
from asign.train.config import TrainConfig
from asign.train.metrics import metric_names

log = logging.getLogger(__name__)



def store_hash(store: Store) -> str:
    """Fingerprint of what ingest produced: parameters and every step's input fingerprint
    (not the timestamps, so re-running a finished ingest keeps the hash)."""
    return store.ingest_fingerprint()


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
        out["metrics"] = {m: self.mean(m) for m in metric_names() if m in names}
        out["timings"] = self.timings
        return out


def write_run_row(store: Store, rid: str, cfg: TrainConfig, *, status: str, seconds: float | None,
                  store_fp: str, commit: str | None, created_at: dt.datetime,
                  timings: dict[str, Any], plan: dict[str, Any] | None = None,
                  where: dict[str, Any] | None = None,
                  binding: dict[str, Any] | None = None) -> None:
    from asign import __version__

    config = dict(cfg.to_json())
    # runs has no columns for these; they travel inside the config JSON
    config["timings"] = timings
    config["plan"] = plan or {}
    config["where"] = where or {}  # host, pid and Dask worker address the run ran on
    if binding is not None:  # the store state the run read (store/binding.py)
        config["binding"] = binding
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
    lower: np.ndarray | None = None  # (M, G) float32: the conformal interval (intervals.py)
    upper: np.ndarray | None = None


PREDICTION_PART_ROWS = 1 << 20  # rows per written part: bounds memory at any sample size


def write_predictions(store: Store, rid: str, genes: tuple[str, ...],
                      blocks: list[PredictionBlock]) -> None:
    """Long format (one row per spot × gene), as the ``predictions`` view promises; written
    in parts of about ``PREDICTION_PART_ROWS`` rows (a 200k-spot sample has 50M rows)."""
    store.write_parts("predictions", _prediction_parts(rid, genes, blocks), key=rid)


def _prediction_parts(rid: str, genes: tuple[str, ...],
                      blocks: list[PredictionBlock]) -> Iterator[pa.Table]:
    """Columns are built by Arrow ``take`` from one copy of each string (no Python object
    per row)."""
    g = len(genes)
    gene = pa.array(list(genes), pa.string())
    step = max(1, PREDICTION_PART_ROWS // max(g, 1))
    for b in blocks:
        for lo in range(0, len(b.spot_ids), step):
            spots = pa.array(b.spot_ids[lo:lo + step], pa.string())
            m = len(spots)
            row = pa.array(np.repeat(np.arange(m), g))
            yield pa.table({
                "run_id": pa.array([rid], pa.string()).take(pa.array(np.zeros(m * g, np.int64))),
                "fold": pa.array(np.full(m * g, b.fold, dtype=np.int32)),
                "sample_id": pa.array([b.sample_id], pa.string()).take(
                    pa.array(np.zeros(m * g, np.int64))),
                "section_id": pa.array(b.section_ids[lo:lo + step], pa.string()).take(row),
                "spot_id": spots.take(row),
                "gene": gene.take(pa.array(np.tile(np.arange(g), m))),
                "value": pa.array(np.asarray(b.values[lo:lo + step], np.float32).reshape(-1)),
                "lower": _bound(b.lower, lo, step, m * g),
                "upper": _bound(b.upper, lo, step, m * g),
            })


def _bound(values: np.ndarray | None, lo: int, step: int, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.float32())
    return pa.array(np.asarray(values[lo:lo + step], np.float32).reshape(-1))
