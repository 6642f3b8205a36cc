"""The metric table `asign train` prints when a run ends: one row per scored (hidden)
section and a mean row, each metric beside the same-named run's mean-profile baseline when
that run exists in the store (DESIGN §5: every figure beside the mean baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from asign.train.metrics import metric_names


def metric_table(metrics: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows: (fold, sample, section) and a final ``mean`` row; columns: the run's metrics
    and, with ``baseline``, ``<metric> (mean)`` on the same sections. Both frames are in the
    ``metrics`` table layout (fold, sample_id, section_id, metric, value)."""
    keys = ["fold", "sample_id", "section_id"]
    own = _wide(metrics, keys)
    if own.empty:
        return own
    if baseline is not None and not baseline.empty:
        base = _wide(baseline, keys).add_suffix(" (mean)")
        own = own.join(base.reindex(own.index))
        order = [c for m in metric_names() for c in (m, f"{m} (mean)") if c in own.columns]
        own = own[order]
    mean = own.mean(axis=0, skipna=True).to_frame().T
    mean.index = pd.MultiIndex.from_tuples([("", "mean", "")], names=keys)
    return pd.concat([own, mean])


def _wide(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    m = metrics[metrics.metric.isin(metric_names())]
    if m.empty:
        return pd.DataFrame()
    wide = m.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean",
                         dropna=False)
    return wide[[c for c in metric_names() if c in wide.columns]].sort_index()


def baseline_metrics(store: Any, name: str, model: str) -> pd.DataFrame | None:
    """Metrics of the latest finished ``mean`` run called ``name`` (None when there is none,
    or when ``model`` is the mean baseline itself)."""
    if model == "mean":
        return None
    runs = store.read("runs").to_pandas()
    done = runs[(runs["name"] == name) & (runs.model == "mean") & (runs.status == "done")]
    if done.empty:
        return None
    rid = str(done.sort_values("created_at").run_id.iloc[-1])
    return store.read("metrics", key=rid).to_pandas() if store.has("metrics", key=rid) else None


def format_cell(value: Any) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def run_table(store: Any, result: Any) -> tuple[Any, int]:
    """(a rich renderable, console width) for a finished :class:`RunResult`."""
    from rich.table import Table

    base = baseline_metrics(store, result.name, result.model)
    table = metric_table(result.metrics.to_pandas(), base)
    head = f"run {result.run_id} ({result.model}, {result.setting}): {result.status}"
    width = max(100, 20 + 14 * (len(table.columns) + 2))
    if table.empty:
        return f"{head}; no scored sections", width
    if base is None and result.model != "mean":
        head += f"; no `mean` run named {result.name} to compare with"
    out = Table(title=head)
    for col in ("fold", "sample", "section", *table.columns):
        out.add_column(col, justify="left" if col in ("sample", "section") else "right")
    for i, ((fold, sample, section), row) in enumerate(table.iterrows()):
        out.add_row(str(fold), str(sample), str(section), *(format_cell(v) for v in row),
                    end_section=i == len(table) - 2)
    return out, width
