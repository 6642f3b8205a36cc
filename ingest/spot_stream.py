"""Spot patches cut once: embedded as they are cut, stored as PNG off the critical path.

When one serial ingest runs both the patches and the embed step, the patches step does the
spot level of embed as well, in one pass per section: a loader thread cuts each crop and
PNG-encodes it while the encoder runs on the previous batch, and one LMDB transaction per
batch stores the batch's patches, its vectors and the embed step's marker for it (the
section's patches marker goes with its last batch). The separate route (cut → PNG encode →
LMDB, then LMDB → PNG decode → encode) costs a PNG encode per spot on the critical path and
a decode after it; this one costs neither (``bench/embed.py`` measures both).

The store is the same, byte for byte: PNG is lossless, so the crop the encoder sees here is
the array the embed step would decode from the stored PNG; the batches are the embed step's
resume units (``batch_size`` consecutive spots of a section, padded) and their markers carry
the embed step's own fingerprint, so the embed step that follows finds the spot level done
and embeds only the tiles. A kill loses at most the section in progress: its patches marker
is missing, so the re-run cuts the section again (same bytes) and re-embeds only batches
without a marker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asign.store.vectors import done_key, emb_key, patch_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpotSection:
    """One section's spot patches to cut: ids in the embed step's order and their boxes."""

    section_id: str
    image: str
    spot_ids: list[str]
    boxes: list[list[int]]
    size_px: int  # level-0 side of a spot patch
    out_px: int  # stored side = the encoder's input


def can_stream(spec: Any, distributed: bool) -> bool:
    """Whether the spot level of embed can ride along with the patches step: serial runs
    only (on a cluster the units run elsewhere), and not for an encoder whose features are
    z-scored with statistics the embed step computes first (``standardise``)."""
    return not distributed and not spec.standardise


def stream_sections(vec: Any, encoder: Any, sections: list[SpotSection], *, batch_size: int,
                    precision: str, patches_fp: str, embed_fp: str,
                    advance: Callable[[int], None]) -> None:
    """Cut, embed and store the spot patches of ``sections``, one transaction per batch.
    The next section's slide is decoded in the background while this one is embedded."""
    from asign.ingest import patches
    from asign.ingest.embed import crop_items, embed_batches

    name = encoder.spec.name
    log.info("%d section(s): spot level streamed to %s while cutting", len(sections), name)
    warm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asign-warm")
    pending: Future | None = None
    try:
        for i, sec in enumerate(sections):
            if pending is not None:
                pending.result()  # an unreadable next image fails here, with its own error
                pending = None
            if i + 1 < len(sections):
                nxt = sections[i + 1]
                # A 1-px read decodes a plain JPEG into the cached slide handle.
                pending = warm.submit(patches.crop, nxt.image, 0, 0, 1, 1)
            done = done_key("patches", patches_fp, sec.section_id)
            if not sec.spot_ids:
                vec.put_many([(done, b"1")])
                continue
            n_batches = -(-len(sec.spot_ids) // batch_size)
            todo = {b for b in range(n_batches)
                    if not vec.has(done_key("emb", embed_fp, sec.section_id, "spot", str(b)))}
            if not todo:  # every vector is there (an earlier run died before the last patch)
                _store_patches_only(vec, sec, done)
                advance(len(sec.spot_ids))
                continue
            items = crop_items(sec.image, sec.spot_ids, sec.boxes, sec.size_px, sec.out_px)
            batches = embed_batches(encoder, items, batch_size=batch_size, precision=precision,
                                    patch_codec=patches.DEFAULT_PATCH_CODEC)
            for b, batch in enumerate(batches):
                put = [(patch_key(k), png) for k, png in zip(batch.keys, batch.patches or [], strict=True)]
                if b in todo:  # a resumed section rewrites only the vectors it lacks
                    put += [(emb_key(name, "spot", k), v.tobytes())
                            for k, v in zip(batch.keys, batch.features, strict=True)]
                    put.append((done_key("emb", embed_fp, sec.section_id, "spot", str(b)), b"1"))
                if b == n_batches - 1:
                    put.append((done, b"1"))
                vec.put_many(put)
                advance(len(batch.keys))
    finally:
        if pending is not None:
            pending.cancel()
        warm.shutdown(wait=True)


def _store_patches_only(vec: Any, sec: SpotSection, done: bytes) -> None:
    from asign.ingest.step_features import crop_patches

    vec.put_many([*crop_patches(sec.image, sec.spot_ids, sec.boxes, sec.size_px, sec.out_px), (done, b"1")])
