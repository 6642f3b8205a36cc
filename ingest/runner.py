"""Where ingest's units of work run: in this process, or as Dask tasks on a cluster.

A step hands :meth:`Runner.map` its units (a module-level function and one argument tuple
per unit: a chunk of a section's patches, a group of embedding batches, a sample's
alignment or graph). Each result comes back to this process, where ``commit`` writes it:
the driver is the store's only writer, whether the units ran here or on workers, so LMDB
transactions, Parquet files and the manifest are written exactly as in a serial run.

Serially a unit's error propagates as before. On a cluster a failed unit is kept as a
:class:`~asign.cluster.TaskFailure`; the other units are committed (their work is kept), and
the step reports the failures once all units have finished."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asign.cluster import TaskFailure


@dataclass
class Runner:
    client: Any = None  # a distributed.Client, or None: serial
    rep: Any = None  # the Reporter of the run (one bar per batch of tasks)
    failures: list[TaskFailure] = field(default_factory=list)
    _early: dict[tuple[str, str], Any] = field(default_factory=dict)  # prefetched futures

    @property
    def distributed(self) -> bool:
        return self.client is not None

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
        from asign.cluster import gather, submit

        keys = [(fn.__name__, label) for label in labels]
        if keys and all(k in self._early for k in keys):
            futures = [self._early.pop(k) for k in keys]
        else:
            futures = submit(self.client, fn, list(args), list(labels), description=description, gpu=gpu)
        out = gather(futures, list(labels), self.rep, description=description, on_result=commit)
        failed = [r for r in out if isinstance(r, TaskFailure)]
        self.failures += failed
        return failed

    def prefetch(self, fn: Callable[..., Any], args: Sequence[tuple], labels: Sequence[str], *,
                 description: str) -> None:
        """On a cluster, start units now that a later :meth:`map` (same function and label)
        will collect: e.g. every sample's alignment at once, while the driver commits one
        sample at a time. Serially nothing happens here."""
        if not self.distributed or not args:
            return
        from asign.cluster import submit

        futures = submit(self.client, fn, list(args), list(labels), description=description)
        self._early.update({(fn.__name__, label): f for label, f in zip(labels, futures, strict=True)})


def raise_failures(failed: Sequence[TaskFailure], step: str, sample_id: str) -> None:
    """One line per failed unit, naming it and the fix (the unit's own error carries one)."""
    if not failed:
        return
    from asign.errors import AsignError, ClusterError

    lines = []
    for f in failed:
        err = f.error
        fix = "" if isinstance(err, AsignError) else " Fix: see the worker's log, then re-run (finished units are kept)"
        lines.append(f"step {step}, section {f.label}: {err}{fix}" if step in ("patches", "embed")
                     else f"step {step}: {err}{fix}")
    raise ClusterError(f"sample {sample_id}, " + " | ".join(dict.fromkeys(lines)))
