"""Steps 3 and 4: crop patches/tiles and embed them with the frozen encoder.

patches: per imaged section, 224-equivalent spot patches (stored compressed in LMDB, so a
GPU trainer can fine-tune the spot encoder) and the region/global tile grids with the
spot→tile map (Parquet). embed: spot patches (read back from LMDB) and the tiles any spot
uses (cropped from the slide) → float16 vectors in LMDB. Both resume per section / per
fixed batch: markers are written in the same LMDB transaction as the data."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from asign.ingest import standardise
from asign.ingest.config import IngestConfig
from asign.ingest.runner import Runner, raise_failures
from asign.progress import Reporter
from asign.store import Done, EmbeddingInfo, EmbeddingRows, Store

log = logging.getLogger(__name__)

LEVELS = ("spot", "region", "global")
PATCH_CHUNK = 2048  # spot patches per LMDB transaction (and per unit of work on a cluster)
EMBED_UNIT = 2048  # items per unit of work of the embed step (whole batches)


def _imaged(store: Store, sample_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    sections = store.read("sections").to_pandas()
    sections = sections[(sections.sample_id == sample_id) & sections.has_image].sort_values("z")
    spots = store.read("spots", key=sample_id).to_pandas()
    spots = spots[spots.section_id.isin(sections.section_id) & spots.px.notna()]
    return sections, spots


def _sizes(cfg: IngestConfig, um_per_px: float, spot_um: float | None = None,
           shape: str | None = None) -> dict[str, int]:
    """Level-0 pixels of the spot patch and of the region and global tiles of one section;
    the three keep the ratio of ``spot_px : region_px : global_px`` (224 : 512 : 1024)."""
    from asign.ingest.patches import equivalent_px, patch_scale

    scale = patch_scale(cfg.patch_um, cfg.spot_px, spot_um, shape)
    return {"spot": equivalent_px(cfg.spot_px, um_per_px) if scale == 1 else
            equivalent_px(round(cfg.spot_px * scale), um_per_px),
            "region": equivalent_px(round(cfg.region_px * scale), um_per_px),
            "global": equivalent_px(round(cfg.global_px * scale), um_per_px)}


def stored_patch_px(cfg: IngestConfig) -> int:
    """Side of the stored spot patches and of the tile crops: the encoder's input size, so
    the store holds exactly what the encoder sees (224 px for resnet50-l3, 64 px for the
    scale-test encoder, where 224-px patches of 200k spots would take ~15 GB)."""
    from asign.encoders import get_encoder_spec

    return int(get_encoder_spec(cfg.encoder).input_px)


def run_patches(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
                runner: Runner | None = None, embed_fp: str | None = None) -> dict[str, Any]:
    """``embed_fp``: the fingerprint the embed step will run under, when it runs next in this
    process; the spot level of embed then rides along (ingest/spot_stream.py)."""
    from asign.encoders import get_encoder_spec
    from asign.ingest import patches
    from asign.ingest.spot_stream import SpotSection, can_stream, stream_sections

    runner = runner or Runner()
    # a stain reference is fitted on stored patches before anything is embedded: no streaming
    stream = (embed_fp is not None and cfg.stain_norm == "none"
              and can_stream(get_encoder_spec(cfg.encoder), runner.distributed))
    streamed: list[SpotSection] = []
    out_px = stored_patch_px(cfg)
    sections, spots = _imaged(store, sample_id)
    tiles: dict[str, list] = {
        k: [] for k in ("sample_id", "section_id", "tile_id", "level", "x0", "y0", "size_px")}
    links: list[pd.DataFrame] = []
    units: list[tuple] = []  # (image, spot ids, boxes, size, out_px): one chunk of a section
    unit_section: list[str] = []
    chunks_of: dict[str, int] = {}
    task = rep.task(f"patches {sample_id}", total=len(spots))
    # a sample placed by coordinates alone has no patches: it needs no LMDB at all
    with store.vectors(readonly=False) if len(sections) else contextlib.nullcontext() as vec:
        for sec in sections.itertuples():
            sp = spots[spots.section_id == sec.section_id]
            size = _sizes(cfg, float(sec.um_per_px), float(sec.spot_diameter_um),
                          getattr(sec, "spot_shape", None))
            for level in ("region", "global"):
                bbox = patches.points_bbox(sp.px.to_numpy(), sp.py.to_numpy(), size[level],
                                           sec.width, sec.height)
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
                link = pd.DataFrame(patches.spot_tile_table(sp.spot_id.tolist(), s2t, grid,
                                                            sec.section_id))
                link.insert(0, "section_id", sec.section_id)
                links.append(link)
            if vec.is_done(Done.patches(fp, sec.section_id)):
                rep.advance(task, len(sp))
                continue
            boxes = patches.spot_patch_box(sp.px.to_numpy(), sp.py.to_numpy(),
                                           size["spot"]).tolist()
            ids = sp.spot_id.tolist()
            if stream:
                streamed.append(SpotSection(sec.section_id, str(sec.image_path), ids, boxes,
                                            size["spot"], out_px))
                continue
            # Committed in chunks, so memory stays bounded on large sections (and a chunk is
            # a unit of work on a cluster); the section's marker goes in the transaction of
            # its last committed chunk. A crash before it leaves some patches written, and
            # the re-run overwrites them with the same bytes.
            starts = range(0, max(len(ids), 1), PATCH_CHUNK)
            chunks_of[sec.section_id] = len(starts)
            for lo in starts:
                units.append((str(sec.image_path), ids[lo:lo + PATCH_CHUNK],
                              boxes[lo:lo + PATCH_CHUNK], size["spot"], out_px))
                unit_section.append(sec.section_id)

        def commit(i: int, items: list[tuple[str, bytes]]) -> None:
            sid = unit_section[i]
            chunks_of[sid] -= 1
            vec.put(patches=items, done=[Done.patches(fp, sid)] if chunks_of[sid] == 0 else [])
            rep.advance(task, len(items))

        failed = runner.map(crop_patches, units, unit_section, commit,
                            description=f"patches {sample_id}")
        if streamed:
            stream_sections(vec, _encoder(cfg), streamed, batch_size=cfg.batch_size,
                            precision=cfg.precision, tta=cfg.tta, patches_fp=fp,
                            embed_fp=str(embed_fp), advance=lambda n: rep.advance(task, n))
    raise_failures(failed, "patches", sample_id)
    link_df = pd.concat(links, ignore_index=True) if links else pd.DataFrame(
        columns=["section_id", "spot_id", "level", "tile_id", "rank"])
    link_df.insert(0, "sample_id", sample_id)
    store.write("tiles", tiles, key=sample_id)
    store.write("spot_tiles", {c: link_df[c].tolist() for c in link_df.columns}, key=sample_id)
    return {"n_patches": int(len(spots)), "n_tiles": len(tiles["tile_id"])}


def crop_patches(image: str, spot_ids: list[str], boxes: list[list[int]], size: int,
                 out_px: int) -> list[tuple[str, bytes]]:
    """A unit of the patches step: crop and compress one chunk of a section's spot patches."""
    from asign.ingest import patches
    from asign.store.codecs import encode_patch

    return [(sid, encode_patch(patches.crop(image, x0, y0, size, out_px)))
            for sid, (x0, y0) in zip(spot_ids, boxes, strict=True)]


def _work(store: Store, sample_id: str) -> list[tuple[str, str, str, list]]:
    """(section, level, image, items) in a fixed order; items are spot ids (patches in
    LMDB) or (tile id, x0, y0, size) tuples (cropped from the image)."""
    sections, spots = _imaged(store, sample_id)
    tiles = store.read("tiles", key=sample_id).to_pandas()
    work = []
    for sec in sections.itertuples():
        sp = spots[spots.section_id == sec.section_id]
        work.append((sec.section_id, "spot", str(sec.image_path), sp.spot_id.tolist()))
        for level in ("region", "global"):
            t = tiles[(tiles.section_id == sec.section_id) & (tiles.level == level)]
            work.append((sec.section_id, level, str(sec.image_path),
                         [(r.tile_id, int(r.x0), int(r.y0), int(r.size_px))
                          for r in t.itertuples()]))
    return work


def _item_id(item: Any) -> str:
    return item if isinstance(item, str) else item[0]


def _stain_reference(store: Store, cfg: IngestConfig, sample_id: str, work: list,
                     vec: Any) -> Any:
    """The sample's reference stain (encoders/stain.py), fitted on the stored spot patches of
    its reference section (the one whose features also set the z-score statistics)."""
    from asign.encoders.stain import fit_reference

    sections = store.read("sections").to_pandas()
    ref = standardise.reference_section(sections[sections.sample_id == sample_id], cfg.panel_from)
    spot_ids = [i for sec, level, _, items in work if sec == ref and level == "spot" for i in items]
    reference = fit_reference(cfg.stain_norm, ref, [vec.patch(i) for i in spot_ids])
    log.info("%s: %s stain reference fitted on section %s", sample_id, cfg.stain_norm, ref)
    return reference


def _standardisation(store: Store, cfg: IngestConfig, sample_id: str, work: list, runner: Runner,
                     encoder: Any, vec: Any, stain: Any = None
                     ) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(reference section, {level: (mean, std)}): statistics from the raw features of the
    reference section's spot patches and tiles (ingest/standardise.py says why), computed
    as one unit of work (here, or on a worker) before the units that apply them."""
    sections = store.read("sections").to_pandas()
    ref = standardise.reference_section(sections[sections.sample_id == sample_id], cfg.panel_from)
    ref_work = [(level, image, items) for sec, level, image, items in work if sec == ref]
    out: dict[str, dict] = {}

    def commit(_: int, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        out.update(stats)

    failed = runner.map(standardisation_unit, [(str(store.root), cfg, ref_work, stain)], [ref],
                        commit,
                        description=f"standardise {sample_id}", gpu=cfg.device == "cuda",
                        local={"vec": vec, "encoder": encoder})
    raise_failures(failed, "embed", sample_id)
    log.info("%s: %s features z-scored with statistics of section %s", sample_id,
             encoder.spec.name, ref)
    return ref, out


def run_embed(store: Store, cfg: IngestConfig, sample_id: str, fp: str, rep: Reporter,
              runner: Runner | None = None) -> dict[str, Any]:
    from asign.ingest.embed import embedding_config

    runner = runner or Runner()
    index: dict[str, list] = {k: [] for k in ("sample_id", "section_id", "encoder", "level", "id")}
    sections, _ = _imaged(store, sample_id)
    if sections.empty:
        # Placed by given coordinates only: nothing to encode, so no weights are needed.
        log.info("sample %s has no imaged section: nothing to embed", sample_id)
        store.write("embeddings", index, key=sample_id)
        return {"n_vectors": 0, "encoder": None, "weights": None}
    encoder = _encoder(cfg)  # here too on a cluster: the manifest records this process's setup
    name = encoder.spec.name
    bs = cfg.batch_size
    per_unit = max(1, EMBED_UNIT // bs)  # batches per unit of work
    # One LMDB environment per process: serially the patch loaders read through the
    # writer's handle; a worker opens its own, read-only.
    with store.vectors(readonly=False) as vec:
        work = _work(store, sample_id)
        stain = (_stain_reference(store, cfg, sample_id, work, vec)
                 if cfg.stain_norm != "none" else None)
        zscore = (_standardisation(store, cfg, sample_id, work, runner, encoder, vec, stain)
                  if encoder.spec.standardise else None)
        total = sum(len(items) for *_, items in work)
        task = rep.task(f"embed {sample_id}", total=total)
        units: list[tuple] = []
        unit_markers: list[list[Done]] = []
        labels: list[str] = []
        for section_id, level, image, items in work:
            index["section_id"] += [section_id] * len(items)
            index["level"] += [level] * len(items)
            index["id"] += [_item_id(i) for i in items]
            # Resume unit: fixed chunks (b = items[b*bs:(b+1)*bs]), each committed with its
            # marker. Vectors do not depend on batch composition (embed pads batches), so a
            # resumed run, or one whose units ran elsewhere, gives the same bits.
            chunks = [items[i:i + bs] for i in range(0, len(items), bs)]
            markers = [Done.embeddings(fp, section_id, level, b) for b in range(len(chunks))]
            todo = [b for b, m in enumerate(markers) if not vec.is_done(m)]
            todo_set = set(todo)
            rep.advance(task, sum(len(chunks[b]) for b in range(len(chunks)) if b not in todo_set))
            for lo in range(0, len(todo), per_unit):
                group = todo[lo:lo + per_unit]
                units.append((str(store.root), cfg, level, image, [chunks[b] for b in group],
                              None if zscore is None else zscore[1][level], stain))
                unit_markers.append([markers[b] for b in group])
                labels.append(f"{section_id} ({level})")

        def commit_batch(i: int, marker: Done, batch: tuple[list[str], np.ndarray],
                         sink: Any = vec) -> None:
            ids, vectors = batch
            sink.put(embeddings=[EmbeddingRows(name, units[i][2], ids, vectors)], done=[marker])
            rep.advance(task, len(ids))

        def commit(i: int, batches: Iterable[tuple[list[str], np.ndarray]]) -> None:
            for marker, batch in zip(unit_markers[i], batches, strict=True):
                commit_batch(i, marker, batch)

        if runner.distributed:
            failed = runner.map(embed_unit, units, labels, commit, description=f"embed {sample_id}",
                                gpu=cfg.device == "cuda")
        else:
            from asign.ingest.commits import BackgroundPuts

            with BackgroundPuts(vec) as writer:
                _embed_serially(units, unit_markers, partial(commit_batch, sink=writer), cfg, vec,
                                encoder)
            failed = []
    raise_failures(failed, "embed", sample_id)
    if stain is not None:
        stain.log_kept(sample_id)
    index["sample_id"] = [sample_id] * len(index["id"])
    index["encoder"] = [name] * len(index["id"])
    store.write("embeddings", index, key=sample_id)
    manifest = store.manifest()
    previous = store.embedding_info(manifest)
    stain_record = None
    if stain is not None:  # each sample's fit, the other samples' kept
        from asign.encoders.stain import with_sample

        before = previous.extra.get("stain_norm") if previous and previous.encoder == name else None
        stain_record = with_sample(before, sample_id, stain)
    info = EmbeddingInfo.from_dict({**embedding_config(encoder, bs, cfg.precision),
                                    "dim": encoder.spec.dim,
                                    "spot_px": cfg.spot_px, "stored_px": encoder.spec.input_px,
                                    "region_px": cfg.region_px, "global_px": cfg.global_px,
                                    # only when set, as in the step's fingerprint (steps.py)
                                    **({"stain_norm": stain_record} if stain_record else {}),
                                    **({"tta": cfg.tta} if cfg.tta != 1 else {})})
    if zscore is not None:
        same = previous is not None and previous.encoder == name
        done = dict(previous.standardised or {}) if same else {}
        done[sample_id] = {"reference_section": zscore[0],
                           "stats_sha256": standardise.stats_hash(zscore[1])}
        info = dataclasses.replace(info, standardised=done, standardisation=(
            "per feature z-score, mean/std over the reference section's items of each level "
            "(images only; ingest/standardise.py)"))
    store.record_embedding_info(manifest, info)
    store.save_manifest(manifest)
    return {"n_vectors": total, "encoder": name, "weights": encoder.info.get("weights_sha256")}


_ENCODERS: dict[tuple, Any] = {}  # per process: a worker loads the encoder once


def _encoder(cfg: IngestConfig) -> Any:
    from asign.encoders import load_encoder

    key = (cfg.encoder, str(cfg.weights), cfg.device, cfg.seed, cfg.allow_download)
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = load_encoder(cfg.encoder, cfg.weights, device=cfg.device, seed=cfg.seed,
                                      allow_download=cfg.allow_download)
    return _ENCODERS[key]


def forget_encoders() -> None:
    _ENCODERS.clear()


def _unit_setup(root: str, cfg: IngestConfig, encoder: Any) -> Any:
    """The encoder a unit uses: this process's own serially; on a worker, loaded once per
    process, with torch on the worker's threads (Dask starts it with 1)."""
    if encoder is not None:
        return encoder
    import torch

    from asign.cluster import worker_threads

    torch.set_num_threads(worker_threads())
    return _encoder(cfg)


def _loaders(root: str, cfg: IngestConfig, level: str, image: str, items: list[Any],
             vec: Any, stain: Any = None) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(id, loader) pairs: spot patches read back from LMDB, tiles cropped from the slide;
    with ``stain`` (a StainReference) each image is stain-normalised in the loader thread."""
    from asign.ingest.embed import crop_loader

    out_px = stored_patch_px(cfg)

    def patch_loader(spot_id: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            return vec.patch(spot_id)
        return load

    out = [(i, patch_loader(i)) if level == "spot"
           else (i[0], crop_loader(image, i[1], i[2], i[3], out_px))
           for i in items]
    return out if stain is None else [(i, stain.wrap(load)) for i, load in out]


def standardisation_unit(root: str, cfg: IngestConfig, ref_work: list[tuple[str, str, list]],
                         stain: Any = None, vec: Any = None, encoder: Any = None
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A unit of the embed step: per level, (mean, std) of the raw features of the reference
    section's items. ``vec``/``encoder``: this process's own, when run serially."""
    from pathlib import Path

    from asign.ingest.embed import embed_batches
    from asign.store import open_store

    encoder = _unit_setup(root, cfg, encoder)
    own = None
    if vec is None:
        own = vec = open_store(Path(root)).vectors(readonly=True)
    try:
        stats = {}
        for level in LEVELS:
            items = [it for lev, image, its in ref_work if lev == level
                     for it in _loaders(root, cfg, lev, image, its, vec, stain)]
            feats = [b.features for b in embed_batches(encoder, items, batch_size=cfg.batch_size,
                                                       precision=cfg.precision, tta=cfg.tta)]
            stats[level] = standardise.fit(np.concatenate(feats) if feats
                                           else np.zeros((0, encoder.spec.dim)))
        return stats
    finally:
        if own is not None:
            own.close()


def embed_unit(root: str, cfg: IngestConfig, level: str, image: str, chunks: list[list[Any]],
               zscore: tuple[np.ndarray, np.ndarray] | None = None, stain: Any = None,
               vec: Any = None, encoder: Any = None) -> Iterable[tuple[list[str], np.ndarray]]:
    """A unit of the embed step: consecutive batches of one section and level → per batch,
    (ids, float16 vectors), z-scored with ``zscore`` (mean, std) when the encoder asks.
    ``vec``/``encoder``: this process's own, when run serially."""
    serial = encoder is not None
    from pathlib import Path

    from asign.ingest.embed import embed_batches
    from asign.store import open_store

    encoder = _unit_setup(root, cfg, encoder)
    own = None
    if vec is None and level == "spot":
        own = vec = open_store(Path(root)).vectors(readonly=True)
    try:
        items = [it for chunk in chunks
                 for it in _loaders(root, cfg, level, image, chunk, vec, stain)]
        batches = embed_batches(encoder, items, batch_size=cfg.batch_size, precision=cfg.precision,
                                tta=cfg.tta)
        out = (_rows(b, zscore) for b in batches)
        # Serially the batches stream into the commit, each committed as soon as it is
        # embedded (a crash loses one batch); a worker returns them all at once.
        return out if serial else list(out)
    finally:
        if own is not None:
            own.close()


def _rows(batch: Any, zscore: tuple[np.ndarray, np.ndarray] | None) -> tuple[list[str], np.ndarray]:
    """(ids, float16 vectors) of an embedded batch, z-scored when the encoder asks."""
    return batch.keys, (batch.features if zscore is None
                        else standardise.apply(batch.features, *zscore))


def _embed_serially(units: list[tuple], unit_markers: list[list[Done]],
                    commit_batch: Callable[[int, Done, tuple[list[str], np.ndarray]], None],
                    cfg: IngestConfig, vec: Any, encoder: Any) -> None:
    """The embed units of a serial run through one loader pipeline (``embed_groups``): the
    next unit's crops are cut while the encoder finishes this one. Each batch is committed
    with its marker as soon as it is embedded, as ``embed_unit`` does."""
    from asign.ingest.embed import embed_groups

    groups = ((i, [it for chunk in chunks
                   for it in _loaders(root, cfg, level, image, chunk, vec, stain)])
              for i, (root, _, level, image, chunks, _, stain) in enumerate(units))
    seen = [0] * len(units)
    for i, batch in embed_groups(encoder, groups, batch_size=cfg.batch_size,
                                 precision=cfg.precision, tta=cfg.tta):
        commit_batch(i, unit_markers[i][seen[i]], _rows(batch, units[i][5]))
        seen[i] += 1
