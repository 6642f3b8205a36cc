"""Several independent train runs from one command: models × seeds, serially or as Dask tasks.

Each run writes its own ``runs``/``metrics``/``predictions`` files (one Parquet file per run,
written atomically), so runs on different workers never collide; the driver only collects
their :class:`RunResult`. Threads per run: ``--threads`` when given, else on a local cluster
cores // workers, on a remote one the worker's Dask thread count (see asign/cluster.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from asign.cluster import ClusterConfig, TaskFailure
from asign.train.config import TrainConfig

log = logging.getLogger(__name__)


def expand(cfg: TrainConfig, models: Sequence[str], seeds: Sequence[int]) -> list[TrainConfig]:
    """One config per (model, seed), in the order given: the runs of one command."""
    return [cfg.with_(model=m, seed=s) for m in models for s in seeds]


def run_many(cfgs: Sequence[TrainConfig], cluster: ClusterConfig, *, reporter: Any = None
             ) -> list[Any]:
    """Run every config; returns a RunResult per config, or a TaskFailure where a run failed
    on a worker (the others' results are kept). Serial when ``cluster`` is not distributed."""
    from asign import train
    from asign.progress import reporter as make_reporter

    if not cluster.distributed:
        return [train.run(c, reporter=reporter) for c in cfgs]
    if len(cfgs) == 1 and cfgs[0].folds >= 2:  # one run: its folds are the tasks
        return [train.run(cfgs[0], reporter=reporter, cluster=cluster)]
    from asign.cluster import connect, run_tasks, threads_per_worker
    from asign.train.config import validate

    for c in cfgs:  # a bad option fails here, once, not on every worker
        validate(c)
    if not cluster.scheduler:
        per = threads_per_worker(cluster.workers, cluster.cores)
        cfgs = [c if c.threads else c.with_(threads=per) for c in cfgs]
    labels = [f"{c.model}-seed{c.seed}" for c in cfgs]
    ctx = make_reporter() if reporter is None else contextlib.nullcontext(reporter)
    with connect(cluster) as client, ctx as rep:
        results = run_tasks(client, _run_on_worker, [(c,) for c in cfgs], labels, rep,
                            description="train")
    for r in results:
        if isinstance(r, TaskFailure):
            log.error("run %s failed: %s", r.label, r.error)
    return results


def _run_on_worker(cfg: TrainConfig) -> Any:
    """A task: one run, quietly (the driver shows one bar over all runs)."""
    from asign import train
    from asign.cluster import worker_threads
    from asign.progress import silent

    if cfg.threads is None:
        cfg = cfg.with_(threads=worker_threads())
    return train.run(cfg, reporter=silent())

