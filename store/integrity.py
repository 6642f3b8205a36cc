"""Whether what a finished step promises is still in the store, beyond its table files:
the QC pictures of align and the LMDB entries of patches and embed.

``Store.step_intact`` asks this module, so ingest redoes a step whose outputs check would
flag (a deleted ``vectors.lmdb``, a deleted thumbnail) instead of skipping it on the
strength of its done marker; ``asign check`` reports the same findings in more detail."""

from __future__ import annotations

from collections import Counter
from typing import Any

from asign.errors import AsignError
from asign.store.layout import StoreLayout
from asign.store.manifest import table_problem


def qc_problem(layout: StoreLayout, manifest: dict[str, Any], sample_id: str,
               section_ids: list[str], *, full: bool) -> str | None:
    """The first recorded QC picture of the sample that is missing or changed."""
    recorded = manifest.get("tables") or {}
    files = [layout.alignment_png(sample_id)]
    files += [f(s) for s in section_ids for f in (layout.thumbnail, layout.fine_thumbnail)]
    for path in files:
        rel = layout.relative(path)
        if rel in recorded:
            why = table_problem(layout, rel, recorded[rel], full=full)
            if why is not None:
                return f"{path}: {why}"
    return None


def vectors_problem(store: Any, manifest: dict[str, Any], sample_id: str, step: str) -> str | None:
    """Patches (``patches``) or embeddings (``embed``) the tables list but the LMDB lacks:
    counted per section, from the spot→tile map and the embeddings table."""
    if step not in ("patches", "embed"):
        return None
    path = store.layout.vectors
    if not (path / "data.mdb").is_file():
        return f"{path}: missing, although step {step} of sample {sample_id} is done"
    name = "spot_tiles" if step == "patches" else "embeddings"
    if not store.has(name, sample_id):
        return None  # the table check reports it
    try:
        if step == "patches":
            ids = store.read("spot_tiles", key=sample_id, columns=["spot_id"]).column("spot_id")
            wanted = Counter(s.split("/", 1)[0] + "/" for s in set(ids.to_pylist()))
            encoder = None
        else:
            rows = store.read("embeddings", key=sample_id,
                              columns=["section_id", "encoder", "level"]).to_pylist()
            wanted = Counter((r["encoder"], r["level"], f"{r['section_id']}/") for r in rows)
            encoder = True
        with store.vectors(readonly=True) as vec:
            for key, n in wanted.items():
                held = (vec.count(f"patch/{key}".encode()) if encoder is None
                        else vec.count_embeddings(key[0], key[1], key[2]))
                if held < n:
                    return (f"{path}: holds {held} of the {n} {step} entries of sample "
                            f"{sample_id} ({key if encoder is None else '/'.join(key)})")
    except AsignError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - lmdb.Error and friends: a damaged database
        return f"{path}: unreadable ({type(err).__name__}: {err})"
    return None
