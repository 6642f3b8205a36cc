"""Step 5, graph: the sparse 3D spot graph of a sample (same-layer kNN + cross-layer disc
IoU × embedding cosine), written as a Parquet edge list.

Every placed spot is a node. A cross-layer edge with an endpoint on a section placed by
given coordinates (no image, so no features) weighs IoU alone; its ``cosine`` is NaN in
the edges table and the step records ``n_cross_iou_only`` in the manifest."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from asign.errors import StoreError
from asign.ingest.config import IngestConfig
from asign.ingest.runner import Runner, raise_failures
from asign.progress import Reporter
from asign.schemas.vocabulary import EDGE_KINDS
from asign.store import Store

if TYPE_CHECKING:
    import pandas as pd

    from asign.ingest.graph import Edges

log = logging.getLogger(__name__)


def run_graph(store: Store, cfg: IngestConfig, sample_id: str, rep: Reporter,
              runner: Runner | None = None) -> dict[str, Any]:
    """Build a sample's graph (one unit of work: here, or on a worker) and write it."""
    runner = runner or Runner()
    task = rep.task(f"graph {sample_id}", total=1)
    out: dict[str, Any] = {}

    def commit(_: int, result: tuple[dict[str, Any], dict[str, Any]]) -> None:
        store.write("edges", result[0], key=sample_id)
        out.update(result[1])
        rep.advance(task)

    failed = runner.map(graph_unit, [(str(store.root), cfg, sample_id)], [sample_id], commit,
                        description=f"graph {sample_id}")
    raise_failures(failed, "graph", sample_id)
    return out


def graph_unit(root: str, cfg: IngestConfig,
               sample_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a sample's spots and spot embeddings, build its edges; returns (edges, info)."""
    from pathlib import Path

    from asign.ingest.graph import build_graph
    from asign.store import open_store

    store = open_store(Path(root))
    sections = store.read("sections").to_pandas()
    sections = sections[sections.sample_id == sample_id]
    spots = store.read("spots", key=sample_id).to_pandas()
    emb = (store.read("embeddings", key=sample_id).to_pandas()
           if store.has("embeddings", sample_id) else None)
    embed_info = store.embedding_info()
    imaged = set(sections.section_id[sections.has_image])
    if emb is None or (imaged and embed_info is None):
        raise StoreError(f"sample {sample_id} has no embeddings", path=store.root,
                         fix="run `asign ingest --steps embed` before the graph step")
    # Every placed spot is a node: spots of imaged sections once embedded, spots of
    # sections placed by given coordinates (no image) always, with IoU-only cross edges.
    have = set(emb.id[emb.level == "spot"])
    featured = spots.spot_id.isin(have)
    placed = spots.x_um.notna() & (featured | ~spots.section_id.isin(imaged))
    nodes = spots[placed].reset_index(drop=True)
    dropped = len(spots) - len(nodes)
    if dropped:
        log.warning("sample %s: %d spots without aligned coordinates or image features are not in "
                    "the graph", sample_id, dropped)
    has_feat = nodes.spot_id.isin(have).to_numpy()
    if has_feat.any():
        dim = embed_info.dim
        with store.vectors(readonly=True) as vec:
            ids = nodes.spot_id[has_feat].tolist()
            if has_feat.all():  # the usual case: one (N, D) array, no second copy
                feats = vec.embeddings(embed_info.encoder, "spot", ids, dim)
            else:
                feats = np.zeros((len(nodes), dim), dtype=np.float16)
                feats[has_feat] = vec.embeddings(embed_info.encoder, "spot", ids, dim)
    else:
        feats = np.zeros((len(nodes), 1), dtype=np.float32)
    radius = float(sections.spot_diameter_um.median()) / 2.0
    shape, angle = spot_geometry(sections, nodes)
    edges = build_graph(nodes[["x_um", "y_um"]].to_numpy(np.float64), nodes.z.to_numpy(np.int64),
                        feats, radius_um=radius, k_same=cfg.k_same, top_k_cross=cfg.top_k_cross,
                        combine=cfg.cross_weight, has_features=None if has_feat.all() else has_feat,
                        shape=shape, angle_rad=angle)
    table = edge_table(edges, nodes.spot_id.to_numpy(dtype=object), sample_id)
    n_cross = int((edges.kind == 1).sum())
    iou_only = int(((edges.kind == 1) & np.isnan(edges.cosine)).sum())
    return table, {"n_nodes": int(len(nodes)), "n_edges": int(len(edges.src)), "n_cross": n_cross,
                   # cross-layer edges with an endpoint without image features weigh IoU alone
                   "n_cross_iou_only": iou_only,
                   "cross_weight_without_features": "iou"}


def spot_geometry(sections: pd.DataFrame, nodes: pd.DataFrame
                  ) -> tuple[str, np.ndarray | None]:
    """(spot shape of the sample, per-node grid angle in the aligned frame for squares).
    Stores without the column (schema < 3) hold discs."""
    from asign.ingest.overlap import grid_angle

    shapes = set(sections["spot_shape"].dropna()) if "spot_shape" in sections else set()
    if shapes != {"square"}:
        return "disc", None
    angle = np.zeros(len(nodes))
    for _, idx in nodes.groupby("section_id").indices.items():
        real = nodes.iloc[idx]
        if {"array_x", "array_y"} <= set(real.columns) and real.array_x.notna().all():
            angle[idx] = grid_angle(real[["array_x", "array_y"]].to_numpy(np.float64),
                                    real[["x_um", "y_um"]].to_numpy(np.float64))
    return "square", angle


def edge_table(edges: Edges, ids: np.ndarray, sample_id: str) -> dict[str, np.ndarray]:
    """The columns of the ``edges`` table for a graph over the spots ``ids`` (node order)."""
    return {
        "sample_id": np.full(len(edges.src), sample_id, dtype=object),
        "src_spot_id": ids[edges.src], "dst_spot_id": ids[edges.dst],
        "kind": np.asarray(EDGE_KINDS, dtype=object)[edges.kind],
        "weight": edges.weight, "distance_um": edges.distance_um, "iou": edges.iou,
        "cosine": edges.cosine,
    }
