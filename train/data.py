"""Read one sample from the store into arrays: spots, labels, the whole-sample graph, and
spot/region/global embeddings streamed from LMDB.

Only placed sections enter a sample: imaged sections (aligned by ingest) and sections whose
aligned coordinates came with the input. A section with neither cannot be put in the
sample's frame (her2st C1 is such a section). Spots of sections without an image have no
features (zero rows, ``has_feature`` False): only models that need no image use them.
Spots are ordered by section z, then as stored. ``labels`` holds the ground truth of every
labelled spot: training code never reads it directly but goes through
:func:`asign.train.protocol.visible_labels`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from asign.errors import StoreError
from asign.schemas.vocabulary import TILE_LEVELS
from asign.store import Store
from asign.store.labels import dense_rows

log = logging.getLogger(__name__)

LEVELS = TILE_LEVELS


@dataclass
class SampleData:
    sample_id: str
    genes: tuple[str, ...]
    sections: tuple[str, ...]  # placed sections, z order
    section_z: np.ndarray  # (S,) int
    spot_ids: np.ndarray  # (N,) object
    section: np.ndarray  # (N,) int32 index into sections
    xy: np.ndarray  # (N, 2) float64, aligned µm
    is_virtual: np.ndarray  # (N,) bool
    has_label: np.ndarray  # (N,) bool
    labels: np.ndarray  # (N, G) float32 ground truth, 0 where unlabelled
    spot_feat: np.ndarray  # (N, D) float16
    tokens: dict[str, np.ndarray]  # level -> (N, R) int64 tile index, -1 pads
    tile_feat: dict[str, np.ndarray]  # level -> (T, D) float16
    src: np.ndarray  # (E,) int64, messages flow src -> dst
    dst: np.ndarray  # (E,) int64
    weight: np.ndarray  # (E,) float32
    cross: np.ndarray  # (E,) bool: cross-layer edge
    patches: np.ndarray | None = None  # (N, H, W, 3) uint8 spot patches (fine-tuning only)
    has_feature: np.ndarray | None = None  # (N,) bool: spot on an imaged section (None = all)

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    def section_index(self, section_ids: tuple[str, ...] | list[str]) -> list[int]:
        return [self.sections.index(s) for s in section_ids if s in self.sections]

    def in_sections(self, section_ids: tuple[str, ...] | list[str]) -> np.ndarray:
        return np.isin(self.section, np.asarray(self.section_index(section_ids), dtype=np.int32))

    def subset(self, keep: np.ndarray, *, drop_cross: bool = False) -> SampleData:
        """The induced subgraph on ``keep`` spots (e.g. one 2D section)."""
        keep = np.asarray(keep, dtype=bool)
        new_idx = np.full(self.n_spots, -1, dtype=np.int64)
        new_idx[keep] = np.arange(int(keep.sum()))
        e = keep[self.src] & keep[self.dst]
        if drop_cross:
            e &= ~self.cross
        used = np.unique(self.section[keep])
        remap = np.full(len(self.sections), -1, dtype=np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        return SampleData(
            sample_id=self.sample_id, genes=self.genes,
            sections=tuple(self.sections[i] for i in used), section_z=self.section_z[used],
            spot_ids=self.spot_ids[keep], section=remap[self.section[keep]], xy=self.xy[keep],
            is_virtual=self.is_virtual[keep], has_label=self.has_label[keep],
            labels=self.labels[keep], spot_feat=self.spot_feat[keep],
            tokens={k: v[keep] for k, v in self.tokens.items()}, tile_feat=self.tile_feat,
            src=new_idx[self.src[e]], dst=new_idx[self.dst[e]], weight=self.weight[e],
            cross=self.cross[e], patches=None if self.patches is None else self.patches[keep],
            has_feature=None if self.has_feature is None else self.has_feature[keep])


def embedding_params(store: Store, encoder: str | None = None) -> tuple[str, int]:
    """(encoder name, embedding dim) recorded by ingest."""
    info = store.embedding_info()
    if info is None:
        raise StoreError("the store has no embeddings (manifest params.embed is empty)",
                         path=store.layout.manifest,
                         fix="run `asign ingest --steps patches,embed,graph` for this store")
    return encoder or info.encoder, info.dim


def gene_panel(store: Store) -> tuple[str, ...]:
    genes = store.read("genes").to_pandas().sort_values("rank")
    return tuple(genes["gene"].astype(str))


def load_sample(store: Store, sample_id: str, *, encoder: str | None = None,
                patches: bool = False, graph: bool = True, features: bool = True) -> SampleData:
    """Everything train needs about one sample, read from Parquet + LMDB; ``patches``: also
    the stored spot patches (for fine-tuning the spot encoder); ``graph=False``: a store
    without the graph step is fine (models that use no edges: mean, idw, similarity);
    ``features=False``: no embeddings are read (models that use no image: mean, idw, cli)."""
    from asign.store.sections import placed

    genes = gene_panel(store)
    sec = store.read("sections").to_pandas()
    sec = sec[(sec["sample_id"] == sample_id) & placed(sec)].sort_values("z")
    if sec.empty:
        raise StoreError(f"sample {sample_id} has no placed section in the store",
                         path=store.root, fix="check --samples, or re-run `asign ingest`")
    sections = tuple(sec["section_id"].astype(str))
    imaged = (set(sec["section_id"][sec["has_image"].astype(bool)].astype(str)) if features
              else set())
    enc, dim = embedding_params(store, encoder) if imaged else ("", 1)

    spots = store.read("spots", key=sample_id).to_pandas()
    spots = spots[spots["section_id"].isin(sections)]
    order = {s: i for i, s in enumerate(sections)}
    spots = spots.assign(_s=spots["section_id"].map(order)).sort_values("_s", kind="stable")
    spot_ids = spots["spot_id"].to_numpy(dtype=object)
    index = {s: i for i, s in enumerate(spot_ids)}
    if len(index) != len(spot_ids):
        raise StoreError(f"duplicate spot ids in sample {sample_id}",
                         path=store.layout.table("spots", sample_id),
                         fix="re-run `asign ingest --steps register` for this sample")
    n = len(spot_ids)
    section = spots["_s"].to_numpy(dtype=np.int32)
    xy = spots[["x_um", "y_um"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise StoreError(f"sample {sample_id} has spots without aligned coordinates",
                         path=store.layout.table("spots", sample_id),
                         fix="run `asign ingest --steps align` for this sample")

    labels, has_label = _labels(store, sample_id, index, len(genes), sections, section)
    if graph or store.has("edges", sample_id):
        src, dst, weight, cross = _edges(store, sample_id, index, set(spots["spot_id"]))
    else:
        src = dst = np.zeros(0, dtype=np.int64)
        weight, cross = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
    if not np.isfinite(weight).all():
        raise StoreError(f"{int((~np.isfinite(weight)).sum())} edge weights of sample {sample_id} "
                         "are NaN/inf",
                         path=store.layout.table("edges", sample_id),
                         fix="re-run `asign ingest --steps graph` for this sample")
    has_feature = spots["section_id"].isin(imaged).to_numpy()
    tokens = {level: np.full((n, 1), -1, dtype=np.int64) for level in LEVELS}
    tile_feat = {level: np.zeros((0, dim), dtype=np.float16) for level in LEVELS}
    spot_patches = None
    if not imaged:
        spot_feat = np.zeros((n, dim), dtype=np.float16)
    else:
        with store.vectors(readonly=True) as vec:
            featured = list(spot_ids[has_feature])
            # the usual case: one (N, D) array, no copy (200k × 1024 is 400 MB)
            if has_feature.all():
                spot_feat = vec.embeddings(enc, "spot", featured, dim)
            else:
                spot_feat = np.zeros((n, dim), dtype=np.float16)
                spot_feat[has_feature] = vec.embeddings(enc, "spot", featured, dim)
            tokens, tile_feat = _tiles(store, vec, sample_id, index, n, enc, dim, has_feature)
            spot_patches = vec.get_patches(list(spot_ids)) if patches else None
    _require_finite_features(store, sample_id, sections, section, spot_feat, tokens, tile_feat)
    log.debug("sample %s: %d spots, %d edges, %d sections", sample_id, n, len(src), len(sections))
    return SampleData(
        sample_id=sample_id, genes=genes, sections=sections,
        section_z=sec["z"].to_numpy(dtype=np.int64), spot_ids=spot_ids, section=section, xy=xy,
        is_virtual=spots["is_virtual"].to_numpy(dtype=bool), has_label=has_label, labels=labels,
        spot_feat=spot_feat, tokens=tokens, tile_feat=tile_feat,
        src=src, dst=dst, weight=weight, cross=cross, patches=spot_patches,
        has_feature=None if has_feature.all() else has_feature)


def _rows_of(ids: Any, index: dict[str, int]) -> np.ndarray:
    """(len(ids),) int64 row of each spot id in ``index`` (ids in row order), −1 where
    absent. Arrow's hash lookup: no Python string per row (a 200k-spot graph has 4M edges)."""
    found = np.asarray(pc.index_in(ids, value_set=pa.array(list(index), pa.string()))
                       .fill_null(-1), dtype=np.int64)
    rows = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    return np.where(found >= 0, rows[found], -1)


def _require_finite_features(store: Store, sample_id: str, sections: tuple[str, ...],
                             section: np.ndarray,
                             spot_feat: np.ndarray, tokens: dict[str, np.ndarray],
                             tile_feat: dict[str, np.ndarray]) -> None:
    """A NaN/inf embedding would turn every prediction it reaches into NaN: stop, naming
    the first section affected (spot, region or global level)."""
    levels = {"spot": ~np.isfinite(spot_feat).all(axis=1)}
    for level, feats in tile_feat.items():
        if not len(feats):  # no imaged section: no tiles, every token is -1
            continue
        bad_tile = ~np.isfinite(feats).all(axis=1)
        tok = tokens[level]
        levels[level] = (bad_tile[np.maximum(tok, 0)] & (tok >= 0)).any(axis=1)
    for level, bad in levels.items():
        if bad.any():
            first = sections[int(section[np.flatnonzero(bad)[0]])]
            raise StoreError(f"section {first}: {int(bad.sum())} spots have non-finite (NaN/inf) "
                             f"{level} embeddings in sample {sample_id}; training stopped",
                             path=store.layout.vectors,
                             fix=f"re-run `asign ingest --steps embed,graph --samples {sample_id}` "
                                 "(check the weights)")


def _labels(
    store: Store, sample_id: str, index: dict[str, int], n_genes: int,
    sections: tuple[str, ...], section: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(index)
    labels = np.zeros((n, n_genes), dtype=np.float32)
    has = np.zeros(n, dtype=bool)
    if not store.has("labels", sample_id):
        return labels, has
    # in pieces: a Visium HD stack's label lists take several times their size to decode
    n_bad, first_bad = 0, None
    for tab in store.iter_table("labels", sample_id, ["spot_id", "value"]):
        rows = _rows_of(tab.column("spot_id"), index)
        flat = dense_rows(tab.column("value"), n_genes, store.layout.table("labels", sample_id))
        ok = rows >= 0  # labels of sections outside the graph (no image) are not used
        # NaN marks a gene absent from a section's counts (masked at ingest, never scored);
        # anything else non-finite is damage
        bad = ok & np.isinf(flat).any(axis=1)
        if bad.any() and first_bad is None:
            first_bad = sections[int(section[rows[np.flatnonzero(bad)[0]]])]
        n_bad += int(bad.sum())
        labels[rows[ok]] = flat[ok]
        has[rows[ok]] = True
    if n_bad:
        raise StoreError(f"section {first_bad}: {n_bad} label vectors of sample {sample_id} "
                         "contain NaN/inf; training stopped",
                         path=store.layout.table("labels", sample_id),
                         fix="re-run `asign ingest --steps register`")
    return labels, has


def _edges(
    store: Store, sample_id: str, index: dict[str, int], known_ids: set[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not store.has("edges", sample_id):
        raise StoreError(f"sample {sample_id} has no graph",
                         path=store.layout.table("edges", sample_id),
                         fix="run `asign ingest --steps graph` for this sample")
    tab = store.read("edges", key=sample_id,
                     columns=["src_spot_id", "dst_spot_id", "kind", "weight"])
    src = _rows_of(tab.column("src_spot_id"), index)
    dst = _rows_of(tab.column("dst_spot_id"), index)
    ok = (src >= 0) & (dst >= 0)
    if not ok.all():
        s_ids = tab.column("src_spot_id").to_pylist()
        d_ids = tab.column("dst_spot_id").to_pylist()
        # Edges into sections left out of the graph (no image) are expected; others are not.
        all_spots = set(store.read("spots", key=sample_id, columns=["spot_id"])
                        .column("spot_id").to_pylist())
        bad = [s for s, good in zip(s_ids + d_ids, np.concatenate([src >= 0, dst >= 0]),
                                    strict=True) if not good and s not in all_spots]
        if bad:
            raise StoreError(f"edges of sample {sample_id} name unknown spots (e.g. {bad[0]})",
                             path=store.layout.table("edges", sample_id),
                             fix="re-run `asign ingest --steps graph` for this sample")
    cross = np.asarray(pc.equal(tab.column("kind"), "cross_layer"), dtype=bool)
    weight = np.asarray(tab.column("weight"), dtype=np.float32)
    return src[ok], dst[ok], weight[ok], cross[ok]


def _tiles(
    store: Store, vec: Any, sample_id: str, index: dict[str, int], n: int, enc: str, dim: int,
    has_feature: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not store.has("spot_tiles", sample_id):
        raise StoreError(f"sample {sample_id} has no spot→tile map",
                         path=store.layout.table("spot_tiles", sample_id),
                         fix="run `asign ingest --steps patches,embed` for this sample")
    tab = store.read("spot_tiles", key=sample_id, columns=["spot_id", "level", "tile_id", "rank"])
    tokens: dict[str, np.ndarray] = {}
    feats: dict[str, np.ndarray] = {}
    for level in LEVELS:
        part = tab.filter(pc.equal(tab.column("level"), pa.scalar(level)))
        rows = _rows_of(part.column("spot_id"), index)
        rank = np.asarray(part.column("rank"), dtype=np.int64)
        tile_ids = np.asarray(part.column("tile_id").to_pylist(), dtype=object)
        ok = rows >= 0
        rows, rank, tile_ids = rows[ok], rank[ok], tile_ids[ok]
        uniq, inv = np.unique(tile_ids.astype(str), return_inverse=True)
        n_tok = int(rank.max()) + 1 if rank.size else 1
        tok = np.full((n, n_tok), -1, dtype=np.int64)
        tok[rows, rank] = inv
        if (tok[has_feature, 0] < 0).any():
            missing = int((tok[has_feature, 0] < 0).sum())
            raise StoreError(f"{missing} spots of sample {sample_id} have no {level} tile",
                             path=store.layout.table("spot_tiles", sample_id),
                             fix="re-run `asign ingest --steps patches,embed` for this sample")
        tokens[level] = tok
        feats[level] = vec.embeddings(enc, level, list(uniq), dim)
    return tokens, feats


def standardised_features(sample: SampleData) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """float32 spot and tile features, each dimension standardised per section (zero mean,
    unit variance over that section's spots, and separately over its tiles).

    Frozen-encoder embeddings shift with staining and scanning, from section to section and
    much more from patient to patient; a per-section z-score removes the first-order shift
    before the model sees them. Images only: no labels are involved."""
    spot = sample.spot_feat.astype(np.float32)
    tiles = {k: v.astype(np.float32) for k, v in sample.tile_feat.items()}
    for sec in np.unique(sample.section):
        rows = sample.section == sec
        spot[rows] = _zscore(spot[rows])
        for level, tok in sample.tokens.items():
            used = np.unique(tok[rows])
            used = used[used >= 0]
            tiles[level][used] = _zscore(tiles[level][used])
    return spot, tiles


def _zscore(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return x - x.mean(axis=0, keepdims=True)
    return (x - x.mean(axis=0, keepdims=True)) / (x.std(axis=0, keepdims=True) + 1e-6)
