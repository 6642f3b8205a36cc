"""Spot patches cut once: embedded as they are cut, stored as PNG off the critical path.

When one serial ingest runs both the patches and the embed step, the patches step does the
spot level of embed as well: a loader thread cuts each crop and PNG-encodes it while the
encoder runs on the previous batch, and one LMDB transaction per batch stores the batch's
patches, its vectors and the embed step's marker for it (the section's patches marker goes
with its last batch). One loader pipeline runs through all sections, so the next section's
slide is decoded and cut while this one is embedded. The separate route (cut → PNG encode →
LMDB, then LMDB → PNG decode → encode) costs a PNG encode per spot on the critical path and
a decode after it; this one costs neither (``bench/embed.py --ingest`` measures both).

The store is the same, byte for byte: PNG is lossless, so the crop the encoder sees here is
the array the embed step would decode from the stored PNG (a vector does not depend on its
batch-mates, ``ingest/embed.py``); the committed batches are the embed step's resume units
(``batch_size`` consecutive spots of a section) and their markers carry
the embed step's own fingerprint, so the embed step that follows finds the spot level done
and embeds only the tiles. A kill loses at most the section in progress: its patches marker
is missing, so the re-run cuts the section again (same bytes) and re-embeds only batches
without a marker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asign.store import Done, EmbeddingRows

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
                    precision: str, patches_fp: str, embed_fp: str, tta: int = 1,
                    advance: Callable[[int], None]) -> None:
    """Cut, embed and store the spot patches of ``sections``, one transaction per batch,
    through one loader pipeline: it cuts (and decodes the slide of) the next section while
    the encoder finishes this one."""
    from asign.ingest.commits import BackgroundPuts
    from asign.ingest.embed import crop_items, embed_groups
    from asign.store.codecs import DEFAULT_PATCH_CODEC

    name = encoder.spec.name
    todo: dict[int, set[int]] = {}  # section → batches without vectors
    for i, sec in enumerate(sections):
        done = Done.patches(patches_fp, sec.section_id)
        n_batches = -(-len(sec.spot_ids) // batch_size)
        missing = {b for b in range(n_batches)
                   if not vec.is_done(Done.embeddings(embed_fp, sec.section_id, "spot", b))}
        if missing:
            todo[i] = missing
        elif sec.spot_ids:  # every vector is there (an earlier run died before the last patch)
            _store_patches_only(vec, sec, done)
            advance(len(sec.spot_ids))
        else:
            vec.put(done=[done])
    if not todo:
        return
    log.info("%d section(s): spot level streamed to %s while cutting", len(todo), name)
    groups = ((i, crop_items(sections[i].image, sections[i].spot_ids, sections[i].boxes,
                             sections[i].size_px, sections[i].out_px)) for i in todo)
    batch_no = dict.fromkeys(todo, 0)
    with BackgroundPuts(vec) as writer:
        for i, batch in embed_groups(encoder, groups, batch_size=batch_size, precision=precision,
                                     patch_codec=DEFAULT_PATCH_CODEC, tta=tta):
            sec, b = sections[i], batch_no[i]
            batch_no[i] += 1
            fresh = b in todo[i]  # a resumed section rewrites only the vectors it lacks
            markers = [Done.embeddings(embed_fp, sec.section_id, "spot", b)] if fresh else []
            if batch_no[i] * batch_size >= len(sec.spot_ids):  # the section's last batch
                markers.append(Done.patches(patches_fp, sec.section_id))
            writer.put(patches=zip(batch.keys, batch.patches or [], strict=True),
                       embeddings=[EmbeddingRows(name, "spot", batch.keys, batch.features)] if fresh
                       else [], done=markers)
            advance(len(batch.keys))


def _store_patches_only(vec: Any, sec: SpotSection, done: Done) -> None:
    from asign.ingest.step_features import crop_patches

    vec.put(patches=crop_patches(sec.image, sec.spot_ids, sec.boxes, sec.size_px, sec.out_px),
            done=[done])
