"""``report.html``: one self-contained page (PNGs embedded as base64, no scripts, no
external resources) with a short text summary that always puts a model's numbers beside
the mean-profile baseline and per-gene PCC beside per-spot PCC (DESIGN §5)."""

from __future__ import annotations

import base64
import html as _html
from pathlib import Path

import numpy as np
import pandas as pd

from asign.report.data import COMPUTED_MEAN, RunData
from asign.report.files import output_path

SETTING_TEXT = {
    "within_sample": "within-sample imputation: each sample's known layer is measured, its "
                     "other layers are hidden and imputed",
    "cross_sample": "cross-sample k-fold: each test sample is imputed by a model trained on "
                    "the other samples plus the test sample's own known layer",
}

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1250px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { background: #f0f0f0; font-style: italic; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.note { font-size: 0.85em; color: #555; }
"""


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _value(summary: pd.DataFrame, model: str, metric: str) -> float:
    row = summary[(summary.model == model) & (summary.metric == metric)]
    return float(row["mean"].iloc[0]) if len(row) and pd.notna(row["mean"].iloc[0]) else float("nan")


def summary_lines(data: RunData, summary: pd.DataFrame, models: list[str]) -> list[str]:
    """Plain-text sentences (HTML-escaped by the caller) summarising the run."""
    m = data.map_model
    base = "mean" if "mean" in models else COMPUTED_MEAN
    n_hidden = sum(len(v) for v in data.hidden.values())
    n_scored = sum(len(v) for v in data.scored.values())
    lines = [
        f"Setting: {data.setting} — {SETTING_TEXT.get(data.setting, data.setting)}.",
        f"Samples: {', '.join(sorted(data.known))}; known layer(s): "
        + ", ".join(f"{s} → {k}" for s, k in sorted(data.known.items()))
        + f"; {n_hidden} hidden section(s), {n_scored} with a measurement to score against.",
        f"Models in this run: {', '.join(models) or 'none scored'}; maps show {m}.",
    ]
    if not summary.empty and m in set(summary.model):
        base_gene = _value(summary, base, "pcc_gene")
        lines.append(
            f"{m}: PCC per gene {_fmt(_value(summary, m, 'pcc_gene'))} (mean-profile baseline "
            f"{_fmt(base_gene) if np.isfinite(base_gene) else 'undefined'}); PCC per spot "
            f"{_fmt(_value(summary, m, 'pcc_spot'))} (baseline "
            f"{_fmt(_value(summary, base, 'pcc_spot'))}); MSE {_fmt(_value(summary, m, 'mse'))} "
            f"(baseline {_fmt(_value(summary, base, 'mse'))}); MAE "
            f"{_fmt(_value(summary, m, 'mae'))} (baseline {_fmt(_value(summary, base, 'mae'))}).")
        lines.append(
            "Per-spot PCC is dominated by the mean expression profile (predicting the known "
            "layer's mean profile everywhere already scores high on it), so per-gene PCC — "
            "how well a gene's spatial pattern is recovered — is the number that tells methods "
            "apart. The mean profile has no per-gene PCC (its prediction is constant per gene).")
        lines.append(_verdict(summary, m, base))
    if base == COMPUTED_MEAN:
        lines.append("This run name has no `mean` run; the mean-profile baseline was computed "
                     "here from the known layer's labels and scored on the same sections.")
    return lines


def _verdict(summary: pd.DataFrame, model: str, base: str) -> str:
    """Which metrics the model wins against the mean-profile baseline, in words."""
    better, worse = [], []
    for metric, higher in (("pcc_spot", True), ("mse", False), ("mae", False)):
        a, b = _value(summary, model, metric), _value(summary, base, metric)
        if np.isfinite(a) and np.isfinite(b):
            (better if (a > b) == higher else worse).append(metric)
    if not better and not worse:
        return "No mean-profile baseline to compare with."
    parts = []
    if better:
        parts.append(f"better on {', '.join(better)}")
    if worse:
        parts.append(f"not better on {', '.join(worse)}")
    return f"Against the mean-profile baseline, {model} is {' and '.join(parts)}."


def _metrics_table(summary: pd.DataFrame, models: list[str]) -> str:
    metrics = [c for c in ("pcc_gene", "pcc_spot", "mse", "mae") if c in set(summary.metric)]
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in metrics)
    rows = []
    for model in models:
        cells = []
        for metric in metrics:
            row = summary[(summary.model == model) & (summary.metric == metric)]
            if len(row) and pd.notna(row["mean"].iloc[0]):
                r = row.iloc[0]
                cells.append(f"<td>{r['mean']:.3f} ± {r['sd']:.3f}</td>")
            else:
                cells.append("<td>n/a</td>")
        cls = ' class="baseline"' if model.startswith("mean") else ""
        rows.append(f"<tr{cls}><td>{_html.escape(model)}</td>{''.join(cells)}</tr>")
    n = int(summary["n"].max()) if "n" in summary and len(summary) else 0
    return (f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
            f"<p class='note'>Mean ± SD over {n} scored hidden section(s).</p>")


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = _html.escape(caption, quote=True)
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{alt}\">"
            f"<figcaption>{_html.escape(caption)}</figcaption></figure>")


def render(data: RunData, summary: pd.DataFrame, models: list[str], gene_pcc: pd.DataFrame,
           genes: list[str], images: list[tuple[str, list[tuple[str, Path]]]]) -> str:
    """The whole page as a string; ``images``: (heading, [(caption, png)]) in page order."""
    title = f"asign report — run {data.name}"
    runs = ", ".join(f"{m}: {r.run_id}" for m, r in sorted(data.runs.items()))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
        f"<p class='meta'>{_html.escape(data.setting)} · expression scale "
        f"{_html.escape(data.unit)} · runs {_html.escape(runs)}</p>",
        "<h2>Summary</h2><ul id='summary'>",
        *(f"<li>{_html.escape(line)}</li>" for line in summary_lines(data, summary, models)),
        "</ul>",
    ]
    if not summary.empty:
        parts += ["<h2>Metrics</h2>", _metrics_table(summary, models)]
    m = data.map_model
    if m in gene_pcc.columns:
        col = gene_pcc[m]
        items = [f"{g}: {_fmt(float(col.get(g, np.nan)))}" for g in genes]
        parts.append(f"<p>Per-gene PCC of the mapped genes ({_html.escape(m)}): "
                     f"{_html.escape('; '.join(items))}.</p>")
    for section, items in images:
        parts.append(f"<h2>{_html.escape(section)}</h2>")
        parts += [_img(path, caption) for caption, path in items]
    parts.append("<p class='note'>Maps: spot discs at their true diameter over the section's "
                 "H&E thumbnail, image orientation (origin top left, y down), axes in mm of the "
                 "section's image. 3D view: aligned frame of the sample.</p></body></html>")
    return "\n".join(parts)


def write(path: Path, page: str) -> Path:
    path = Path(path)
    with output_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
