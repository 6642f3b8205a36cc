"""`asign report` and `asign export`: what users look at after `asign train`.

``write_report`` draws, for one run name, spatial maps of measured vs predicted genes on
the H&E of every hidden section, a 3D stack of one gene across layers, the metrics of
every model of the run beside the mean-profile baseline and the per-gene PCC
distribution, and puts them into one self-contained ``report.html``.
``export_h5ad`` (see :mod:`asign.report.export`) writes the imputed volume as AnnData.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asign.errors import InputError

if TYPE_CHECKING:  # the data module loads pandas: not for every `asign --help`
    from asign.report.data import RunData

__all__ = ["DEFAULT_GENES", "export_h5ad", "pick_genes", "write_report"]

log = logging.getLogger(__name__)

DEFAULT_GENES = ("ERBB2", "MDK")  # the paper's clinical markers


def write_report(store_path: Path, run_name: str, out_dir: Path,
                 genes: list[str] | tuple[str, ...] | None = None,
                 model: str | None = None) -> Path:
    """Write the report of run ``run_name`` into ``out_dir``; returns ``report.html``.

    ``genes``: genes to map (default: ERBB2 and MDK when in the panel, plus the best and
    the worst predicted gene). ``model``: the run drawn on the maps (default: asign3d when
    the run name has one, else the first of asign2d, cli, similarity, idw, mean).
    """
    from asign.report import html, plots
    from asign.report.data import gene_pcc_table, load_run_data, metrics_summary
    from asign.store import open_store
    from asign.store.atomic import atomic_path

    store = open_store(Path(store_path))
    data = load_run_data(store, run_name, model)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the report folder ({err.strerror})", path=out,
                         fix="choose a writable --out directory") from err
    gene_pcc = gene_pcc_table(data)
    chosen = pick_genes(data.genes, gene_pcc.get(data.map_model), genes)
    roles = gene_roles(chosen, gene_pcc.get(data.map_model), explicit=bool(genes))
    m = data.map_model
    summary = metrics_summary(data.metrics)
    models = _model_order(list(summary.model.unique()) if not summary.empty else [], m)

    quantitative: list[tuple[str, Path]] = []
    if not summary.empty:
        with atomic_path(out / "metrics.csv") as tmp:
            summary.to_csv(tmp, index=False)
        title = (f"Metrics on hidden sections, run {run_name} ({data.setting}); "
                 "bars = mean over sections, error bars = SD")
        quantitative.append((
            "Metrics per model on the hidden sections; the grey hatched bar and dashed line "
            "are the known layer's mean profile.",
            plots.metrics_bars(summary, models, title, out / "metrics.png")))
    if gene_pcc.notna().any().any():
        with atomic_path(out / "gene_pcc.csv") as tmp:
            gene_pcc.reset_index().to_csv(tmp, index=False)
        cols = [c for c in models if c in gene_pcc.columns]
        title = (f"Per-gene PCC on hidden sections, {len(gene_pcc)} genes "
                 f"(run {run_name}, {data.setting})")
        quantitative.append((
            "Per-gene PCC per model (one point per gene); the mapped genes are circled in red.",
            plots.pcc_distribution(gene_pcc[cols], chosen, title, out / "pcc_per_gene.png")))

    maps: list[tuple[str, Path]] = []
    volumes: list[tuple[str, Path]] = []
    for sample in sorted(data.hidden):
        for gene in chosen:
            sections = section_maps(data, sample, gene)
            if not sections:
                continue
            title = (f"{gene}{roles[gene]}: known layer {data.known[sample]} and hidden "
                     f"sections of sample {sample}, measured vs predicted (model {m}, "
                     f"run {run_name})")
            path = plots.spatial_maps(sections, gene, m, display_unit(data), title,
                                      out / f"map_{_fs(sample)}_{_fs(gene)}.png")
            maps.append((f"{gene}{roles[gene]}, sample {sample}: H&E, measured and predicted "
                         f"({m}) on the known layer (first row, measured only) and each hidden "
                         "section. Colours are percentiles within each panel (where the gene "
                         "is high or low in that section); panel titles give the value range "
                         f"in {display_unit(data)}.", path))
        layers = volume_layers(data, sample, chosen[0])
        if layers:
            title = (f"{chosen[0]} across the layers of sample {sample}, aligned frame "
                     f"(run {run_name})")
            path = plots.volume_3d(layers, chosen[0], m, display_unit(data), title,
                                   out / f"volume_{_fs(sample)}_{_fs(chosen[0])}.png")
            volumes.append((f"{chosen[0]} in 3D, sample {sample}: the measured layers (left) "
                            f"beside the imputed volume (right), first section on top.", path))
    images = [(h, items) for h, items in (("Metric plots", quantitative),
                                           ("Measured vs predicted maps", maps),
                                           ("3D view (static)", volumes)) if items]
    views = [view_3d(data, sample, chosen, first=i == 0)
             for i, sample in enumerate(sorted(data.hidden))]
    page = html.render(data, summary, models, gene_pcc, chosen, images,
                       views=[v for v in views if v])
    target = out / "report.html"
    html.write(target, page)
    log.info("report of run %s written to %s (%d figures)", run_name, target,
             sum(len(items) for _, items in images))
    return target


def export_h5ad(store_path: Path, run_name: str, out_path: Path, model: str | None = None) -> Path:
    from asign.report.export import export_h5ad as _export

    return _export(store_path, run_name, out_path, model=model)


def pick_genes(panel: list[str], map_pcc: object, genes: list[str] | tuple[str, ...] | None
               ) -> list[str]:
    """Genes to map: the requested ones (all must be in the panel), or ERBB2/MDK when in
    the panel plus the best and the worst per-gene PCC of the mapped model."""
    if genes:
        missing = [g for g in genes if g not in panel]
        if missing:
            raise InputError(f"gene(s) {', '.join(missing)} are not in the store's gene panel "
                             f"({len(panel)} genes)",
                             fix=f"pick from the panel, e.g. {', '.join(panel[:5])} "
                                 "(`asign query \"select gene from genes order by rank\"`)")
        return list(dict.fromkeys(genes))
    chosen = [g for g in DEFAULT_GENES if g in panel]
    if map_pcc is not None:
        pcc = map_pcc.dropna()  # type: ignore[attr-defined]
        if len(pcc):
            chosen += [str(pcc.idxmax()), str(pcc.idxmin())]
    chosen = list(dict.fromkeys(chosen)) or panel[:1]
    return chosen


def gene_roles(genes: list[str], map_pcc: object, explicit: bool) -> dict[str, str]:
    """A short note per mapped gene for titles: why it was chosen."""
    roles = dict.fromkeys(genes, "")
    if explicit:
        return roles
    for g in genes:
        if g in DEFAULT_GENES:
            roles[g] = " (clinical marker)"
    if map_pcc is not None:
        pcc = map_pcc.dropna()  # type: ignore[attr-defined]
        if len(pcc):
            best, worst = str(pcc.idxmax()), str(pcc.idxmin())
            if best in roles and not roles[best]:
                roles[best] = " (best predicted gene)"
            if worst in roles and not roles[worst]:
                roles[worst] = " (worst predicted gene)"
    return roles


def section_maps(data: RunData, sample: str, gene: str) -> list:
    """The known layer (measured only) and the hidden sections of ``sample`` as
    :class:`plots.SectionMap` for ``gene``."""
    import pandas as pd

    from asign.report.plots import SectionMap
    from asign.store.sections import spot_shape
    from asign.train.metrics import pcc_per_gene

    g = data.genes.index(gene)
    pred_all = data.predictions[data.map_model]
    secs = data.sections.set_index("section_id")
    known = data.known[sample]
    bounds = data.bounds.get(data.map_model)  # (lower, upper) when the run has intervals
    out = []
    for sec in [known, *data.hidden[sample]]:
        is_known = sec == known
        values = data.labels if is_known else pred_all
        rows = (data.spots.section_id == sec).to_numpy() & np.isfinite(values[:, g])
        if not rows.any():
            continue
        spots = data.spots[rows]
        info = secs.loc[sec]
        um = float(info.um_per_px) if pd.notna(info.um_per_px) else None
        if um and spots.px.notna().all():
            xy = spots[["px", "py"]].to_numpy(dtype=float) * um
            frame = "image"
        else:
            xy = spots[["x_um", "y_um"]].to_numpy(dtype=float)
            frame = "aligned"
        thumb = scale = None
        if frame == "image" and sec in data.thumbs:
            thumb = data.thumbs[sec].read()
            scale = data.thumbs[sec].downsample * um
        measured = data.labels[rows, g]
        predicted = None if is_known else pred_all[rows, g]
        has_truth = np.isfinite(measured).any()
        pcc = None
        if has_truth and predicted is not None:
            ok = np.isfinite(measured)
            pcc = float(pcc_per_gene(predicted[ok, None], measured[ok, None])[0])
        out.append(SectionMap(
            section_id=sec, xy_um=xy, diameter_um=float(info.spot_diameter_um),
            predicted=predicted, measured=measured if has_truth else None, pcc=pcc,
            thumb=thumb, thumb_um_per_px=scale, frame=frame, known=is_known,
            predicted_scale=None if is_known else _display_scale(data, pred_all[rows], g),
            measured_scale=_display_scale(data, data.labels[rows], g) if has_truth else None,
            width=None if is_known or bounds is None else bounds[1][rows, g] - bounds[0][rows, g],
            shape=spot_shape(info)))
    return out


def _display_scale(data: RunData, rows: np.ndarray, g: int) -> np.ndarray:
    """Gene ``g`` of ``rows`` (spots × genes, the store's scale) on log1p(CP10k)."""
    from asign.report.scale import FORMULAS, to_log1p_cp10k

    if data.normalisation not in FORMULAS:
        return rows[:, g]
    return to_log1p_cp10k(rows, data.normalisation)[:, g]


def volume_layers(data: RunData, sample: str, gene: str) -> list:
    """Known layer measured, hidden layers predicted and (where labelled) measured."""
    from asign.report.plots import Layer3D

    g = data.genes.index(gene)
    pred = _display_scale(data, data.predictions[data.map_model], g)
    lab = _display_scale(data, data.labels, g)
    spots = data.spots
    xy_ok = spots[["x_um", "y_um"]].notna().all(axis=1).to_numpy()
    from asign.store.sections import z_um

    layers = []
    secs = data.sections[data.sections.sample_id == sample]
    for sec, z in zip(secs.section_id, z_um(secs), strict=True):
        rows = (spots.section_id == sec).to_numpy() & xy_ok
        xy = spots.loc[rows, ["x_um", "y_um"]].to_numpy(dtype=float)
        if sec == data.known[sample]:
            ok = np.isfinite(lab[rows])
            layers.append(Layer3D(sec, float(z), xy[ok], lab[rows][ok], "known"))
        elif sec in data.hidden[sample]:
            ok = np.isfinite(pred[rows])
            if ok.any():
                layers.append(Layer3D(sec, float(z), xy[ok], pred[rows][ok], "predicted"))
            ok = np.isfinite(lab[rows])
            if ok.any():
                layers.append(Layer3D(sec, float(z), xy[ok], lab[rows][ok], "measured"))
    return layers


def view_3d(data: RunData, sample: str, chosen: list[str], first: bool) -> str | None:
    """The interactive 3D view of ``sample`` (see :mod:`asign.report.view3d`); None when
    its spots have no aligned coordinates."""
    from asign.report.scale import FORMULAS, to_log1p_cp10k
    from asign.report.sdata import recorded_spacing_um
    from asign.report.view3d import Layer, figure_html, menu_genes, thin
    from asign.store.sections import z_um as section_z_um

    genes = menu_genes(chosen, data.genes)
    cols = [data.genes.index(g) for g in genes]
    pred = data.predictions[data.map_model]
    spots = data.spots
    secs = data.sections[data.sections.sample_id == sample]
    spacing = recorded_spacing_um(secs)
    z_of = section_z_um(secs)
    z_first = float(z_of.min())
    xy_ok = spots[["x_um", "y_um"]].notna().all(axis=1).to_numpy()
    layers = []
    for sec, z in zip(secs.section_id, z_of, strict=True):
        whole = (spots.section_id == sec).to_numpy() & xy_ok
        rows = thin(whole)
        of = int(whole.sum()) if rows.sum() < whole.sum() else 0
        z_um = float(z) - z_first  # the section spacing recorded at ingest (--section-um)
        sources = []
        if sec == data.known[sample]:
            sources.append(("known", data.labels))
        elif sec in data.hidden[sample]:
            sources += [("predicted", pred), ("measured", data.labels)]
        for kind, values in sources:
            ok = rows & np.isfinite(values).all(axis=1)
            if not ok.any():
                continue
            v = (to_log1p_cp10k(values[ok], data.normalisation)
                 if data.normalisation in FORMULAS else values[ok])
            layers.append(Layer(str(sec), z_um, kind,
                                spots.loc[ok, ["x_um", "y_um"]].to_numpy(dtype=float),
                                v[:, cols], of))
    if not layers:
        return None
    title = (f"Sample {sample}: known layer measured, hidden layers predicted by "
             f"{data.map_model} (layers {spacing:g} µm apart; drag to turn, "
             "scroll to zoom, pick a gene top left)")
    from asign.report.sdata import sample_stacks
    from asign.report.view3d import textures

    stack = sample_stacks(data, spacing, samples=[sample]).get(sample)
    xy = np.vstack([lay.xy_um for lay in layers])
    margin = 2 * float(secs.spot_diameter_um.max())
    box = (xy[:, 0].min() - margin, xy[:, 0].max() + margin,
           xy[:, 1].min() - margin, xy[:, 1].max() + margin)
    he = textures(stack, {lay.section_id: lay.z_um for lay in layers}, box) if stack else []
    return figure_html(layers, genes, title, f"view3d-{_fs(sample)}", include_js=first, he=he,
                       unit=display_unit(data))


def display_unit(data: RunData) -> str:
    from asign.report.scale import FORMULAS

    return "log1p(CP10k)" if data.normalisation in FORMULAS else data.unit


def _model_order(models: list[str], map_model: str) -> list[str]:
    """Mapped model first, other learned models, then baselines, the mean profile last."""
    from asign.report.data import display_rank

    rest = sorted((x for x in models if x != map_model), key=lambda x: (display_rank(x), x))
    return [map_model] * (map_model in models) + rest


def _fs(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
