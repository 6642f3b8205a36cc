"""`asign demo`: a synthetic 3D sample generated offline, then ingest → train → query.

It exercises the real readers, store, alignment, encoder and models on data whose truth is
known; the numbers it prints are for checking the pipeline, not for judging the method."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def demo_models() -> tuple[str, ...]:
    """Every registered model, baselines first (the networks take longest)."""
    from asign.train.config import MODELS

    return tuple(sorted(MODELS, key=lambda m: (MODELS[m].neural, m)))



def run_demo(out: Path, *, layers: int = 4, seed: int = 0, train: bool = True,
             epochs: int = 30) -> dict[str, Any]:
    from asign.commands.synthetic import make_demo_sample
    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig

    out = Path(out)
    manifest = make_demo_sample(out / "sample", n_layers=layers, seed=seed)
    store = out / "store"
    summary: dict[str, Any] = {"manifest": str(manifest), "store": str(store)}
    summary["ingest"] = ingest_run(IngestConfig(
        sources=(manifest,), store=store, weights="random", n_genes=50, seed=seed))
    if not train:
        return summary

    from asign.train import run as train_run
    from asign.train.config import TrainConfig

    runs = {}
    for model in demo_models():
        result = train_run(TrainConfig(store=store, model=model, run="demo", epochs=epochs,
                                       seed=seed))
        runs[model] = result.run_id
    summary["runs"] = runs

    from asign.store import open_store
    from asign.train.metrics import accuracy_metrics

    table = open_store(store).query(
        "select r.model, m.metric, round(avg(m.value), 4) as value "
        "from metrics m join runs r using (run_id) where r.name = 'demo' "
        f"and m.metric in ({', '.join(repr(m) for m in accuracy_metrics())}) "
        "group by 1, 2 order by 2, 3 desc"
    )
    summary["metrics"] = table.to_pylist()
    for row in summary["metrics"]:
        log.info("demo %-10s %-8s %.4f", row["model"], row["metric"], row["value"])
    return summary
