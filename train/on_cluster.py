"""K-fold runs on a Dask cluster: each fold is a task that loads its own samples, trains
and scores on a worker; the driver (``asign.train.run``) assembles the results in fold order
and alone writes the run's files, so metrics and predictions equal a serial run's."""

from __future__ import annotations

import time
from typing import Any

from asign.train.config import TrainConfig


def execute_on_cluster(cfg: TrainConfig, store: Any, rid: str, folds: list, rep: Any,
                        timings: dict[str, Any], client: Any
                        ) -> tuple[str, list[dict], list, tuple[str, ...]]:
    """Each fold a Dask task (it loads its own samples); results are assembled in fold
    order, so metrics and predictions equal a serial run's. Each fold checkpoints to its
    own file, so --resume continues the folds that did not finish."""
    from asign.cluster import TaskFailure, run_tasks
    from asign.errors import ClusterError
    from asign.train.folds import fold_timings

    out = run_tasks(client, fold_task, [(cfg, str(store.root), rid, f) for f in folds],
                    [f"fold{f.fold}" for f in folds], rep, description=f"{cfg.model} folds")
    failed = [o for o in out if isinstance(o, TaskFailure)]
    if failed:
        raise ClusterError(f"run {rid}: " + " | ".join(f"{f.label}: {f.error}" for f in failed),
                           fix="fix the cause, then re-run with --resume (finished folds are kept)")
    rows: list[dict] = []
    blocks: list = []
    epoch_s: list[float] = []
    selection: dict[int, dict] = {}
    blocked: dict[str, Any] = {}
    timings["load_s"] = max(o["load_s"] for o in out)
    for o in out:
        rows += o["rows"]
        blocks += o["blocks"]
        epoch_s += o["epoch_s"]
        selection |= o["selection"]
        blocked |= o["batching"]
        timings.setdefault("fold_s", []).append(o["fold_s"])
        timings.setdefault("fold_where", []).append(o["where"])
    fold_timings(timings, selection, blocked, epoch_s)
    return "done", rows, blocks, out[0]["genes"]


def fold_task(cfg: TrainConfig, root: str, rid: str, fold: Any) -> dict[str, Any]:
    """A task: one fold of a run, on a worker (quietly: the driver shows one bar)."""
    from pathlib import Path

    from asign.cluster import here, worker_threads
    from asign.progress import silent
    from asign.store import open_store
    from asign.train import deterministic, load_samples
    from asign.train.folds import FoldRun, one_fold

    if cfg.threads is None:
        cfg = cfg.with_(threads=worker_threads())
    store = open_store(Path(root))
    t = time.perf_counter()
    samples, recipe = load_samples(cfg, store, [fold])
    load_s = round(time.perf_counter() - t, 3)
    path = store.checkpoint(f"{rid}.fold{fold.fold}")
    run = FoldRun.start(cfg, rid, path, samples, recipe, silent())
    with deterministic(cfg):
        rows, blocks, fold_s = one_fold(cfg, fold, run)
    run.release_tasks()
    return {"rows": rows, "blocks": blocks, "fold_s": fold_s, "epoch_s": run.epoch_s,
            "selection": run.selection, "batching": run.blocked,
            "genes": next(iter(samples.values())).genes, "load_s": load_s, "where": here()}
