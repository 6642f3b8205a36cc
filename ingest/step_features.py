"""Steps 3 and 4: crop patches/tiles and embed them with the frozen encoder.

patches: per imaged section, 224-equivalent spot patches (stored compressed in LMDB, so a
GPU trainer can fine-tune the spot encoder) and the region/global tile grids with the
spot→tile map (Parquet). embed: spot patches (read back from LMDB) and the tiles any spot
uses (cropped from the slide) → float16 vectors in LMDB. Both resume per section / per
fixed batch: markers are written in the same LMDB transaction as the data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from asign.ingest import standardise
from asign.ingest.config import IngestConfig
from asign.progress import Reporter
from asign.store import Store
from asign.store.vectors import done_key, emb_key, patch_key

log = logging.getLogger(__name__)

LEVELS = ("spot", "region", "global")
PATCH_CHUNK = 2048  # spot patches per LMDB transaction


def _imaged(store: Store, sample_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    sections = store.read("sections").to_pandas()
    sections = sections[(sections.sample_id == sample_id) & sections.has_image].sort_values("z")
    spots = store.read("spots", key=sample_id).to_pandas()
    spots = spots[spots.section_id.isin(sections.section_id) & spots.px.notna()]
    return sections, spots


def _sizes(cfg: IngestConfig, um_per_px: float) -> dict[str, int]:
    from asign.ingest.patches import equivalent_px

    return {"spot": equivalent_px(cfg.spot_px, um_per_px), "region": equivalent_px(cfg.region_px, um_per_px),
            "global": equivalent_px(cfg.global_px, um_per_px)}


def stored_patch_px(cfg: IngestConfig) -> int:
    """Side of the stored spot patches and of the tile crops: the encoder's input size, so
    the store holds exactly what the encoder sees (224 px for resnet50-l3, 64 px for the
    scale-test encoder, where 224-px patches of 200k spots would take ~15 GB)."""
    from asign.encoders import get_encoder_spec

    return int(get_encoder_spec(cfg.encoder).input_px)


def run_patches(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter) -> dict[str, Any]:
    from asign.ingest import patches

    out_px = stored_patch_px(cfg)
    sections, spots = _imaged(store, sample_id)
    tiles: dict[str, list] = {k: [] for k in ("sample_id", "section_id", "tile_id", "level", "x0", "y0", "size_px")}
    links: list[pd.DataFrame] = []
    task = rep.task(f"patches {sample_id}", total=len(spots))
    with store.vectors(readonly=False) as vec:
        for sec in sections.itertuples():
            sp = spots[spots.section_id == sec.section_id]
            size = _sizes(cfg, float(sec.um_per_px))
            for level in ("region", "global"):
                bbox = patches.points_bbox(sp.px.to_numpy(), sp.py.to_numpy(), size[level], sec.width, sec.height)
                grid = patches.tile_grid(sec.width, sec.height, size[level], bbox=bbox, level=level)
                s2t = patches.spot_to_tiles(sp.px.to_numpy(), sp.py.to_numpy(), grid)
                used = patches.used_tiles(s2t)
                corners = grid.corners()[used]
                ids = grid.tile_ids(sec.section_id, used)
                tiles["sample_id"] += [sample_id] * len(ids)
                tiles["section_id"] += [sec.section_id] * len(ids)
                tiles["tile_id"] += ids
                tiles["level"] += [level] * len(ids)
                tiles["x0"] += corners[:, 0].tolist()
                tiles["y0"] += corners[:, 1].tolist()
                tiles["size_px"] += [size[level]] * len(ids)
                link = pd.DataFrame(patches.spot_tile_table(sp.spot_id.tolist(), s2t, grid, sec.section_id))
                link.insert(0, "section_id", sec.section_id)
                links.append(link)
            marker = done_key("patches", fp, sec.section_id)
            if vec.has(marker):
                rep.advance(task, len(sp))
                continue
            boxes = patches.spot_patch_box(sp.px.to_numpy(), sp.py.to_numpy(), size["spot"])
            items = []
            # Committed in chunks, so memory stays bounded on large sections; the section's
            # marker goes in the last chunk's transaction. A crash before it leaves some
            # patches written, and the re-run overwrites them with the same bytes.
            for i, (sid, (x0, y0)) in enumerate(zip(sp.spot_id, boxes.tolist(), strict=True)):
                arr = patches.crop(sec.image_path, x0, y0, size["spot"], out_px)
                items.append((patch_key(sid), patches.encode_patch(arr)))
                rep.advance(task)
                if len(items) == PATCH_CHUNK and i + 1 < len(sp):
                    vec.put_many(items)
                    items = []
            vec.put_many([*items, (marker, b"1")])
    link_df = pd.concat(links, ignore_index=True) if links else pd.DataFrame(
        columns=["section_id", "spot_id", "level", "tile_id", "rank"])
    link_df.insert(0, "sample_id", sample_id)
    store.write("tiles", tiles, key=sample_id)
    store.write("spot_tiles", {c: link_df[c].tolist() for c in link_df.columns}, key=sample_id)
    return {"n_patches": int(len(spots)), "n_tiles": len(tiles["tile_id"])}


def _work(store: Store, sample_id: str, cfg: IngestConfig, vec: Any) -> list[tuple[str, str, str, list[tuple[str, Callable]]]]:
    """(section, level, image, [(id, loader)]) in a fixed order."""
    from asign.ingest.embed import crop_loader
    from asign.store.vectors import decode_patch

    sections, spots = _imaged(store, sample_id)
    tiles = store.read("tiles", key=sample_id).to_pandas()
    out_px = stored_patch_px(cfg)

    def patch_loader(key: bytes) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            raw = vec.get(key)
            if raw is None:
                from asign.errors import StoreError

                raise StoreError(f"patch {key.decode()} missing", path=store.layout.vectors,
                                 fix="re-run `asign ingest --steps patches,embed`")
            return decode_patch(raw)
        return load

    work = []
    for sec in sections.itertuples():
        sp = spots[spots.section_id == sec.section_id]
        work.append((sec.section_id, "spot", sec.image_path,
                     [(s, patch_loader(patch_key(s))) for s in sp.spot_id]))
        for level in ("region", "global"):
            t = tiles[(tiles.section_id == sec.section_id) & (tiles.level == level)]
            work.append((sec.section_id, level, sec.image_path,
                         [(r.tile_id, crop_loader(sec.image_path, r.x0, r.y0, r.size_px, out_px))
                          for r in t.itertuples()]))
    return work


def _standardisation(store: Store, cfg: IngestConfig, sample_id: str, encoder: Any,
                     work: list) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(reference section, {level: (mean, std)}): statistics from the raw features of the
    reference section's spot patches and tiles (ingest/standardise.py says why)."""
    from asign.ingest.embed import embed_batches

    sections = store.read("sections").to_pandas()
    ref = standardise.reference_section(sections[sections.sample_id == sample_id], cfg.panel_from)
    stats = {}
    for level in LEVELS:
        items = [it for sec, lev, _, its in work if sec == ref and lev == level for it in its]
        feats = [b.features for b in embed_batches(encoder, items, batch_size=cfg.batch_size,
                                                   precision=cfg.precision)]
        stats[level] = standardise.fit(np.concatenate(feats) if feats else np.zeros((0, encoder.spec.dim)))
    log.info("%s: %s features z-scored with statistics of section %s", sample_id, encoder.spec.name, ref)
    return ref, stats


def run_embed(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter) -> dict[str, Any]:
    from asign.encoders import load_encoder
    from asign.ingest.embed import embed_batches, embedding_config

    index: dict[str, list] = {k: [] for k in ("sample_id", "section_id", "encoder", "level", "id")}
    sections, _ = _imaged(store, sample_id)
    if sections.empty:
        # Placed by given coordinates only: nothing to encode, so no weights are needed.
        log.info("sample %s has no imaged section: nothing to embed", sample_id)
        store.write("embeddings", index, key=sample_id)
        return {"n_vectors": 0, "encoder": None, "weights": None}
    encoder = load_encoder(cfg.encoder, cfg.weights, device=cfg.device, seed=cfg.seed,
                           allow_download=cfg.allow_download)
    name = encoder.spec.name
    bs = cfg.batch_size
    # One LMDB environment per process: the patch loaders read through the writer's handle.
    with store.vectors(readonly=False) as vec:
        work = _work(store, sample_id, cfg, vec)
        zscore = _standardisation(store, cfg, sample_id, encoder, work) if encoder.spec.standardise else None
        total = sum(len(items) for *_, items in work)
        task = rep.task(f"embed {sample_id}", total=total)
        for section_id, level, _, items in work:
            index["section_id"] += [section_id] * len(items)
            index["level"] += [level] * len(items)
            index["id"] += [i for i, _ in items]
            # Resume unit: fixed chunks (b = items[b*bs:(b+1)*bs]), each committed with its
            # marker. Vectors do not depend on batch composition (embed pads batches), so a
            # resumed run gives the same bits.
            chunks = [items[i:i + bs] for i in range(0, len(items), bs)]
            markers = [done_key("emb", fp, section_id, level, str(b)) for b in range(len(chunks))]
            todo = [b for b, m in enumerate(markers) if not vec.has(m)]
            todo_set = set(todo)
            rep.advance(task, sum(len(chunks[b]) for b in range(len(chunks)) if b not in todo_set))
            pending = [it for b in todo for it in chunks[b]]
            for b, batch in zip(todo, embed_batches(encoder, pending, batch_size=bs, precision=cfg.precision),
                                strict=True):
                feats = batch.features if zscore is None else standardise.apply(batch.features, *zscore[1][level])
                puts = [(emb_key(name, level, k), v.tobytes()) for k, v in zip(batch.keys, feats, strict=True)]
                vec.put_many([*puts, (markers[b], b"1")])
                rep.advance(task, len(batch.keys))
    index["sample_id"] = [sample_id] * len(index["id"])
    index["encoder"] = [name] * len(index["id"])
    store.write("embeddings", index, key=sample_id)
    manifest = store.manifest()
    previous = manifest["params"].get("embed") or {}
    manifest["params"]["embed"] = {**embedding_config(encoder, bs, cfg.precision), "dim": encoder.spec.dim, "spot_px": cfg.spot_px,
                                   "stored_px": encoder.spec.input_px,
                                   "region_px": cfg.region_px, "global_px": cfg.global_px}
    if zscore is not None:
        done = previous.get("standardised", {}) if previous.get("encoder") == name else {}
        done[sample_id] = {"reference_section": zscore[0], "stats_sha256": standardise.stats_hash(zscore[1])}
        manifest["params"]["embed"]["standardised"] = done
        manifest["params"]["embed"]["standardisation"] = (
            "per feature z-score, mean/std over the reference section's items of each level "
            "(images only; ingest/standardise.py)")
    store.save_manifest(manifest)
    return {"n_vectors": total, "encoder": name, "weights": encoder.info.get("weights_sha256")}
