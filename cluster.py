"""Dask distributed for asign: start or join a cluster, size its threads, and run a batch of
independent tasks under one progress bar.

Serial is the default and never imports dask (``asign --help`` stays fast). ``--workers N``
starts a ``LocalCluster`` of N worker processes; ``--scheduler ADDRESS`` joins an existing
cluster (e.g. ``dask_jobqueue.SLURMCluster``, see the README). Workers compute; whoever
called :func:`run_tasks` receives the results in submission order and does any writing.

Threads are a budget: a local cluster of N workers on C usable cores gives each worker
C // N threads (never N × threads > C). Each worker declares one ``slot`` resource and every
task asks for it, so a worker runs one task at a time and that task may use all the
worker's threads (torch's intra-op pool included)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")  # where torch work runs (--device of ingest and train)

SLOT = "slot"  # one per worker: a task holding it owns the worker's threads
GPU = "GPU"  # asked for by GPU tasks (embed with --device cuda)


@dataclass(frozen=True)
class ClusterConfig:
    """Where tasks run: serial (workers=0, no scheduler), a local cluster or a remote one."""

    workers: int = 0
    scheduler: str | None = None
    cores: int | None = None  # cores a local cluster may use (default: this process's CPUs)
    gpus: int = 0  # GPU resources per local worker (1 with --device cuda)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or bool(self.scheduler)


def usable_cores() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores not busy right now: usable cores − the 1-minute load average, at least 1.

    The default torch thread count of a serial run. bench/threads.py on this 2-core machine
    (asign3d, 3.6k spots): beside one competing process an epoch took 7.5 s with 1 thread
    and 44 s with torch's default of all cores (threads spin-wait on the busy core)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    return max(1, usable_cores() - round(load))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, restored after; DGL's OpenMP
    threads too (compat.dgl sets them from torch's when it imports DGL inside the block)."""
    import torch

    before = torch.get_num_threads()
    dgl = sys.modules.get("dgl")
    dgl_before = dgl.utils.get_num_threads() if dgl is not None else None
    torch.set_num_threads(n)
    if dgl is not None:
        dgl.utils.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        dgl = sys.modules.get("dgl")
        if dgl is not None:
            dgl.utils.set_num_threads(dgl_before if dgl_before is not None else before)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Cores // workers, at least 1: workers × threads never exceed the cores given
    (except when there are more workers than cores, where each still needs one)."""
    return max(1, (cores or usable_cores()) // max(1, workers))


def validate(cc: ClusterConfig) -> None:
    from asign.errors import ConfigError

    if cc.workers < 0:
        raise ConfigError(f"--workers must be ≥ 0, got {cc.workers}",
                          fix="pass --workers N with N ≥ 1, or leave it out")
    if cc.workers and cc.scheduler:
        raise ConfigError("--workers and --scheduler both given",
                          fix="--workers N starts a local cluster; --scheduler ADDRESS joins one: "
                              "pass one of them")


@contextmanager
def connect(cc: ClusterConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for the config; a local cluster lives as long as the block."""
    from distributed import Client, LocalCluster

    from asign.errors import ConfigError

    if cc.scheduler:
        try:
            client = Client(cc.scheduler, timeout="20s")
        except OSError as err:
            raise ConfigError(f"cannot reach the Dask scheduler at {cc.scheduler} ({err})",
                              fix="start the cluster first and pass its address "
                                  "(scheduler_address), e.g. tcp://host:8786") from None
        try:
            yield client
        finally:
            client.close()
        return
    per = threads_per_worker(cc.workers, cc.cores)
    resources = {SLOT: 1} | ({GPU: cc.gpus} if cc.gpus else {})
    log.info("local Dask cluster: %d worker process(es) × %d thread(s)", cc.workers, per)
    # Starting the nannies sets OMP_NUM_THREADS=1 (and friends) in *this* process's
    # environment too; this process's torch would then run on one thread. Restored after.
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")}
    try:
        cluster = LocalCluster(n_workers=cc.workers, threads_per_worker=per, processes=True,
                               resources=resources,
                               host="127.0.0.1",  # a local cluster: loopback only
                               dashboard_address="127.0.0.1:0",  # any free port
                               silence_logs=logging.CRITICAL)  # failed tasks are reported by asign
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    client = Client(cluster)
    log.info("Dask dashboard: %s", client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def here() -> dict[str, Any]:
    """Where the calling code runs: host, pid, and the Dask worker address on a worker."""
    import sys

    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "worker": None}
    if "distributed" in sys.modules:  # only a worker process has it imported and a worker
        from distributed import get_worker

        try:
            out["worker"] = get_worker().address
        except ValueError:  # the driver: not inside a task
            pass
    return out


def worker_threads() -> int:
    """Threads the current task may use: its worker's Dask threads when the worker declares
    a ``slot`` (one task at a time), else 1 (the worker may run several tasks at once)."""
    from distributed import get_worker

    w = get_worker()
    return int(w.state.nthreads) if SLOT in w.state.total_resources else 1


def _check_slots(client: Any) -> bool:
    """True when the cluster's workers declare the slot resource (our local clusters do;
    a remote one does when started with ``--resources slot=1``)."""
    workers = client.scheduler_info().get("workers", {})
    return bool(workers) and all(SLOT in (w.get("resources") or {}) for w in workers.values())


@dataclass
class TaskFailure:
    """A task that raised: its label and the one-line error (the others keep their work)."""

    label: str
    error: BaseException


def submit(client: Any, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str], *,
           description: str, gpu: bool = False) -> list[Any]:
    """Submit ``fn(*a)`` for every ``a``; each task holds a worker's slot (and a GPU if asked)."""
    resources: dict[str, int] = {}
    if _check_slots(client):
        resources[SLOT] = 1
    else:
        log.warning("the cluster's workers declare no %r resource: tasks share workers and each "
                    "uses one thread (start workers with --resources %s=1, see the README)",
                    SLOT, SLOT)
    if gpu:
        resources[GPU] = 1
    return [client.submit(fn, *a, key=f"{description}-{label}-{i}-{uuid.uuid4().hex[:8]}",
                          pure=False, resources=resources or None)
            for i, (a, label) in enumerate(zip(args, labels, strict=True))]


def gather(futures: Sequence[Any], labels: Sequence[str], rep: Any, *, description: str,
           on_result: Callable[[int, Any], None] | None = None,
           task: int | None = None) -> list[Any]:
    """Wait for submitted tasks under one progress bar; results in submission order, a
    :class:`TaskFailure` where a task raised. ``on_result(i, r)`` runs here, in completion
    order, as each task finishes (e.g. to commit it). ``task``: advance this bar of ``rep``
    (one bar over every task of a run) instead of a bar of this batch's own."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    out: list[Any] = [None] * len(futures)
    own = task is None
    bar = rep.task(f"{description} ({len(futures)} tasks)",
                   total=len(futures)) if task is None else task
    for fut in as_completed(futures):
        i = index[fut.key]
        if fut.status == "error":
            out[i] = TaskFailure(labels[i], fut.exception())
        else:
            out[i] = fut.result()
            if on_result is not None:
                on_result(i, out[i])
        fut.release()
        rep.advance(bar, 1, last=labels[i])
    if own:
        rep.done(bar)
    return out


def run_tasks(client: Any, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str],
              rep: Any, *, description: str, gpu: bool = False,
              on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """:func:`submit` then :func:`gather`: the tasks run at once, one progress bar over all."""
    futures = submit(client, fn, args, labels, description=description, gpu=gpu)
    return gather(futures, labels, rep, description=description, on_result=on_result)
