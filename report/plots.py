"""The report's figures. Pure: arrays and frames in, one PNG out per function.

matplotlib is used through its object API (``Figure`` + Agg), never ``pyplot``, so drawing
a report changes no global state. Image conventions follow the H&E: origin upper left,
y pointing down, axes in millimetres of the section's own image frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asign.report.data import display_colour, is_mean_profile
from asign.train.metrics import METRICS, accuracy_metrics

CMAP = "viridis"
DPI = 110


@dataclass(frozen=True)
class SectionMap:
    """One hidden section of one gene: spots in µm of the section's image frame."""

    section_id: str
    xy_um: np.ndarray  # (N, 2) spot centres, x right, y down
    diameter_um: float
    predicted: np.ndarray | None  # (N,) or None (the known layer: nothing predicted)
    measured: np.ndarray | None  # (N,) or None (virtual spots: nothing measured)
    pcc: float | None
    thumb: np.ndarray | None  # (H, W, 3) uint8 H&E thumbnail
    thumb_um_per_px: float | None
    frame: str = "image"  # "image" (µm of the image) or "aligned" (no image: aligned µm)
    known: bool = False
    # the same values on the scale named in the colour bar (log1p CP10k), for the ranges
    predicted_scale: np.ndarray | None = None
    measured_scale: np.ndarray | None = None
    width: np.ndarray | None = None  # (N,) interval width (upper − lower) where the run has one
    shape: str = "disc"  # "disc" (Visium, ST) or "square" (binned platforms)


@dataclass(frozen=True)
class Layer3D:
    section_id: str
    z: float  # position along the stack, µm (z × section spacing)
    xy_um: np.ndarray  # (N, 2) aligned frame
    values: np.ndarray  # (N,)
    kind: str  # "known" | "predicted" | "measured"


def shared_limits(arrays: list[np.ndarray], lo: float = 2.0,
                  hi: float = 98.0) -> tuple[float, float]:
    """Colour limits from pooled percentiles, so measured and predicted share one scale and
    a few outlier spots do not wash the map out."""
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel()
                           for a in arrays if a is not None])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(vals, [lo, hi])
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return float(vmin), float(vmax)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig: Any, out: Path, palette: bool = False) -> Path:
    """Write the PNG. ``palette``: an 8-bit palette of 128 colours fitted to the picture
    (white and black included) plus 128 steps of the colour map, so the colour bar and spot
    colours stay smooth while an H&E-backed map shrinks ~3x (every map is embedded in
    report.html)."""
    import io

    from matplotlib import colormaps
    from PIL import Image

    from asign.store.atomic import atomic_path

    out = Path(out)
    if not palette:
        with atomic_path(out) as tmp:  # temporary file + os.replace: never a half PNG
            fig.savefig(tmp, format="png", dpi=fig.get_dpi(), facecolor="white")
        return out
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.get_dpi(), facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        rgb = im.convert("RGB")
    fitted = rgb.quantize(126, method=Image.Quantize.MEDIANCUT).getpalette()[: 126 * 3]
    steps = (colormaps[CMAP](np.linspace(0, 1, 128))[:, :3] * 255).round().astype(int)
    # pure white and black kept exact: median cut would tint the page and the text
    palette = np.vstack([[255, 255, 255], [0, 0, 0], np.reshape(fitted, (-1, 3)), steps])
    # exact nearest palette colour per distinct pixel colour (PIL's own palette mapping is
    # approximate and shifts white to pink)
    from scipy.spatial import cKDTree

    arr = np.asarray(rgb, dtype=np.int32)
    packed = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    uniq, inverse = np.unique(packed.ravel(), return_inverse=True)
    colours = np.column_stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255])
    nearest = cKDTree(palette).query(colours)[1]
    index = Image.fromarray(nearest[inverse].reshape(packed.shape).astype(np.uint8), "P")
    index.putpalette(palette.astype(np.uint8).ravel().tolist())
    with atomic_path(out) as tmp:
        index.save(tmp, format="PNG", optimize=True)
    return out


def _spots(ax: Any, m: SectionMap, values: np.ndarray | None, norm: Any = None,
           cmap: str = CMAP, alpha: float = 0.45) -> Any:
    """Spots of the true size in data units (µm): discs, or squares for binned platforms
    (axis-aligned in the drawn frame, no outlines: tens of thousands of adjacent bins
    would be drawn as a black mesh). Without values: disc outlines, or a faint fill."""
    from matplotlib.collections import EllipseCollection, PolyCollection

    if m.shape == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * m.diameter_um / 2
        coll = PolyCollection(m.xy_um[:, None, :] + corners, edgecolors="none",
                              facecolors=(0, 0, 0, alpha / 3) if values is None else None,
                              cmap=cmap, norm=norm)
    else:
        d = np.full(len(m.xy_um), m.diameter_um)
        coll = EllipseCollection(d, d, np.zeros(len(d)), units="xy", offsets=m.xy_um,
                                 offset_transform=ax.transData,
                                 facecolors="none" if values is None else None,
                                 edgecolors=(0, 0, 0, alpha) if values is None else "black",
                                 linewidths=0.5 if values is None else 0.3,
                                 cmap=cmap, norm=norm)
    if values is not None:
        coll.set_array(np.asarray(values, dtype=np.float64))
    ax.add_collection(coll)
    return coll


def _crop(m: SectionMap) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) in µm: the section's spots plus a margin of 1.5 spot diameters."""
    margin = 1.5 * m.diameter_um
    (x0, y0), (x1, y1) = m.xy_um.min(axis=0) - margin, m.xy_um.max(axis=0) + margin
    return float(x0), float(x1), float(y0), float(y1)


def _frame(ax: Any, m: SectionMap, fade: float = 0.0) -> None:
    """Draw the H&E under the section's spots (blended towards white by ``fade`` so spot
    colours read true), crop to the spots, y down, ticks in mm."""
    from matplotlib.ticker import FuncFormatter

    if m.thumb is not None and m.thumb_um_per_px:
        h, w = m.thumb.shape[:2]
        s = m.thumb_um_per_px
        img = m.thumb if fade <= 0 else (m.thumb * (1 - fade) + 255 * fade).astype(np.uint8)
        ax.imshow(img, extent=(0, w * s, h * s, 0), origin="upper", interpolation="lanczos")
    x0, x1, y0, y1 = _crop(m)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image convention: y grows downwards
    ax.set_aspect("equal")
    mm = FuncFormatter(lambda v, _: f"{v / 1000:g}")
    ax.xaxis.set_major_formatter(mm)
    ax.yaxis.set_major_formatter(mm)
    ax.tick_params(labelsize=7)


def percentiles(values: np.ndarray | None) -> np.ndarray | None:
    """Percentile rank of each finite value among the finite ones (0 = lowest spot, 100 =
    highest; ties share their mean rank); NaN stays NaN."""
    if values is None:
        return None
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.sum() == 1:
        out[ok] = 50.0
    elif ok.any():
        out[ok] = (rankdata(v[ok]) - 1) / (ok.sum() - 1) * 100
    return out


def _range(values: np.ndarray | None) -> str:
    if values is None or not np.isfinite(values).any():
        return ""
    lo, hi = np.nanpercentile(values, [2, 98])
    return f"{lo:.2f}–{hi:.2f}"


def map_dpi(maps: list[SectionMap], panel_w: float) -> float:
    """Enough pixels per H&E panel to show the thumbnail at its own resolution (≤ 4 µm/px
    thumbnails resolve morphology only if the PNG keeps them), within 110–220 dpi."""
    need = []
    for m in maps:
        if m.thumb is not None and m.thumb_um_per_px:
            x0, x1, y0, y1 = _crop(m)
            need.append(max(x1 - x0, y1 - y0) / m.thumb_um_per_px / panel_w)
    return float(np.clip(max(need, default=DPI), DPI, 220))


def spatial_maps(maps: list[SectionMap], gene: str, model: str, unit: str, title: str,
                 out: Path) -> Path:
    """One row per section (the known layer first): H&E | measured | predicted. Colours are
    percentile ranks within each panel, so a gene's pattern reads the same on measured and
    predicted panels whatever their spread (predictions are smoother than measurements);
    each panel's title gives its 2nd–98th percentile range on ``unit``."""
    from matplotlib.colors import Normalize

    norm = Normalize(0.0, 100.0, clip=True)
    uq = any(m.width is not None for m in maps)  # a 4th column: the uncertainty map
    widths = [m.width for m in maps if m.width is not None]
    wnorm = Normalize(*shared_limits(widths), clip=True) if uq else None
    wcoll = None
    n = len(maps)
    aspects = []
    for m in maps:
        x0, x1, y0, y1 = _crop(m)
        aspects.append(float(np.clip((y1 - y0) / max(x1 - x0, 1e-9), 0.3, 3.0)))
    panel_w, head, foot = 3.9, 0.75, 0.55  # inches; 0.5 in per row for titles and ticks
    height = head + foot + sum(panel_w * a + 0.5 for a in aspects)
    fig = _figure(18.0 if uq else 13.5, height)
    fig.set_dpi(map_dpi(maps, panel_w))
    ratios = [1, 1, 1, 0.05] + ([0.25, 1, 0.05] if uq else [])
    grid = fig.add_gridspec(n, len(ratios), width_ratios=ratios, height_ratios=aspects,
                            wspace=0.1, hspace=0.5 * n / max(sum(aspects) * panel_w, 1e-9),
                            left=0.06, right=0.95 if uq else 0.92, top=1 - head / height,
                            bottom=foot / height)
    coll = None
    for i, m in enumerate(maps):
        ax_he, ax_me, ax_pr = (fig.add_subplot(grid[i, j]) for j in range(3))
        role = "known layer" if m.known else "hidden"
        if m.frame != "image":
            he_title = "no image: aligned frame"
        elif m.thumb is None:
            he_title = "no H&E thumbnail in the store"
        else:
            he_title = f"H&E ({m.thumb_um_per_px:.1f} µm/px)"
        ax_he.set_title(f"{m.section_id} ({role}) · {he_title}", fontsize=8)
        _frame(ax_he, m)
        if m.shape != "square":  # bins would hide the H&E they tile
            _spots(ax_he, m, None, alpha=0.25)
        _frame(ax_me, m, fade=0.55)
        if m.measured is None:
            ax_me.set_title(f"{m.section_id} · measured: none (virtual spots)", fontsize=8)
            _spots(ax_me, m, None)
        else:
            ax_me.set_title(f"{m.section_id} · measured {gene} ({_range(m.measured_scale)})",
                            fontsize=8)
            coll = _spots(ax_me, m, percentiles(m.measured), norm)
        _frame(ax_pr, m, fade=0.55)
        if m.predicted is None:
            ax_pr.set_title(f"{m.section_id} · known layer: measured, not predicted",
                            fontsize=8)
            _spots(ax_pr, m, None)
        else:
            pcc = "" if m.pcc is None or not np.isfinite(m.pcc) else f" · PCC {m.pcc:.2f}"
            ax_pr.set_title(f"{m.section_id} · predicted ({model}; "
                            f"{_range(m.predicted_scale)}){pcc}", fontsize=8)
            coll = _spots(ax_pr, m, percentiles(m.predicted), norm)
        if m.width is not None:
            ax_w = fig.add_subplot(grid[i, 5])
            _frame(ax_w, m, fade=0.55)
            ax_w.set_title(f"{m.section_id} · interval width {gene}", fontsize=8)
            wcoll = _spots(ax_w, m, m.width, wnorm)
            ax_w.tick_params(labelleft=False)
        ax_he.set_ylabel("y (mm)", fontsize=8)
        for ax in (ax_me, ax_pr):
            ax.tick_params(labelleft=False)
        if i == n - 1:
            for ax in (ax_he, ax_me, ax_pr):
                ax.set_xlabel("x (mm)", fontsize=8)
    cax = fig.add_subplot(grid[:, 3])
    cbar = fig.colorbar(coll, cax=cax)
    cbar.set_label(f"{gene}: percentile of the spot within its panel (0 = lowest, 100 = "
                   f"highest)\nranges in the titles: 2nd–98th percentile, {unit}", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    if wcoll is not None:
        wbar = fig.colorbar(wcoll, cax=fig.add_subplot(grid[:, 6]))
        wbar.set_label("width of the run's interval (upper − lower), same unit", fontsize=8)
        wbar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11, y=1 - 0.25 / height)
    return _save(fig, out, palette=True)


def volume_3d(layers: list[Layer3D], gene: str, model: str, unit: str, title: str,
              out: Path) -> Path:
    """Two stacks in the aligned frame, one plane per layer, the first layer on top: left
    the measurement of every labelled layer, right the known layer's measurement plus the
    model's predictions on the hidden layers."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    vmin, vmax = shared_limits([lay.values for lay in layers])
    norm = Normalize(vmin, vmax, clip=True)
    zs = sorted({lay.z for lay in layers})
    fig = _figure(13.0, 3.0 + 1.0 * len(zs))
    xy = np.vstack([lay.xy_um for lay in layers]) / 1000
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    known = {lay.section_id for lay in layers if lay.kind == "known"}
    stacks = [
        ("measured (every labelled layer)",
         [lay for lay in layers if lay.kind in ("known", "measured")]),
        (f"imputed: known layer measured, hidden layers predicted by {model}",
         [lay for lay in layers if lay.kind in ("known", "predicted")]),
    ]
    # marker area (pt²) of a ~100 µm spot: the axes box is ~5 in wide for the x range
    span = max(x1 - x0, y1 - y0, 1e-3)
    size = float(np.clip((0.1 / span * 5 * 72 * 0.55) ** 2, 2.0, 60.0))
    sc = None
    for i, (name, stack) in enumerate(stacks):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d", computed_zorder=False)
        for lay in sorted(stack, key=lambda v: -v.z):  # deepest first, so upper layers cover
            sc = ax.scatter(lay.xy_um[:, 0] / 1000, lay.xy_um[:, 1] / 1000, lay.z,
                            c=lay.values, cmap=CMAP, norm=norm, s=size, depthshade=False,
                            edgecolors="none", zorder=-lay.z)
        drawn = {lay.z for lay in stack}
        for sec, z in sorted({(lay.section_id, lay.z) for lay in layers}, key=lambda t: t[1]):
            if sec in known:
                what = "known, measured"
            elif z not in drawn:
                what = "not measured"
            else:
                what = "predicted" if i else "measured"
            ax.text(x0, y1 + 0.08 * (y1 - y0), z, f"{sec} ({what})", fontsize=7, ha="right",
                    zdir=None)
        # a 3D axes' own title is drawn inside its zoomed box; put it above instead
        fig.text(0.08 + 0.41 * i + 0.2, 0.9, name, ha="center", fontsize=9)
        ax.set_xlabel("x (mm, aligned)", fontsize=8, labelpad=2)
        ax.set_ylabel("y (mm, aligned)", fontsize=8, labelpad=2)
        ax.set_zticks(zs)
        ax.set_zticklabels([f"{v:g}" for v in zs], fontsize=6)
        ax.set_zlabel("z (µm; axis stretched)", fontsize=8, labelpad=2)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)  # y down, as on the slide
        pad = 0.3 * (float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0)
        ax.set_zlim(max(zs) + pad, min(zs) - pad)  # first section on top
        ax.set_box_aspect((1.0, (y1 - y0) / max(x1 - x0, 1e-3), 0.45 * len(zs)), zoom=1.05)
        ax.view_init(elev=26, azim=-60)
        ax.tick_params(labelsize=6, pad=0)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    fig.subplots_adjust(left=0.08, right=0.9, top=0.95, bottom=0.0, wspace=0.12)
    cbar = fig.colorbar(sc, ax=fig.axes, shrink=0.5, pad=0.03)
    cbar.set_label(f"{gene} expression, {unit}", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def metrics_bars(summary: pd.DataFrame, models: list[str], title: str, out: Path) -> Path:
    """One panel per metric, one bar per model (mean over scored sections, error bar = SD
    over sections); the mean-profile baseline is grey, hatched and drawn as a dashed line."""
    metrics = [m for m in accuracy_metrics() if m in set(summary.metric)]
    fig = _figure(3.4 * max(len(metrics), 1), 4.0)
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    x = np.arange(len(models))
    for ax, metric in zip(axes, metrics, strict=False):
        sub = summary[summary.metric == metric].set_index("model").reindex(models)
        means = sub["mean"].to_numpy(dtype=float)
        sds = sub["sd"].to_numpy(dtype=float)
        top = np.nanmax(np.abs(means) + np.nan_to_num(sds)) if np.isfinite(means).any() else 1.0
        for i, model in enumerate(models):
            if not np.isfinite(means[i]):
                ax.text(i, 0.02 * top, "n/a\n(constant\nper gene)" if metric == "pcc_gene"
                        else "n/a", ha="center", va="bottom", fontsize=7, color="#555555",
                        clip_on=True)
                continue
            base = is_mean_profile(model)
            sd = float(np.nan_to_num(sds[i]))
            ax.bar(i, means[i], yerr=sd, color=display_colour(model),
                   hatch="//" if base else None, edgecolor="black", linewidth=0.5,
                   capsize=3, error_kw={"elinewidth": 0.8})
            # the value sits above the error bar, so the two never overlap
            y = means[i] + sd if means[i] >= 0 else means[i] - sd
            ax.text(i, y + 0.02 * top * np.sign(y or 1), f"{means[i]:.3f}", ha="center",
                    va="bottom" if y >= 0 else "top", fontsize=7,
                    rotation=90 if len(models) > 4 else 0)
            if base:
                ax.axhline(means[i], color="#555555", linestyle="--", linewidth=0.8)
        ax.set_xticks(x, [m.replace(" (computed)", "\n(computed)") for m in models],
                      rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_title(METRICS[metric].axis_title, fontsize=9)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.18)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.015, "grey hatched bar: the known layer's mean expression profile predicted "
             "for every hidden spot (baseline); dashed line: its level", ha="center",
             fontsize=8, color="#444444")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.84, bottom=0.27, wspace=0.3)
    return _save(fig, out)


def spread_labels(values: list[float], min_gap: float) -> list[float]:
    """Label positions near ``values`` (same order) at least ``min_gap`` apart: sorted,
    pushed up where they crowd, then the block is re-centred on the values."""
    if not values:
        return []
    order = np.argsort(values)
    pos = np.asarray(values, dtype=float)[order].copy()
    for k in range(1, len(pos)):
        pos[k] = max(pos[k], pos[k - 1] + min_gap)
    pos -= (pos - np.sort(values)).mean()
    for k in range(1, len(pos)):  # re-centring keeps the gaps; this guards rounding only
        pos[k] = max(pos[k], pos[k - 1] + min_gap)
    out = np.empty_like(pos)
    out[order] = pos
    return out.tolist()


def pcc_distribution(table: pd.DataFrame, highlight: list[str], title: str, out: Path) -> Path:
    """Per-gene PCC, one box + jittered points per model; genes in ``highlight`` are named."""
    models = list(table.columns)
    fig = _figure(max(6.0, 1.5 * len(models) + 2.5), 5.0)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)  # jitter only; fixed so the PNG is reproducible
    for i, model in enumerate(models):
        vals = table[model].to_numpy(dtype=float)
        ok = np.isfinite(vals)
        if not ok.any():
            ax.text(i, 0.02, "undefined:\nconstant\nper gene", ha="center", va="bottom",
                    fontsize=7, color="#555555")
            continue
        ax.boxplot(vals[ok], positions=[i], widths=0.5, showfliers=False,
                   patch_artist=True, boxprops={"facecolor": display_colour(model), "alpha": 0.35},
                   medianprops={"color": "black"})
        jitter = rng.uniform(-0.18, 0.18, ok.sum())
        ax.scatter(i + jitter, vals[ok], s=6, color=display_colour(model), alpha=0.7, linewidths=0)
        ax.text(i, 1.02, f"median {np.median(vals[ok]):.2f}\nn = {ok.sum()}", ha="center",
                va="bottom", fontsize=7)
        marked = [(float(table.at[g, model]), g) for g in highlight
                  if g in table.index and np.isfinite(table.at[g, model])]
        label_y = spread_labels([v for v, _ in marked], min_gap=0.045)
        for (v, gene), y in zip(marked, label_y, strict=True):
            ax.scatter([i], [v], s=28, facecolors="none", edgecolors="red", linewidths=1)
            # labels pushed apart vertically (with a leader line) so close genes never overlap
            ax.annotate(gene, (i, v), xytext=(i + 0.3, y), textcoords="data",
                        fontsize=7, color="red", va="center",
                        arrowprops={"arrowstyle": "-", "color": "red", "lw": 0.5},
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                              "alpha": 0.8})
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(models)), models, fontsize=8)
    ax.set_xlim(-0.6, len(models) - 0.4)
    finite = table.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    low = min(-0.2, float(np.floor(finite.min() * 10) / 10) - 0.05) if finite.size else -1.0
    ax.set_ylim(low, 1.15)
    ax.set_ylabel("Pearson r across spots (per gene, mean over hidden sections)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.1)
    return _save(fig, out)
