"""Whether what a finished step promises is still in the store, beyond its table files:
the QC pictures of align and the LMDB entries of patches and embed.

``Store.step_intact`` asks this module, so ingest redoes a step whose outputs check would
flag (a deleted ``vectors.lmdb``, a deleted thumbnail) instead of skipping it on the
strength of its done marker; ``asign check`` reports the same findings in more detail."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from asign.errors import AsignError
from asign.store.layout import VECTOR_STEPS, StoreLayout
from asign.store.manifest import table_problem
from asign.store.manifest_records import step_record


def lmdb_damage(path: Path) -> str | None:
    """Why an LMDB cannot be read safely, checked before any page is mapped: a data file
    shorter than the pages its meta page claims would fault the process (SIGBUS) at the
    first read beyond its end, so it is refused here instead."""
    import lmdb

    data = path / "data.mdb"
    if not data.is_file():
        return f"{path}: data.mdb missing"
    size = data.stat().st_size
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, map_size=size or 1)
        try:
            info, stat = env.info(), env.stat()
        finally:
            env.close()
    except lmdb.Error as err:
        return f"{path}: unreadable ({err})"
    if (info["last_pgno"] + 1) * stat["psize"] > size:
        return (f"{path}: data.mdb is {size} bytes, its pages need "
                f"{(info['last_pgno'] + 1) * stat['psize']} (truncated)")
    return None


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


def vectors_problem(store: Any, manifest: dict[str, Any], sample_id: str, step: str, *,
                    full: bool = False) -> str | None:
    """Patches (``patches``) or embeddings (``embed``) the tables list but the LMDB lacks:
    counted per section, from the spot→tile map and the embeddings table; ``full``: also
    their bytes against the digest recorded at ingest."""
    if step not in VECTOR_STEPS:
        return None
    path = store.layout.vectors
    name = "spot_tiles" if step == "patches" else "embeddings"
    if not store.has(name, sample_id):
        return None  # the table check reports it
    if step == "patches":
        ids = store.read("spot_tiles", key=sample_id, columns=["spot_id"]).column("spot_id")
        wanted = Counter(s.split("/", 1)[0] + "/" for s in set(ids.to_pylist()))
        encoder = None
    else:
        rows = store.read("embeddings", key=sample_id,
                          columns=["section_id", "encoder", "level"]).to_pylist()
        wanted = Counter((r["encoder"], r["level"], f"{r['section_id']}/") for r in rows)
        encoder = True
    if not wanted:  # a sample placed by coordinates alone lists no entries: needs no LMDB
        return None
    if not (path / "data.mdb").is_file():
        return f"{path}: missing, although step {step} of sample {sample_id} is done"
    damage = lmdb_damage(path)
    if damage is not None:
        return damage
    try:
        with store.vectors(readonly=True) as vec:
            for key, n in wanted.items():
                held = (vec.count_patches(key) if encoder is None
                        else vec.count_embeddings(key[0], key[1], key[2]))
                if held < n:
                    return (f"{path}: holds {held} of the {n} {step} entries of sample "
                            f"{sample_id} ({key if encoder is None else '/'.join(key)})")
    except AsignError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - lmdb.Error and friends: a damaged database
        return f"{path}: unreadable ({type(err).__name__}: {err})"
    return digest_problem(store, manifest, sample_id, step) if full else None


def _sections_of(store: Any, sample_id: str) -> list[str]:
    rows = store.read("sections", columns=["sample_id", "section_id"]).to_pylist()
    return sorted(r["section_id"] for r in rows if r["sample_id"] == sample_id)


def _listed_keys(store: Any, manifest: dict[str, Any], sample_id: str, step: str) -> list[bytes]:
    """The LMDB keys the sample's tables list for ``step``, sorted: an entry no table lists
    (left by an earlier ingest) is read by nothing and does not count."""
    if step == "patches":
        ids = store.read("spot_tiles", key=sample_id, columns=["spot_id"]).column("spot_id")
        return sorted(f"patch/{s}".encode() for s in set(ids.to_pylist()))
    encoder = ((manifest.get("params") or {}).get("embed") or {}).get("encoder")
    rows = store.read("embeddings", key=sample_id, columns=["encoder", "level", "id"]).to_pylist()
    return sorted({f"emb/{encoder}/{r['level']}/{r['id']}".encode() for r in rows
                   if r["encoder"] == encoder})


def entries_digest(store: Any, manifest: dict[str, Any], sample_id: str, step: str,
                   vec: Any = None) -> str | None:
    """sha256 over the keys and values of the LMDB entries a sample's tables list for
    ``step`` (patches or embed), recorded with the step's done marker: LMDB keeps no
    checksum of its own, so a changed byte in a vector would otherwise pass every count.
    None when a listed entry is missing (check reports missing entries itself)."""
    import hashlib

    h = hashlib.sha256()
    keys = _listed_keys(store, manifest, sample_id, step)
    if not keys:  # nothing listed (a sample placed by coordinates alone): no LMDB to open
        return h.hexdigest()
    opened = store.vectors(readonly=True) if vec is None else None
    try:
        with (opened or vec)._begin() as txn:
            for key in keys:
                value = txn.get(key)
                if value is None:
                    return None
                h.update(len(key).to_bytes(4, "little") + key)
                h.update(len(value).to_bytes(8, "little") + bytes(value))
    finally:
        if opened is not None:
            opened.close()
    return h.hexdigest()


def digest_problem(store: Any, manifest: dict[str, Any], sample_id: str, step: str,
                   vec: Any = None) -> str | None:
    """The sample's entries of ``step`` differ from the digest its done marker recorded."""
    record = step_record(manifest, sample_id, step)
    recorded = None if record is None else record.entries_sha256
    if recorded is None or not store.layout.vectors.exists():
        return None
    try:
        digest = entries_digest(store, manifest, sample_id, step, vec)
        if digest is None or digest == recorded:  # missing entries are reported as such
            return None
    except Exception as err:  # noqa: BLE001 - lmdb.Error and friends: a damaged database
        return f"{store.layout.vectors}: unreadable ({type(err).__name__}: {err})"
    return (f"{store.layout.vectors}: the {step} entries of sample {sample_id} differ from what "
            "the step wrote (sha256 recorded at ingest)")


def forget_done(store: Any, sample_id: str, step: str, keep: str | None = None) -> int:
    """Drop the LMDB's resume markers of a sample's sections for ``step`` and later (a
    redone patches step is followed by embed, which must recompute, not resume), so a step
    redone to repair it recomputes every unit instead of trusting them; ``keep``: except
    the markers of this fingerprint (a run resuming its own interrupted work)."""
    if not (store.layout.vectors / "data.mdb").is_file():
        return 0  # no LMDB, no markers (and a store that needs none does not get one)
    with store.vectors(readonly=False) as vec:
        return vec.forget_done(_sections_of(store, sample_id), patches=step == "patches",
                               keep=keep)
