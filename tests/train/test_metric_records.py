"""A metric is one record in train/metrics.py: adding one there (and nowhere else) puts it
in evaluate(), the train table, the report's sentences, table and figure titles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from asign.report.html import _metrics_table, _verdict, comparison_lines
from asign.train.metrics import METRICS, Metric, evaluate
from asign.train.table import metric_table


def _spearman_gene(pred: np.ndarray, truth: np.ndarray) -> float:
    rs = [spearmanr(p, t).statistic for p, t in zip(pred.T, truth.T, strict=True)]
    return float(np.nanmean(rs))


@pytest.fixture
def spearman(monkeypatch):
    monkeypatch.setitem(METRICS, "spearman_gene",
                        Metric("spearman_gene", _spearman_gene, True, "Spearman per gene"))


def _summary(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "metric": m, "mean": v, "sd": 0.0, "n": 2}
                         for model, row in values.items() for m, v in row.items()])


def test_records_are_complete_and_derived_everywhere():
    assert list(METRICS)[0] == "pcc_gene"  # the report's headline metric
    assert {m.name for m in METRICS.values() if m.accuracy} == {"mse", "mae", "pcc_spot",
                                                               "pcc_gene"}
    assert METRICS["mse"].axis_title == "MSE (lower is better)"
    assert METRICS["pcc_gene"].better(0.3, 0.2) and METRICS["mse"].better(0.2, 0.3)


def test_one_record_adds_a_metric_everywhere(spearman):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 5))
    out = evaluate(truth + rng.normal(scale=0.1, size=truth.shape), truth)
    assert 0.9 < out["spearman_gene"] <= 1.0

    rows = [{"fold": 0, "sample_id": "C", "section_id": s, "metric": m, "value": v}
            for s in ("C2", "C3") for m, v in (("mse", 0.2), ("spearman_gene", 0.5))]
    table = metric_table(pd.DataFrame(rows))
    assert "spearman_gene" in table.columns and table.loc[("", "mean", ""), "spearman_gene"] == 0.5

    summary = _summary({"asign3d": {"spearman_gene": 0.5, "mse": 0.2},
                        "idw": {"spearman_gene": 0.4, "mse": 0.3},
                        "mean": {"spearman_gene": 0.1, "mse": 0.4}})
    lines = comparison_lines(summary, "asign3d")
    assert any("Spearman per gene 0.500" in line and "is better" in line for line in lines)
    assert "spearman_gene" in _verdict(summary, "asign3d", "mean")
    assert "<th>spearman_gene</th>" in _metrics_table(summary, ["asign3d", "idw", "mean"])


def test_direction_comes_from_the_record(monkeypatch):
    summary = _summary({"asign3d": {"mse": 0.3}, "idw": {"mse": 0.2}})
    assert "NOT better" in comparison_lines(summary, "asign3d")[0]
    monkeypatch.setitem(METRICS, "mse", Metric("mse", METRICS["mse"].fn, True, "MSE"))
    assert "is better" in comparison_lines(summary, "asign3d")[0]
