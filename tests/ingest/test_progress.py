"""The Reporter (asign/progress.py): a bar whose total grows as tasks are submitted (the
one bar over a cluster's tasks), on rich and on the plain-log fallback."""

from __future__ import annotations

import logging


def test_a_growing_bar_on_rich():
    from asign.progress import reporter

    with reporter(True) as rep:
        bar = rep.task("Dask tasks", total=0)
        rep.grow(bar, 3)
        rep.advance(bar, 2, last="pair a->b")
        rep.grow(bar, 2)
        rep.advance(bar, 3, last="sample s")
        rep.done(bar)
        (task,) = rep.rich.tasks
        assert (task.total, task.completed) == (5, 5) and task.fields["info"] == "last=sample s"


def test_a_growing_bar_logs_its_new_total(caplog):
    from asign.progress import Reporter

    rep = Reporter()
    with caplog.at_level(logging.INFO, logger="asign"):
        bar = rep.task("Dask tasks", total=0)
        rep.grow(bar, 2)
        rep.advance(bar, 1, last="section a")
        rep.grow(bar, 1)
        rep.advance(bar, 2, last="section b")
    lines = [r.getMessage().strip() for r in caplog.records]
    assert "Dask tasks 1/2 last=section a" in lines and "Dask tasks 3/3 last=section b" in lines
