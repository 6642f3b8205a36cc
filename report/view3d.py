"""The explorable 3D view of report.html: plotly, with its JavaScript embedded so the page
works offline. One trace per section of a sample at its µm z (layer spacing × layer), the
known layer measured and the hidden layers predicted (their measurements, where they
exist, one click away in the legend); a menu picks the gene; drag turns, scroll zooms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_GENES = 24  # genes in the menu: the mapped ones first, then by panel rank
# spots drawn per section: a browser's WebGL scatter and the page's size (every value of
# every menu gene is embedded) stay usable. A Visium capture area (4,992 spots) is drawn
# whole; a Visium HD section at 16 µm (~165,000 bins) is thinned
MAX_VIEW_SPOTS = 5_000
Z_STRETCH = 0.8  # height of the z axis relative to x; true scale would flatten the stack


@dataclass(frozen=True)
class Layer:
    section_id: str
    z_um: float
    kind: str  # "known" | "predicted" | "measured"
    xy_um: np.ndarray  # (N, 2) aligned frame
    values: np.ndarray  # (N, G) log1p(CP10k), G = len(genes)
    of: int = 0  # spots of the section this layer's N were drawn from (0: all shown)


def thin(rows: np.ndarray, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """``rows`` (a boolean mask) cut to at most ``limit`` (default :data:`MAX_VIEW_SPOTS`)
    spots, chosen uniformly at random with a fixed seed (the same spots on every run, and
    for a section's predicted and measured layers alike)."""
    limit = MAX_VIEW_SPOTS if limit is None else limit
    idx = np.flatnonzero(rows)
    if len(idx) <= limit:
        return rows
    keep = np.zeros_like(rows)
    keep[np.random.default_rng(seed).choice(idx, limit, replace=False)] = True
    return keep


@dataclass(frozen=True)
class Texture:
    """A section's H&E in the aligned frame, greyscale: ``grey[i, j]`` at aligned µm
    (x0 + j·step, y0 + i·step)."""

    section_id: str
    z_um: float
    grey: np.ndarray  # (H, W) uint8
    x0: float
    y0: float
    step: float


TEXTURE_SIDE = 160  # pixels per side of a texture: enough for tissue outline and density


def textures(stack: object, section_z_um: dict[str, float],
             box_um: tuple[float, float, float, float]) -> list[Texture]:
    """Greyscale, downsampled planes of an :class:`asign.report.stack.AlignedStack`,
    cropped to ``box_um`` = (x0, x1, y0, y1) in aligned µm (the spots plus a margin)."""
    out = []
    image = stack.image  # type: ignore[attr-defined]
    res = float(stack.res_um)  # type: ignore[attr-defined]
    ox, oy = stack.origin_um  # type: ignore[attr-defined]
    h, w = image.shape[1:3]
    c0, c1 = (int(np.clip(round((v - ox) / res), 0, w)) for v in box_um[:2])
    r0, r1 = (int(np.clip(round((v - oy) / res), 0, h)) for v in box_um[2:])
    if c1 - c0 < 2 or r1 - r0 < 2:
        return []
    k = max(1, int(np.ceil(max(c1 - c0, r1 - r0) / TEXTURE_SIDE)))
    for plane, sec in enumerate(stack.sections):  # type: ignore[attr-defined]
        if sec is None or sec not in section_z_um:
            continue
        grey = image[plane, r0:r1:k, c0:c1:k].mean(axis=2).astype(np.uint8)
        out.append(Texture(sec, section_z_um[sec], grey, ox + c0 * res, oy + r0 * res, res * k))
    return out


def figure_html(layers: list[Layer], genes: list[str], title: str, div_id: str,
                include_js: bool, unit: str = "log1p(CP10k)",
                he: list[Texture] | tuple[Texture, ...] = ()) -> str:
    """An HTML fragment (div + script); ``include_js`` embeds plotly.js (once per page);
    ``he``: H&E planes drawn just under their layer's spots (toggled in the legend)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    limits = []
    for g in range(len(genes)):
        pooled = np.concatenate([lay.values[:, g] for lay in layers if lay.kind != "measured"]
                                or [np.zeros(1)])
        pooled = pooled[np.isfinite(pooled)]
        lo, hi = (np.percentile(pooled, [2, 98]) if pooled.size else (0.0, 1.0))
        limits.append((float(lo), float(hi) if hi > lo else float(lo) + 1e-3))
    names = {"known": "known layer, measured", "predicted": "predicted",
             "measured": "measured (hidden layer; for comparison)"}
    for k, lay in enumerate(layers):
        fig.add_trace(go.Scatter3d(
            x=np.round(lay.xy_um[:, 0], 1), y=np.round(lay.xy_um[:, 1], 1),
            z=np.full(len(lay.xy_um), round(lay.z_um, 1)), mode="markers",
            name=f"{lay.section_id} · {names[lay.kind]} (z {lay.z_um:g} µm"
                 + (f"; {len(lay.xy_um):,} of {lay.of:,} spots)" if lay.of else ")"),
            visible=True if lay.kind != "measured" else "legendonly",
            marker={"size": 4, "color": np.round(lay.values[:, 0], 3), "colorscale": "Viridis",
                    "cmin": limits[0][0], "cmax": limits[0][1], "showscale": k == 0,
                    "colorbar": {"title": {"text": f"{genes[0]}<br>{unit}"}, "len": 0.6}},
            hovertemplate=f"{lay.section_id}<br>x %{{x}} µm, y %{{y}} µm<br>value %{{marker.color}}"
                          "<extra></extra>"))
    for t in he:
        h, w = t.grey.shape
        fig.add_trace(go.Surface(
            x=np.round(t.x0 + np.arange(w) * t.step, 1),
            y=np.round(t.y0 + np.arange(h) * t.step, 1),
            # a few µm below the spots (z grows downwards), so the discs stay on top
            z=np.full((h, w), t.z_um + 3.0), surfacecolor=t.grey, colorscale="gray",
            cmin=0, cmax=255, showscale=False, name=f"{t.section_id} · H&E", showlegend=True,
            hoverinfo="skip", opacity=1.0, lighting={"ambient": 1.0, "diffuse": 0.0,
                                                     "specular": 0.0}))
    spot_traces = list(range(len(layers)))  # the gene menu restyles these only
    buttons = []
    for g, gene in enumerate(genes):
        buttons.append({"label": gene, "method": "restyle", "args": [{
            "marker.color": [np.round(lay.values[:, g], 3).tolist() for lay in layers],
            "marker.cmin": [limits[g][0]] * len(layers),
            "marker.cmax": [limits[g][1]] * len(layers),
            "marker.colorbar.title.text": [f"{gene}<br>{unit}"] * len(layers)}, spot_traces]})
    xy = np.vstack([lay.xy_um for lay in layers])
    span = np.ptp(xy, axis=0)
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=720,
        margin={"l": 0, "r": 0, "t": 60, "b": 0},
        # gene menu top left, legend under it, plotly's own tool bar keeps the top right
        legend={"x": 0, "y": 0.9, "yanchor": "top", "bgcolor": "rgba(255,255,255,0.7)"},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 0.05, "xanchor": "left",
                      "y": 1.0, "yanchor": "top", "showactive": True}],
        annotations=[{"text": "gene:", "x": 0.045, "xref": "paper", "y": 0.985, "yref": "paper",
                      "showarrow": False, "xanchor": "right", "yanchor": "top"}],
        scene={"xaxis": {"title": {"text": "x (µm, aligned)"}},
               "yaxis": {"title": {"text": "y (µm, aligned)"}, "autorange": "reversed"},
               "zaxis": {"title": {"text": "z (µm; stretched)"}, "autorange": "reversed"},
               "aspectmode": "manual",
               "aspectratio": {"x": 1.0, "y": float(span[1] / max(span[0], 1e-9)),
                               "z": Z_STRETCH},
               "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 0.8}}})
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_js), div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def menu_genes(chosen: list[str], panel: list[str]) -> list[str]:
    return list(dict.fromkeys([*chosen, *panel]))[:max(MAX_GENES, len(chosen))]
