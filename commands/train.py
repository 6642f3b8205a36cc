"""Body of `asign train`: one run, or one run per model × seed (serially or as Dask tasks),
then each run's metric table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asign.train.config import TrainConfig


def train_runs(cfg: TrainConfig, models: tuple[str, ...], seeds: list[int], *,
               workers: int = 0, scheduler: str | None = None) -> tuple[list[Any], bool]:
    """RunResults, or a failed dispatched run's record (with ``label`` and ``error``), and
    whether the runs were dispatched (several runs, or a cluster) rather than run here."""
    from asign.cluster import ClusterConfig

    cluster = ClusterConfig(workers=workers, scheduler=scheduler)
    if len(models) == 1 and len(seeds) == 1 and not cluster.distributed:
        from asign import train as train_stage

        return [train_stage.run(cfg.with_(model=models[0], seed=seeds[0]))], False
    from asign.train.dispatch import expand, run_many

    return run_many(expand(cfg, list(models), seeds), cluster), True


def summaries(results: list[Any], dispatched: bool) -> Any:
    """What ``--json`` prints: the run's summary, or a list when the runs were dispatched."""
    out = [r.summary() if hasattr(r, "summary") else
           {"run": r.label, "status": "failed", "error": str(r.error)} for r in results]
    return out if dispatched else out[0]


def print_metrics(store: Path, result: Any) -> None:
    """The run's metric table on stdout (per hidden section and mean, beside the mean
    baseline of the same run name when it exists); nothing for a run that did not return
    a RunResult (a failed dispatched run is reported on its own)."""
    from rich.console import Console

    from asign.store import open_store
    from asign.train.results import RunResult
    from asign.train.table import run_table

    if not isinstance(result, RunResult):
        return
    table, width = run_table(open_store(store), result)
    console = Console(width=width)
    console.print(table, highlight=False)
    from asign.train.paired import in_words

    for fold in (result.timings or {}).get("selection", {}).values():
        for other, r in (fold.get("paired") or {}).items():
            console.print(in_words(result.model, other, r), highlight=False)


__all__ = ["print_metrics", "summaries", "train_runs"]
