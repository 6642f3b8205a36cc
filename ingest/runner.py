"""Where ingest's units of work run: in this process, or as Dask tasks on a cluster.

A step hands :meth:`Runner.map` its units (a module-level function and one argument tuple
per unit: a chunk of a section's patches, a group of embedding batches, a sample's graph).
Each result comes back to this process, where ``commit`` writes it: the driver is the
store's only writer, whether the units ran here or on workers, so LMDB transactions,
Parquet files and the manifest are written exactly as in a serial run.

Units may depend on each other (align: a pair's registration needs its two sections read):
:meth:`Runner.start` returns handles that later units take as arguments (Dask futures on a
cluster, so the data goes worker to worker; memoised calls serially), and
:meth:`Runner.finish` commits them in order.

On a cluster one progress bar counts every task of the run (its total grows as steps
submit theirs). Serially a unit's error propagates as before. On a cluster a failed unit is
kept as a :class:`~asign.cluster.TaskFailure`; the other units are committed (their work is
kept), and the step reports the failures once all units have finished."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asign.cluster import TaskFailure


class _Call:
    """A unit of a serial run: computed once, when first needed (its own commit, or a unit
    that takes it as an argument)."""

    _unset = object()

    def __init__(self, fn: Callable[..., Any], args: tuple, local: dict[str, Any]) -> None:
        self.fn, self.args, self.local, self._value = fn, args, local, self._unset

    def value(self) -> Any:
        if self._value is self._unset:
            self._value = self.fn(*_resolve(self.args), **self.local)
        return self._value


def _resolve(x: Any) -> Any:
    """Arguments with every serial handle replaced by its value (as Dask does with futures
    inside argument lists, tuples and dicts)."""
    if isinstance(x, _Call):
        return x.value()
    if isinstance(x, tuple | list):
        return type(x)(_resolve(v) for v in x)
    if isinstance(x, dict):
        return {k: _resolve(v) for k, v in x.items()}
    return x


@dataclass
class Runner:
    client: Any = None  # a distributed.Client, or None: serial
    rep: Any = None  # the Reporter of the run
    failures: list[TaskFailure] = field(default_factory=list)
    _early: dict[Any, Any] = field(default_factory=dict)  # prefetched futures / handles
    _bar: int | None = None  # the one bar over all of the cluster's tasks
    # where a cluster run's time goes (summary["cluster"]; bench/scale.py --workers reads it)
    _fn_of: dict[str, str] = field(default_factory=dict)  # task key → unit function
    _commit_s: float = 0.0  # this process, writing results
    _t0: float | None = None

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def start(self, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str], *,
              description: str, gpu: bool = False,
              local: dict[str, Any] | None = None) -> list[Any]:
        """Start ``fn(*a)`` for each unit; returns one handle per unit, which later units
        may take as (part of) an argument. Nothing is committed until :meth:`finish`."""
        if not self.distributed:
            return [_Call(fn, tuple(a), dict(local or {})) for a in args]
        from asign.cluster import submit

        self._grow(len(args))
        futures = submit(self.client, fn, list(args), list(labels), description=description,
                         gpu=gpu)
        self._fn_of.update({f.key: fn.__name__ for f in futures})
        return futures

    def finish(self, handles: Sequence[Any], labels: Sequence[str],
               commit: Callable[[int, Any], None]) -> list[TaskFailure]:
        """Commit every unit's result here: serially in order (an error propagates), on a
        cluster as each completes (a failure is kept and returned; the others commit)."""
        if not self.distributed:
            for i, h in enumerate(handles):
                commit(i, h.value())
            return []
        from asign.cluster import gather

        def timed(i: int, result: Any) -> None:
            t = time.perf_counter()
            commit(i, result)
            self._commit_s += time.perf_counter() - t

        out = gather(list(handles), list(labels), self.rep, description="", task=self._bar,
                     on_result=timed)
        failed = [r for r in out if isinstance(r, TaskFailure)]
        self.failures += failed
        return failed

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str],
            commit: Callable[[int, Any], None], *, description: str, gpu: bool = False,
            local: dict[str, Any] | None = None) -> list[TaskFailure]:
        """Run ``fn(*a)`` for each unit and ``commit(i, result)`` here as each finishes.

        ``local``: keyword arguments only a serial run passes (objects of this process, such
        as an open LMDB handle or a loaded encoder, that a worker opens for itself)."""
        if not self.distributed:
            for i, a in enumerate(args):
                commit(i, fn(*a, **(local or {})))
            return []
        keys = [(fn.__name__, label) for label in labels]
        if keys and all(k in self._early for k in keys):
            futures = [self._early.pop(k) for k in keys]
        else:
            futures = self.start(fn, args, labels, description=description, gpu=gpu)
        return self.finish(futures, labels, commit)

    def prefetch(self, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str], *,
                 description: str) -> None:
        """On a cluster, start units now that a later :meth:`map` (same function and label)
        will collect: e.g. every sample's graph at once, while the driver commits one
        sample at a time. Serially nothing happens here."""
        if not self.distributed or not args:
            return
        futures = self.start(fn, args, labels, description=description)
        self._early.update({(fn.__name__, label): f
                            for label, f in zip(labels, futures, strict=True)})

    def keep(self, key: Any, value: Any) -> None:
        """Keep started work (e.g. a sample's align units) for a later :meth:`take`."""
        self._early[key] = value

    def take(self, key: Any) -> Any:
        return self._early.pop(key, None)

    def _grow(self, n: int) -> None:
        if self.rep is None:
            from asign.progress import silent

            self.rep = silent()
        if self._bar is None:
            self._bar = self.rep.task("Dask tasks", total=0)
            self._t0 = time.time()
            self.client.get_task_stream(count=0)  # the scheduler records tasks from here on
        self.rep.grow(self._bar, n)

    def close(self) -> dict[str, Any]:
        """The run is over: mark the cluster's bar done. Returns where the time went on a
        cluster (empty serially): tasks, seconds this process spent committing results,
        and the workers' seconds per unit function (compute, and transfers between them)."""
        if self._bar is None:
            return {}
        if self.rep is not None:
            self.rep.done(self._bar)
        compute: dict[str, float] = {}
        transfer = 0.0
        try:
            stream = self.client.get_task_stream(start=self._t0)
        except Exception:  # noqa: BLE001 - diagnostics only: a cluster without the plugin
            stream = []
        for rec in stream:
            fn = self._fn_of.get(rec.get("key"), "other")
            for ss in rec.get("startstops", []):
                if ss["action"] == "compute":
                    compute[fn] = compute.get(fn, 0.0) + ss["stop"] - ss["start"]
                elif ss["action"] == "transfer":
                    transfer += ss["stop"] - ss["start"]
        return {"tasks": len(self._fn_of), "driver_commit_s": round(self._commit_s, 2),
                "worker_compute_s": {k: round(v, 2) for k, v in sorted(compute.items())},
                "worker_transfer_s": round(transfer, 2)}


def raise_failures(failed: Sequence[TaskFailure], step: str, sample_id: str) -> None:
    """One line per failed unit, naming it and the fix (the unit's own error carries one).
    A unit that failed only because a unit it needed failed (Dask hands the dependants the
    same error) adds no line of its own."""
    if not failed:
        return
    from asign.errors import AsignError, ClusterError

    lines: dict[str, str] = {}
    for f in failed:
        err = f.error
        fix = ("" if isinstance(err, AsignError)
               else " Fix: see the worker's log, then re-run (finished units are kept)")
        where = (f"section {f.label}" if step in ("patches", "embed")
                 else f.label if step == "align" else "")
        line = f"step {step}, {where}: {err}{fix}" if where else f"step {step}: {err}{fix}"
        lines.setdefault(f"{type(err).__name__}: {err}" if step == "align" else line, line)
    raise ClusterError(f"sample {sample_id}, " + " | ".join(lines.values()))
