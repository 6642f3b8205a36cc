"""Progress reporting: rich bars on a terminal, plain log lines elsewhere (CI, pipes).

Library code receives a ``Progress``-like object and calls ``task()``/``advance()``; it
never prints."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("asign")


@dataclass
class Reporter:
    """Thin facade over rich.progress with a logging fallback."""

    rich: Any = None
    _totals: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    _next: int = 0

    def task(self, description: str, total: float | None) -> int:
        if self.rich is not None:
            return self.rich.add_task(description, total=total, info="")
        self._next += 1
        self._totals[self._next] = (description, float(total or 0), 0.0)
        log.info("%s …", description)
        return self._next

    def advance(self, task: int, n: float = 1, **fields: Any) -> None:
        if self.rich is not None:
            info = " ".join(f"{k}={v}" for k, v in fields.items())
            self.rich.update(task, advance=n, **({"info": info} if info else {}))
            return
        desc, total, done = self._totals[task]
        done += n
        self._totals[task] = (desc, total, done)
        # log at ~10% steps so CI logs stay short
        step = max(total / 10, 1) if total else 1
        if total and (int(done / step) != int((done - n) / step) or done >= total):
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            log.info("%s %d/%d %s", desc, done, total, extra)

    def grow(self, task: int, n: float) -> None:
        """Add ``n`` to a bar's total (a cluster's bar grows as steps submit tasks)."""
        if self.rich is not None:
            total = next(t.total for t in self.rich.tasks if t.id == task) or 0
            self.rich.update(task, total=total + n)
            return
        desc, total, done = self._totals[task]
        self._totals[task] = (desc, total + n, done)

    def done(self, task: int) -> None:
        if self.rich is not None:
            self.rich.update(task, visible=True)
            return
        desc, total, _ = self._totals.get(task, ("", 0, 0))
        log.info("%s done", desc)


@contextmanager
def reporter(enabled: bool | None = None) -> Iterator[Reporter]:
    """Rich bars when stderr is a terminal (or ``enabled``), else log lines."""
    use_rich = sys.stderr.isatty() if enabled is None else enabled
    if not use_rich:
        yield Reporter()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*cols, transient=False) as bar:
        yield Reporter(rich=bar)


def silent() -> Reporter:
    """A reporter for library callers and tests that want no output."""
    return Reporter()
