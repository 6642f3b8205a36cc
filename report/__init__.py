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

import numpy as np

from asign.errors import InputError
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
    from asign.report.files import output_path
    from asign.store import open_store

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
        with output_path(out / "metrics.csv") as tmp:
            summary.to_csv(tmp, index=False)
        title = (f"Metrics on hidden sections, run {run_name} ({data.setting}); "
                 "bars = mean over sections, error bars = SD")
        quantitative.append((
            "Metrics per model on the hidden sections; the grey hatched bar and dashed line "
            "are the known layer's mean profile.",
            plots.metrics_bars(summary, models, title, out / "metrics.png")))
    if gene_pcc.notna().any().any():
        with output_path(out / "gene_pcc.csv") as tmp:
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
            title = (f"{gene}{roles[gene]}: measured vs predicted on the hidden sections of "
                     f"sample {sample} (model {m}, run {run_name}; known layer "
                     f"{data.known[sample]})")
            path = plots.spatial_maps(sections, gene, m, data.unit, title,
                                      out / f"map_{_fs(sample)}_{_fs(gene)}.png")
            maps.append((f"{gene}{roles[gene]}, sample {sample}: H&E, measured and predicted "
                         f"({m}) on each hidden section, on one colour scale.", path))
        layers = volume_layers(data, sample, chosen[0])
        if layers:
            title = (f"{chosen[0]} across the layers of sample {sample}, aligned frame "
                     f"(run {run_name})")
            path = plots.volume_3d(layers, chosen[0], m, data.unit, title,
                                   out / f"volume_{_fs(sample)}_{_fs(chosen[0])}.png")
            volumes.append((f"{chosen[0]} in 3D, sample {sample}: the measured layers (left) "
                            f"beside the imputed volume (right), first section on top.", path))
    images = [(h, items) for h, items in (("Metric plots", quantitative),
                                           ("Measured vs predicted maps", maps),
                                           ("3D view", volumes)) if items]
    page = html.render(data, summary, models, gene_pcc, chosen, images)
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
    """The hidden sections of ``sample`` as :class:`plots.SectionMap` for ``gene``."""
    import pandas as pd
    from PIL import Image

    from asign.report.plots import SectionMap
    from asign.train.metrics import pcc_per_gene

    g = data.genes.index(gene)
    pred_all = data.predictions[data.map_model]
    secs = data.sections.set_index("section_id")
    out = []
    for sec in data.hidden[sample]:
        rows = (data.spots.section_id == sec).to_numpy() & np.isfinite(pred_all[:, g])
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
            with Image.open(data.thumbs[sec].path) as im:
                thumb = np.asarray(im.convert("RGB"))
            scale = data.thumbs[sec].downsample * um
        measured = data.labels[rows, g]
        predicted = pred_all[rows, g]
        has_truth = np.isfinite(measured).any()
        pcc = None
        if has_truth:
            ok = np.isfinite(measured)
            pcc = float(pcc_per_gene(predicted[ok, None], measured[ok, None])[0])
        bounds = data.bounds.get(data.map_model)
        width = None if bounds is None else bounds[1][rows, g] - bounds[0][rows, g]
        out.append(SectionMap(section_id=sec, xy_um=xy, diameter_um=float(info.spot_diameter_um),
                              predicted=predicted, measured=measured if has_truth else None,
                              pcc=pcc, thumb=thumb, thumb_um_per_px=scale, frame=frame,
                              width=width))
    return out


def volume_layers(data: RunData, sample: str, gene: str) -> list:
    """Known layer measured, hidden layers predicted and (where labelled) measured."""
    from asign.report.plots import Layer3D

    g = data.genes.index(gene)
    pred = data.predictions[data.map_model][:, g]
    lab = data.labels[:, g]
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


def _model_order(models: list[str], map_model: str) -> list[str]:
    """Mapped model first, other learned models, then baselines, the mean profile last."""
    rank = {"asign3d": 0, "asign2d": 1, "cli": 2, "similarity": 3, "idw": 4}
    rest = sorted((x for x in models if x != map_model), key=lambda x: (rank.get(x, 5), x))
    baseline = [x for x in rest if x.startswith("mean")]
    return [map_model] * (map_model in models) + [x for x in rest if x not in baseline] + baseline


def _fs(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
