"""Shared fixtures. ``make_toy_store`` writes a small synthetic store directly through the
store API (no ingest): a few layers of ~30 spots, a smooth latent field that drives both
expression and the embeddings (so the models have something to learn), tiles, and a 3D
graph built by ingest's own ``build_graph`` (kNN same-layer, disc-IoU × cosine cross-layer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TOY_ENCODER = "toy"


def _latent(xy: np.ndarray, z: float, phase: float) -> np.ndarray:
    """(N, 4) smooth field over the aligned frame; drifts slowly with z."""
    x, y = xy[:, 0] / 400.0, xy[:, 1] / 400.0
    return np.stack(
        [
            np.sin(x + 0.3 * z + phase),
            np.cos(y - 0.2 * z),
            np.sin(x + y + phase),
            np.cos(0.5 * x - y + 0.1 * z),
        ],
        axis=1,
    )


def make_toy_store(
    tmp_path: Path,
    *,
    samples: tuple[str, ...] = ("S1",),
    n_layers: int = 4,
    grid: tuple[int, int] = (6, 5),
    dim: int = 16,
    n_genes: int = 6,
    extra_2d: str | None = None,
    image_only_layer: bool = False,
    seed: int = 0,
) -> Path:
    """Write a toy store under ``tmp_path / 'store'`` and return its path.

    ``samples``: 3D samples with ``n_layers`` labelled sections each (ids ``{S}_L{z}``);
    ``extra_2d``: id of an extra one-section sample (its section is ``{id}_L1``);
    ``image_only_layer``: give each 3D sample one more imaged section without counts
    (virtual spots). Spot ids are ``{section}/{i}``; pitch 200 µm, spot diameter 100 µm.
    """
    from asign.ingest.graph import build_graph
    from asign.ingest.step_graph import edge_table
    from asign.store import EmbeddingInfo, EmbeddingRows, open_store

    rng = np.random.default_rng(seed)
    root = tmp_path / "store"
    store = open_store(root, create=True)
    genes = [f"G{i}" for i in range(n_genes)]
    mix = rng.normal(size=(4, n_genes))
    proj = rng.normal(size=(4, dim))
    pitch, diameter = 200.0, 100.0
    sections_rows: list[dict] = []
    vectors: list[EmbeddingRows] = []

    plan = [(s, n_layers, image_only_layer) for s in samples]
    if extra_2d:
        plan.append((extra_2d, 1, False))
    for sample_id, layers, image_only in plan:
        phase = rng.uniform(0, 3)
        spot_rows: list[dict] = []
        label_rows: list[dict] = []
        tiles_rows: list[dict] = []
        st_rows: list[dict] = []
        emb_rows: list[dict] = []
        feats: dict[str, np.ndarray] = {}
        layer_of: dict[str, int] = {}
        xy_of: dict[str, np.ndarray] = {}
        n_total = layers + (1 if image_only else 0)
        for z in range(1, n_total + 1):
            sec = f"{sample_id}_L{z}"
            labelled = z <= layers
            gx, gy = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]))
            xy = np.stack([gx.ravel(), gy.ravel()], axis=1) * pitch
            xy = xy + rng.normal(scale=15.0, size=xy.shape) + rng.normal(scale=20.0, size=2)
            lat = _latent(xy, z, phase)
            ids = [f"{sec}/{i}" for i in range(len(xy))]
            emb = lat @ proj + 0.3 * rng.normal(size=(len(xy), dim))
            for i, sid in enumerate(ids):
                spot_rows.append(
                    dict(
                        sample_id=sample_id,
                        section_id=sec,
                        spot_id=sid,
                        barcode=str(i),
                        z=z,
                        array_x=int(gx.ravel()[i]),
                        array_y=int(gy.ravel()[i]),
                        px=float(xy[i, 0]),
                        py=float(xy[i, 1]),
                        x_um=float(xy[i, 0]),
                        y_um=float(xy[i, 1]),
                        is_virtual=not labelled,
                    )
                )
                feats[sid] = emb[i]
                layer_of[sid] = z
                xy_of[sid] = xy[i]
                vectors.append(EmbeddingRows(TOY_ENCODER, "spot", [sid],
                                             emb[i : i + 1].astype(np.float16)))
                emb_rows.append(
                    dict(
                        sample_id=sample_id,
                        section_id=sec,
                        encoder=TOY_ENCODER,
                        level="spot",
                        id=sid,
                    )
                )
            if labelled:
                rate = np.exp(1.5 + lat @ mix * 0.8)
                counts = rng.poisson(rate).astype(np.int32)
                value = np.log((counts + 1) / (counts + 1).sum(axis=1, keepdims=True))
                for i, sid in enumerate(ids):
                    label_rows.append(
                        dict(
                            sample_id=sample_id,
                            section_id=sec,
                            spot_id=sid,
                            total_count=int(counts[i].sum()),
                            counts=counts[i].tolist(),
                            value=value[i].astype(np.float32).tolist(),
                        )
                    )
            # tiles: region = 3x3 spots (600 µm), global = whole section; rank 0 = own tile
            for level, size in (("region", 600.0), ("global", 4000.0)):
                col = np.floor((xy[:, 0] + 100) / size).astype(int)
                row = np.floor((xy[:, 1] + 100) / size).astype(int)
                ncol, nrow = col.max() + 1, row.max() + 1
                tile_ids = {}
                for r in range(nrow):
                    for c in range(ncol):
                        tid = f"{sec}/{level}/r{r:03d}c{c:03d}"
                        inside = (row == r) & (col == c)
                        base = emb[inside].mean(axis=0) if inside.any() else emb.mean(axis=0)
                        tv = base + 0.1 * rng.normal(size=dim)
                        tile_ids[(r, c)] = tid
                        tiles_rows.append(
                            dict(
                                sample_id=sample_id,
                                section_id=sec,
                                tile_id=tid,
                                level=level,
                                x0=int(c * size),
                                y0=int(r * size),
                                size_px=int(size),
                            )
                        )
                        vectors.append(EmbeddingRows(TOY_ENCODER, level, [tid],
                                                     tv[None].astype(np.float16)))
                        emb_rows.append(
                            dict(
                                sample_id=sample_id,
                                section_id=sec,
                                encoder=TOY_ENCODER,
                                level=level,
                                id=tid,
                            )
                        )
                offsets = [(0, 0)] + [
                    (dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)
                ]
                for i, sid in enumerate(ids):
                    for rank, (dr, dc) in enumerate(offsets):
                        key = (row[i] + dr, col[i] + dc)
                        if key in tile_ids:
                            st_rows.append(
                                dict(
                                    sample_id=sample_id,
                                    section_id=sec,
                                    spot_id=sid,
                                    level=level,
                                    tile_id=tile_ids[key],
                                    rank=rank,
                                )
                            )
            sections_rows.append(
                dict(
                    sample_id=sample_id,
                    section_id=sec,
                    z=z,
                    image_path=None,
                    image_sha256=None,
                    width=None,
                    height=None,
                    um_per_px=1.0,
                    spot_diameter_um=diameter,
                    spot_pitch_um=pitch,
                    n_spots=len(xy),
                    has_counts=labelled,
                    has_image=True,
                    counts_path=None,
                    counts_sha256=None,
                    format="toy",
                )
            )

        # graph: the real builder, as the graph step runs it (k_same 6, top 4 cross-layer)
        ids_all = np.array([r["spot_id"] for r in spot_rows], dtype=object)
        graph = build_graph(np.array([xy_of[s] for s in ids_all]),
                            np.array([layer_of[s] for s in ids_all]),
                            np.array([feats[s] for s in ids_all]), radius_um=diameter / 2,
                            k_same=6, top_k_cross=4)

        store.write("spots", _cols(spot_rows), key=sample_id)
        if label_rows:
            store.write("labels", _cols(label_rows), key=sample_id)
        store.write("tiles", _cols(tiles_rows), key=sample_id)
        store.write("spot_tiles", _cols(st_rows), key=sample_id)
        store.write("embeddings", _cols(emb_rows), key=sample_id)
        store.write("edges", edge_table(graph, ids_all, sample_id), key=sample_id)

    store.write("sections", _cols(sections_rows))
    store.write(
        "genes", {"gene": genes, "rank": list(range(n_genes)), "mean_count": [1.0] * n_genes}
    )
    with store.vectors(readonly=False) as vec:
        vec.put(embeddings=vectors)
    manifest = store.manifest()
    store.record_embedding_info(manifest,
                                EmbeddingInfo(TOY_ENCODER, dim, extra={"weights": "random"}))
    manifest["params"]["labels"] = {"normalisation": "log_ratio", "n_genes": n_genes}
    manifest["steps"] = {s: {"graph": {"fingerprint": f"toy-{seed}-{s}"}} for s, _, _ in plan}
    store.save_manifest(manifest)
    return root


def _cols(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


@pytest.fixture(scope="session")
def _toy_store_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_store(tmp_path_factory.mktemp("toy"), extra_2d="B", image_only_layer=True)


@pytest.fixture
def toy_store(_toy_store_master: Path, tmp_path: Path) -> Path:
    """A fresh copy per test of one 4-layer sample S1 (+ an image-only layer S1_L5) and a
    one-section sample B (B_L1)."""
    dst = tmp_path / "store"
    shutil.copytree(_toy_store_master, dst)
    return dst


@pytest.fixture
def toy_store_factory(tmp_path: Path):
    """``make_toy_store`` with a fresh directory per call: ``factory(name, **kwargs)``."""

    def factory(name: str = "toy", **kwargs) -> Path:
        return make_toy_store(tmp_path / name, **kwargs)

    return factory


@pytest.fixture
def small_her2st_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of the session's cut-down real her2st store (her2st_small.py), for a
    test that writes to it; the session's store itself is only ever read."""
    from her2st_small import small_her2st_store

    return Path(shutil.copytree(small_her2st_store(tmp_path_factory)[1], tmp_path / "her2st_store"))
