"""`asign check`: verify a store's integrity and list every problem found (not just the
first), as spatialdata's validation does."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from asign.errors import AsignError
from asign.store import Store
from asign.store.layout import SAMPLE_TABLES
from asign.store.manifest import file_sha256
from asign.store.parquet import read_table
from asign.store.vectors import emb_key, patch_key

log = logging.getLogger(__name__)


def check_store(store: Store) -> list[str]:
    """Problems found; an empty list means the store is consistent."""
    problems: list[str] = []
    try:
        manifest = store.manifest()
    except AsignError as err:
        return [str(err)]

    # 1. every table readable, with a known schema version
    files = [store.layout.table("sections"), store.layout.table("genes")]
    for name in SAMPLE_TABLES:
        files += [Path(p) for p in sorted(glob.glob(store.layout.table_glob(name)))]
    for name in ("runs", "metrics", "predictions"):
        files += [Path(p) for p in sorted(glob.glob(store.layout.table_glob(name)))]
    for path in files:
        if not path.exists():
            if path.name in ("sections.parquet", "genes.parquet") and manifest["steps"]:
                problems.append(f"{path}: table missing")
            continue
        try:
            read_table(path, columns=[])
        except AsignError as err:
            problems.append(str(err))
    leftovers = [p for p in glob.glob(str(store.root / "**" / ".*.tmp"), recursive=True)]
    problems += [f"{p}: leftover temporary file from an interrupted write (safe to delete)" for p in leftovers]

    # 2. input hashes still match the raw files (detects changed inputs)
    if store.has("sections"):
        for row in store.read("sections").to_pylist():
            for kind in ("image", "counts"):
                path, recorded = row[f"{kind}_path"], row[f"{kind}_sha256"]
                if not path or not recorded:
                    continue
                if not Path(path).exists():
                    problems.append(f"{path}: {kind} of section {row['section_id']} no longer exists")
                elif file_sha256(Path(path)) != recorded:
                    problems.append(f"{path}: {kind} of section {row['section_id']} changed since ingest (re-run ingest)")

    # 3. per sample: steps recorded vs artefacts, LMDB entries vs tables, edge endpoints
    vec = None
    if store.layout.vectors.exists():
        vec = store.vectors(readonly=True)
    try:
        encoder = manifest["params"].get("embed", {}).get("encoder")
        for sample_id, steps in manifest["steps"].items():
            problems += _check_sample(store, sample_id, steps, vec, encoder)
    finally:
        if vec is not None:
            vec.close()
    return problems


_STEP_TABLES = {"register": ("spots", "labels"), "align": ("transforms",), "patches": ("tiles", "spot_tiles"),
                "embed": ("embeddings",), "graph": ("edges",)}


def _check_sample(store: Store, sample_id: str, steps: dict, vec, encoder: str | None) -> list[str]:
    problems: list[str] = []
    for step, tables in _STEP_TABLES.items():
        if step in steps:
            problems += [f"{store.layout.table(t, sample_id)}: missing although step {step} of sample "
                         f"{sample_id} is recorded as finished" for t in tables if not store.has(t, sample_id)]
    if problems or not store.has("spots", sample_id):
        return problems
    spot_ids = set(store.read("spots", key=sample_id, columns=["spot_id"]).column("spot_id").to_pylist())
    if store.has("labels", sample_id):
        unknown = set(store.read("labels", key=sample_id, columns=["spot_id"]).column("spot_id").to_pylist()) - spot_ids
        if unknown:
            problems.append(f"labels of sample {sample_id}: {len(unknown)} spot ids not in spots (e.g. {sorted(unknown)[0]})")
    if "patches" in steps and vec is not None and store.has("tiles", sample_id):
        wanted = store.read("spot_tiles", key=sample_id, columns=["spot_id"]).column("spot_id").to_pylist()
        missing = [s for s in dict.fromkeys(wanted) if not vec.has(patch_key(s))]
        if missing:
            problems.append(f"LMDB: {len(missing)} spot patches of sample {sample_id} missing (e.g. {missing[0]})")
    if "embed" in steps and vec is not None and encoder and store.has("embeddings", sample_id):
        index = store.read("embeddings", key=sample_id, columns=["level", "id"]).to_pylist()
        missing = [r for r in index if not vec.has(emb_key(encoder, r["level"], r["id"]))]
        if missing:
            problems.append(f"LMDB: {len(missing)} of {len(index)} embeddings of sample {sample_id} missing "
                            f"(e.g. {missing[0]['level']}/{missing[0]['id']})")
    if store.has("edges", sample_id):
        edges = store.read("edges", key=sample_id, columns=["src_spot_id", "dst_spot_id", "weight"])
        ends = set(edges.column("src_spot_id").to_pylist()) | set(edges.column("dst_spot_id").to_pylist())
        dangling = ends - spot_ids
        if dangling:
            problems.append(f"edges of sample {sample_id}: {len(dangling)} endpoints are not spots (e.g. {sorted(dangling)[0]})")
        weights = edges.column("weight").to_numpy()
        if len(weights) and not (weights == weights).all():
            problems.append(f"edges of sample {sample_id}: NaN weights")
    return problems
