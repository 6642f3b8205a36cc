"""``report.html``: one self-contained page (PNGs embedded as base64, plotly.js inline for
the 3D view, no external resources) with a short text summary that always puts a model's
numbers beside the mean-profile baseline and per-gene PCC beside per-spot PCC (DESIGN §5)."""

from __future__ import annotations

import base64
import html as _html
from pathlib import Path

import numpy as np
import pandas as pd

from asign.report.data import BASELINES, COMPUTED_MEAN, RunData, is_network
from asign.store.atomic import atomic_path
from asign.train.metrics import METRICS, accuracy_metrics

SETTING_TEXT = {
    "within_sample": "within-sample imputation: each sample's known layer is measured, its "
                     "other layers are hidden and imputed",
    "cross_sample": "cross-sample k-fold: each test sample is imputed by a model trained on "
                    "the other samples plus the test sample's own known layer",
    "cross_patient": "cross-patient check: each test sample is predicted from its images "
                     "alone by a model trained on the other samples' labelled sections",
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
.header { border: 1px solid #ccc; border-radius: 4px; padding: 0.4em 1em; background: #fafafa; }
.header td, .header th { border: none; padding: 0.1em 0.8em 0.1em 0; text-align: left; }
.warn { background: #b00020; color: white; font-weight: bold; padding: 0.6em 1em;
        border-radius: 4px; margin: 0.8em 0; }
.better { color: #1b5e20; } .worse { color: #b00020; }
"""

TIE = 0.005  # differences below this are not called a win either way


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _value(summary: pd.DataFrame, model: str, metric: str) -> float:
    row = summary[(summary.model == model) & (summary.metric == metric)]
    ok = len(row) and pd.notna(row["mean"].iloc[0])
    return float(row["mean"].iloc[0]) if ok else float("nan")


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
        lines += comparison_lines(summary, m)
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


def best_baseline(summary: pd.DataFrame, metric: str, exclude: str) -> tuple[str, float] | None:
    """The baseline model with the best mean of ``metric`` (None when no baseline has it)."""
    best = None
    for model in BASELINES:
        if model == exclude:
            continue
        v = _value(summary, model, metric)
        if np.isfinite(v) and (best is None or METRICS[metric].better(v, best[1])):
            best = (model, v)
    return best


def comparison_lines(summary: pd.DataFrame, model: str) -> list[str]:
    """One sentence per metric: the model beside the best baseline of this run on it."""
    out = []
    for metric in accuracy_metrics():
        name = METRICS[metric].title
        v = _value(summary, model, metric)
        best = best_baseline(summary, metric, model)
        if not np.isfinite(v):
            continue
        if best is None:
            out.append(f"{model}: {name} {_fmt(v)} (no baseline in this run defines it).")
            continue
        if abs(v - best[1]) < TIE:
            verdict = f"on par (difference below {TIE})"
        elif METRICS[metric].better(v, best[1]):
            verdict = "better"
        else:
            verdict = "NOT better"
        out.append(f"{model}: {name} {_fmt(v)} — best baseline {best[0]} {_fmt(best[1])}: "
                   f"{model} is {verdict}.")
    return out


def _verdict(summary: pd.DataFrame, model: str, base: str) -> str:
    """Which metrics the model wins against the mean-profile baseline, in words."""
    better, worse = [], []
    for metric in accuracy_metrics():  # the mean profile has no per-gene PCC: skipped
        a, b = _value(summary, model, metric), _value(summary, base, metric)
        if np.isfinite(a) and np.isfinite(b):
            (better if METRICS[metric].better(a, b) else worse).append(metric)
    if not better and not worse:
        return "No mean-profile baseline to compare with."
    parts = []
    if better:
        parts.append(f"better on {', '.join(better)}")
    if worse:
        parts.append(f"not better on {', '.join(worse)}")
    return f"Against the mean-profile baseline, {model} is {' and '.join(parts)}."


def _metrics_table(summary: pd.DataFrame, models: list[str]) -> str:
    metrics = [c for c in accuracy_metrics() if c in set(summary.metric)]
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


def header(data: RunData) -> list[str]:
    """What a reader must know before trusting a number: encoder and weights (a red banner
    when the features come from random weights), epochs, known layers, alignment."""
    embed = data.embed
    kind = str(embed.get("weights_kind", embed.get("weights", "unknown")))
    run = data.runs[data.map_model]
    cfg = run.config
    timings = cfg.get("timings", {}) if isinstance(cfg.get("timings"), dict) else {}
    if is_network(data.map_model):
        best = {k: v.get("best_epoch") for k, v in timings.get("selection", {}).items()
                if isinstance(v, dict)}
        epochs = (f"{timings.get('epochs_run', cfg.get('epochs', '?'))} run of "
                  f"{cfg.get('epochs', '?')} configured"
                  + (f"; kept epoch {', '.join(str(b) for b in best.values())} (best on the "
                     "validation spots)" if best else ""))
    else:
        epochs = f"none: {data.map_model} is a baseline (not trained)"
    tf = data.transforms
    if tf is not None and len(tf):
        methods = ", ".join(sorted(set(tf.method.astype(str))))
        refs = ", ".join(sorted(set(tf.reference_id.astype(str))))
        align = f"{methods} (reference section {refs})"
    else:
        align = "no transforms in the store (aligned coordinates given with the input)"
    thumbs = sorted({round(t.downsample * float(u), 1) for sec, t in data.thumbs.items()
                     for u in data.sections.um_per_px[data.sections.section_id == sec]
                     if pd.notna(u)})
    rows = [
        ("Encoder", f"{embed.get('encoder', 'unknown')} — {embed.get('description', '')}"),
        ("Weights", f"{kind}" + (f" ({embed.get('weights_sha256')})"
                                 if embed.get("weights_sha256") else "")),
        ("Model on the maps", f"{data.map_model} (run {run.run_id})"),
        ("Epochs", epochs),
        ("Known layer(s)", ", ".join(f"{s} → {k}" for s, k in sorted(data.known.items()))),
        ("Alignment", align),
        ("H&E on the maps", (", ".join(f"{v} µm/px" for v in thumbs) + " store thumbnails"
                             + ("" if thumbs and max(thumbs) <= 4.05 else
                                " — coarser than 4 µm/px: this store was aligned before fine "
                                "thumbnails existed; re-run `asign ingest` on it to add them"))
         if thumbs else "none in the store"),
        ("Expression scale", f"model: {data.unit}; maps: percentiles within each panel"),
    ]
    out = []
    if "random" in kind:
        out.append("<div class='warn' id='random-weights'>WARNING: the image features of this "
                   "store come from RANDOM encoder weights (a pipeline test). Every image-based "
                   "prediction below (asign3d, asign2d, similarity) is meaningless; re-ingest "
                   "with --weights imagenet or a weights file.</div>")
    out.append("<div class='header' id='header'><table>" + "".join(
        f"<tr><th>{_html.escape(k)}</th><td>{_html.escape(v)}</td></tr>" for k, v in rows)
        + "</table></div>")
    return out


def render(data: RunData, summary: pd.DataFrame, models: list[str], gene_pcc: pd.DataFrame,
           genes: list[str], images: list[tuple[str, list[tuple[str, Path]]]],
           views: list[str] | tuple[str, ...] = ()) -> str:
    """The whole page as a string; ``images``: (heading, [(caption, png)]) in page order;
    ``views``: HTML fragments of the interactive 3D view (plotly, JavaScript inline)."""
    title = f"asign report — run {data.name}"
    runs = ", ".join(f"{m}: {r.run_id}" for m, r in sorted(data.runs.items()))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
        *header(data),
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
        if section.startswith("3D view") and views:
            parts.append("<h2 id='view3d'>3D view (interactive)</h2>")
            parts += [f"<div class='view3d'>{v}</div>" for v in views]
        anchor = _fs_id(section)
        parts.append(f"<h2 id='{anchor}'>{_html.escape(section)}</h2>")
        parts += [_img(path, caption) for caption, path in items]
    parts.append("<p class='note'>Maps: spot discs at their true diameter over the section's "
                 "H&E thumbnail, image orientation (origin top left, y down), axes in mm of the "
                 "section's image. 3D view: aligned frame of the sample.</p></body></html>")
    return "\n".join(parts)


def _fs_id(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def write(path: Path, page: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
