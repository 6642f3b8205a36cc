"""`asign ingest`: raw slides + counts → feature store. ``run(cfg)`` is the entry point."""

from __future__ import annotations

from typing import Any

from asign.ingest.config import IngestConfig


def run(cfg: IngestConfig) -> dict[str, Any]:
    from asign.ingest.pipeline import run_pipeline

    return run_pipeline(cfg)
