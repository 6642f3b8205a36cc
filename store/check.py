"""`asign check`: verify a store's integrity and list every problem found (not just the
first), as spatialdata's validation does.

Verified: the manifest (format, schema version); every table file against the sha256 the
manifest recorded when its step finished (edited, deleted, unrecorded or half-replaced
files); every table's schema version, table name and columns; leftover temporary files;
the raw inputs against their recorded hashes; per sample, the tables each finished step
must have written, unique spot ids, label vectors as long as the gene panel, spot/tile
references, LMDB patches and embeddings against the tables (presence, vector length, and
entry counts per section), and edge endpoints; per run, that the runs, metrics and
predictions files agree. Problems make `asign check` exit 1; notes (harmless, such as
stale LMDB entries an earlier ingest left behind) are printed but do not fail it."""

from __future__ import annotations

import glob
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from asign.errors import AsignError
from asign.hashing import file_sha256
from asign.schemas import SCHEMA_VERSION, TABLES
from asign.schemas.vocabulary import EDGE_KINDS
from asign.store import Store, records
from asign.store.check_files import UNREADABLE, check_files
from asign.store.check_results import check_results
from asign.store.integrity import digest_problem, lmdb_damage, vectors_problem
from asign.store.layout import (
    OPTIONAL_STEP_TABLES,
    RUN_TABLES,
    SAMPLE_TABLES,
    STEP_TABLES,
    VECTOR_STEPS,
)
from asign.store.manifest import table_problem
from asign.store.parquet import check_version
from asign.store.vectors import _emb_key

log = logging.getLogger(__name__)

_REINGEST = "run `asign check --repair` (it redoes every step whose outputs changed)"
_RETRAIN = ("delete it, or re-run the `asign train` command that wrote it (it rewrites the "
            "run's files)")


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_store(store: Store) -> list[str]:
    """Problems found; an empty list means the store is consistent."""
    return inspect_store(store).problems


def inspect_store(store: Store) -> CheckReport:
    """Every problem and note, one line each (whatever a library's message held)."""
    report = _inspect(store)
    report.problems[:] = [p.replace("\n", " ") for p in report.problems]
    report.notes[:] = [n.replace("\n", " ") for n in report.notes]
    return report


def _inspect(store: Store) -> CheckReport:
    report = CheckReport()
    store = replace(store, strict_rows=False)  # edited tables are reported, not refused
    try:
        manifest = store.manifest()
    except AsignError as err:
        report.problems.append(str(err))
        return report
    problems = report.problems
    record = store.layout.record_of("sections")
    try:
        recorded = records.load(record)
    except AsignError as err:  # every table read consults it: nothing else can be checked
        problems.append(f"{err}; {REBUILD_FIX}")
        return report
    problems += [f"{record}: {why}; {REBUILD_FIX}"
                 for why in _ingest_record_problems(store, manifest, recorded)][:1]
    problems += _check_table_hashes(store, manifest, report.notes)
    readable = _check_table_files(store, manifest, problems)
    leftovers = sorted(glob.glob(str(store.root / "**" / ".*.tmp"), recursive=True))
    problems += [f"{p}: leftover temporary file from an interrupted write (safe to delete)"
                 for p in leftovers]
    if readable.get(store.layout.table("sections")):
        try:
            problems += _check_inputs(store)
            problems += _check_samples_known(store, manifest)
        except UNREADABLE as err:
            problems.append(f"{store.layout.table('sections')}: does not decode ({err}); "
                            f"{_REINGEST}")

    problems += check_files(store)
    vec = None
    if not store.layout.vectors.exists():
        problems += [f"{why}; {_REINGEST}" for sample_id, steps in manifest["steps"].items()
                     for step in VECTOR_STEPS
                     if step in steps
                     and (why := vectors_problem(store, manifest, sample_id, step))][:1]
    elif (damage := lmdb_damage(store.layout.vectors)) is not None:
        problems.append(f"{damage}; {_REINGEST}")
    else:
        try:
            vec = store.vectors(readonly=True)
        except AsignError as err:
            problems.append(str(err))
    try:
        # read raw: a damaged record is reported, not raised
        embed = manifest["params"].get("embed") or {}
        encoder, dim = embed.get("encoder"), embed.get("dim")
        for sample_id, steps in manifest["steps"].items():
            try:
                _check_sample(store, sample_id, steps, vec, encoder, dim, readable, report)
            except UNREADABLE as err:  # a file whose footer reads but whose pages do not
                problems.append(f"{store.layout.tables}: a table of sample {sample_id} does not "
                                f"decode ({err}); {_REINGEST}")
    finally:
        if vec is not None:
            vec.close()
    check_results(store, readable, report)
    return report


# --- files ---------------------------------------------------------------------------------

REBUILD_FIX = "`asign check --repair` rebuilds it from the manifest"


def _ingest_record_problems(store: Store, manifest: dict[str, Any],
                            recorded: dict[str, Any]) -> list[str]:
    """The ingest tables' write record lists what the manifest accepts (records.sync_ingest)."""
    out = []
    for rel, info in (manifest.get("tables") or {}).items():
        # a file an interrupted ingest replaced is reported as such, not as a record problem
        if (rel.endswith(".parquet") and table_problem(store.layout, rel, info, full=False) is None
                and not any(e.get("sha256") == info.get("sha256") for e in recorded.get(rel, []))):
            out.append(f"no entry for {rel}, which the manifest records")
    return out


def _check_table_hashes(store: Store, manifest: dict[str, Any], notes: list[str]) -> list[str]:
    recorded = manifest.get("tables")
    if recorded is None:
        if manifest["steps"]:
            notes.append(f"{store.layout.manifest}: records no table hashes (an older asign wrote "
                         "it); table contents were not verified against it")
        return []
    problems = []
    layout = store.layout
    present = layout.ingest_files()
    if not any(rel.startswith("qc/") for rel in recorded):  # QC pictures unrecorded: older asign
        present = [p for p in present if p.suffix == ".parquet"]
    names = set(recorded) | {layout.relative(p) for p in present}
    for rel in sorted(names):
        why = table_problem(layout, rel, recorded.get(rel), full=True)
        if why is not None:
            problems.append(f"{layout.root / rel}: {why}; {_REINGEST}")
    return problems


# a results file belongs to one run: queries leave it out, and this is its fix


def _table_files(store: Store) -> list[tuple[str, Path]]:
    layout = store.layout
    files = [(name, layout.table(name)) for name in ("sections", "genes")
             if layout.table(name).exists()]
    for name in TABLES:
        if name not in ("sections", "genes"):
            files += [(name, Path(p)) for p in sorted(glob.glob(layout.table_glob(name)))]
    return files


def _check_table_files(store: Store, manifest: dict[str, Any],
                       problems: list[str]) -> dict[Path, bool]:
    """Schema version, table name and columns of every table file; which files are readable."""
    readable: dict[Path, bool] = {}
    for name, path in _table_files(store):
        readable[path] = False
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as err:
            fix = _RETRAIN if name in RUN_TABLES else _REINGEST
            problems.append(f"{path}: table is corrupt ({err}); {fix}")
            continue
        try:
            check_version(schema, path)
        except AsignError as err:
            problems.append(str(err))
            continue
        stored_name = (schema.metadata or {}).get(b"asign.table", b"").decode()
        if stored_name != name:
            problems.append(f"{path}: holds table {stored_name!r}, expected {name!r}")
            continue
        # a file of an older schema version may lack the nullable columns added since
        # (schemas.upgrade reads them as null)
        older = int((schema.metadata or {}).get(b"asign.schema_version", b"0")) < SCHEMA_VERSION
        bad = [f"column {f.name} missing" if f.name not in schema.names else
               f"column {f.name} is {schema.field(f.name).type}, expected {f.type}"
               for f in TABLES[name] if (f.name not in schema.names and not (older and f.nullable))
               or (f.name in schema.names and schema.field(f.name).type != f.type)]
        if bad:
            problems.append(f"{path}: {'; '.join(bad)}")
            continue
        readable[path] = True
    for path in (store.layout.table("sections"), store.layout.table("genes")):
        if not path.exists() and manifest["steps"]:
            problems.append(f"{path}: table missing although samples are registered; {_REINGEST}")
    return readable


def _check_inputs(store: Store) -> list[str]:
    """The raw files still match the hashes recorded at ingest (detects changed inputs)."""
    problems = []
    for row in store.read("sections").to_pylist():
        for kind in ("image", "counts"):
            path, recorded = row[f"{kind}_path"], row[f"{kind}_sha256"]
            if not path or not recorded:
                continue
            if not Path(path).exists():
                problems.append(f"{path}: {kind} of section {row['section_id']} no longer exists")
            elif file_sha256(Path(path)) != recorded:
                problems.append(f"{path}: {kind} of section {row['section_id']} changed since "
                                "ingest (re-run ingest)")
    return problems


def _check_samples_known(store: Store, manifest: dict[str, Any]) -> list[str]:
    stored = set(store.read("sections", columns=["sample_id"]).column("sample_id").to_pylist())
    path = store.layout.table("sections")
    problems = [f"{path}: no section of sample {s}, although the manifest records its steps; "
                f"{_REINGEST}"
                for s in sorted(set(manifest["steps"]) - stored)]
    problems += [f"{store.layout.manifest}: sample {s} has sections but no finished register step; "
                 f"{_REINGEST}"
                 for s in sorted(stored - set(manifest["steps"]))]
    return problems


# --- one sample ----------------------------------------------------------------------------

def _ids(store: Store, name: str, sample_id: str, column: str) -> list[str]:
    return store.read(name, key=sample_id, columns=[column]).column(column).to_pylist()


def _first(values: Any) -> str:
    return sorted(values)[0]


def _check_sample(store: Store, sample_id: str, steps: dict, vec: Any, encoder: str | None,
                  dim: Any, readable: dict[Path, bool], report: CheckReport) -> None:
    problems = report.problems
    layout = store.layout
    missing = [f"{layout.table(t, sample_id)}: missing although step {step} of sample {sample_id} "
               f"is recorded as finished; {_REINGEST}"
               for step, tables in STEP_TABLES.items() if step in steps for t in tables
               if (step, t) not in OPTIONAL_STEP_TABLES and not store.has(t, sample_id)]
    problems += list(dict.fromkeys(missing))
    ok = {t: readable.get(layout.table(t, sample_id), False) for t in SAMPLE_TABLES}
    if not ok["spots"]:
        return
    spot_list = _ids(store, "spots", sample_id, "spot_id")
    spot_ids = set(spot_list)
    spots_path = layout.table("spots", sample_id)
    dupes = [s for s, n in Counter(spot_list).items() if n > 1]
    if dupes:
        problems.append(f"{spots_path}: {len(dupes)} duplicate spot ids (e.g. {_first(dupes)})")
    if readable.get(layout.table("sections")):
        _check_spot_counts(store, sample_id, problems)
    if ok["labels"]:
        labels_path = layout.table("labels", sample_id)
        unknown = set(_ids(store, "labels", sample_id, "spot_id")) - spot_ids
        if unknown:
            problems.append(f"{labels_path}: {len(unknown)} spot ids not in the spots table (e.g. "
                            f"{_first(unknown)})")
        if readable.get(layout.table("genes")):
            n_genes = store.read("genes", columns=["gene"]).num_rows
            values = store.read("labels", key=sample_id, columns=["value"]).column("value")
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            wrong = int((lengths != n_genes).sum())
            if wrong:
                problems.append(f"{labels_path}: {wrong} label vectors do not have the {n_genes} "
                                "genes of the panel")
            problems += _non_finite_labels(store, sample_id, labels_path)
    tile_ids: set[str] = set()
    if ok["tiles"]:
        tile_ids = set(_ids(store, "tiles", sample_id, "tile_id"))
    if ok["spot_tiles"] and ok["tiles"]:
        links = store.read("spot_tiles", key=sample_id, columns=["spot_id", "tile_id"])
        path = layout.table("spot_tiles", sample_id)
        bad_spots = set(links.column("spot_id").to_pylist()) - spot_ids
        bad_tiles = set(links.column("tile_id").to_pylist()) - tile_ids
        if bad_spots:
            problems.append(f"{path}: {len(bad_spots)} spot ids not in the spots table (e.g. "
                            f"{_first(bad_spots)})")
        if bad_tiles:
            problems.append(f"{path}: {len(bad_tiles)} tile ids not in the tiles table (e.g. "
                            f"{_first(bad_tiles)})")
        if "patches" in steps and vec is not None:
            wanted = list(dict.fromkeys(links.column("spot_id").to_pylist()))
            gone = [s for s in wanted if not vec.has_patch(s)]
            if gone:
                problems.append(f"{vec.path}: {len(gone)} of {len(wanted)} spot patches of sample "
                                f"{sample_id} missing (e.g. patch/{gone[0]}); {_REINGEST}")
    if vec is not None:
        problems += [f"{why}; {_REINGEST}" for step in VECTOR_STEPS if step in steps
                     and (why := digest_problem(store, store.manifest(), sample_id, step, vec))]
    if "embed" in steps and ok["embeddings"] and vec is not None and encoder:
        _check_embeddings(store, sample_id, vec, encoder, dim, spot_ids,
                          tile_ids if ok["tiles"] else None, report)
    if ok["edges"]:
        _check_edges(store, sample_id, spot_ids, problems)


def _check_spot_counts(store: Store, sample_id: str, problems: list[str]) -> None:
    """Measured spots per section as the sections table counted them at register."""
    sections = store.read("sections",
                          columns=["sample_id", "section_id", "n_spots", "has_counts"]).to_pylist()
    spots = store.read("spots", key=sample_id, columns=["section_id", "is_virtual"]).to_pylist()
    measured = Counter(r["section_id"] for r in spots if not r["is_virtual"])
    for row in sections:
        if (row["sample_id"] == sample_id and row["has_counts"]
                and measured.get(row["section_id"], 0) != row["n_spots"]):
            problems.append(f"{store.layout.table('spots', sample_id)}: section "
                            f"{row['section_id']} has "
                            f"{measured.get(row['section_id'], 0)} measured spots, the sections "
                            f"table says {row['n_spots']}; {_REINGEST}")


def _check_embeddings(store: Store, sample_id: str, vec: Any, encoder: str, dim: Any,
                      spot_ids: set[str], tile_ids: set[str] | None, report: CheckReport) -> None:
    index = store.read("embeddings", key=sample_id,
                       columns=["section_id", "encoder", "level", "id"]).to_pylist()
    path = store.layout.table("embeddings", sample_id)
    other = {r["encoder"] for r in index} - {encoder}
    if other:
        report.problems.append(f"{path}: rows of encoder(s) {sorted(other)}, but the manifest "
                               f"records embeddings of {encoder!r}; {_REINGEST}")
    rows = [r for r in index if r["encoder"] == encoder]
    missing, wrong_size, non_finite = [], [], []
    want_bytes = 2 * int(dim) if dim else None
    with vec._begin() as txn:
        for r in rows:
            value = txn.get(_emb_key(encoder, r["level"], r["id"]))
            if value is None:
                missing.append(r)
            elif want_bytes is not None and len(value) != want_bytes:
                wrong_size.append(r)
            elif len(value) % 2 == 0 and not np.isfinite(np.frombuffer(value, np.float16)).all():
                non_finite.append(r)
    if missing:
        r = missing[0]
        report.problems.append(f"{vec.path}: {len(missing)} of {len(rows)} embeddings listed in "
                               f"{path} are missing "
                               f"(e.g. emb/{encoder}/{r['level']}/{r['id']}); {_REINGEST}")
    if wrong_size:
        r = wrong_size[0]
        report.problems.append(f"{vec.path}: {len(wrong_size)} embeddings of sample {sample_id} "
                               f"are not {dim} "
                               f"float16 values (e.g. emb/{encoder}/{r['level']}/{r['id']})")
    if non_finite:
        r = non_finite[0]
        report.problems.append(f"{vec.path}: {len(non_finite)} embeddings of sample {sample_id} "
                               f"hold NaN/inf (first in section {r['section_id']}: "
                               f"emb/{encoder}/{r['level']}/{r['id']}); {_REINGEST}")
    unknown_spots = {r["id"] for r in rows if r["level"] == "spot"} - spot_ids
    if unknown_spots:
        report.problems.append(f"{path}: {len(unknown_spots)} spot embeddings of spots not in the "
                               f"spots table (e.g. {_first(unknown_spots)})")
    if tile_ids is not None:
        unknown_tiles = {r["id"] for r in rows if r["level"] != "spot"} - tile_ids
        if unknown_tiles:
            report.problems.append(f"{path}: {len(unknown_tiles)} tile embeddings of tiles not in "
                                   f"the tiles table (e.g. {_first(unknown_tiles)})")
    # entry counts per section and level: LMDB keys are emb/ENCODER/LEVEL/SECTION/...
    listed = Counter((r["level"], r["section_id"]) for r in rows)
    for (level, section), n in sorted(listed.items()):
        held = vec.count_embeddings(encoder, level, f"{section}/")
        if held > n:
            report.notes.append(f"{vec.path}: {held - n} {level} embeddings of section {section} "
                                "are not listed in "
                                f"{path} (stale entries of an earlier ingest; harmless)")


def _check_edges(store: Store, sample_id: str, spot_ids: set[str], problems: list[str]) -> None:
    edges = store.read("edges", key=sample_id,
                       columns=["src_spot_id", "dst_spot_id", "kind", "weight"])
    path = store.layout.table("edges", sample_id)
    src = set(edges.column("src_spot_id").to_pylist())
    dst = set(edges.column("dst_spot_id").to_pylist())
    for end, ids in (("source", src), ("destination", dst)):
        dangling = ids - spot_ids
        if dangling:
            problems.append(f"{path}: {len(dangling)} edge {end} endpoints are not spots of sample "
                            f"{sample_id} (e.g. {_first(dangling)}); {_REINGEST}")
    kinds = set(edges.column("kind").to_pylist()) - set(EDGE_KINDS)
    if kinds:
        problems.append(f"{path}: unknown edge kinds {sorted(kinds)}")
    weights = edges.column("weight").to_numpy(zero_copy_only=False)
    if len(weights) and not (weights == weights).all():
        problems.append(f"{path}: {int((weights != weights).sum())} edge weights are NaN")
    elif len(weights) and (weights < 0).any():
        problems.append(f"{path}: {int((weights < 0).sum())} edge weights are negative")


def _non_finite_labels(store: Store, sample_id: str, path: Path) -> list[str]:
    """NaN is allowed only where the count is null: a gene absent from the section's
    counts, masked at ingest (absent is not zero)."""
    tab = store.read("labels", key=sample_id, columns=["section_id", "value", "counts"])
    flat = pc.list_flatten(tab.column("value")).to_numpy(zero_copy_only=False)
    if np.isfinite(flat).all():
        return []
    counts = pc.list_flatten(tab.column("counts"))
    masked = counts.is_null().to_numpy(zero_copy_only=False) if len(counts) == len(flat) else False
    damaged = ~np.isfinite(flat) & ~(np.isnan(flat) & masked)
    if not damaged.any():
        return []
    lengths = pc.list_value_length(tab.column("value")).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(tab.num_rows), lengths)
    rows = np.unique(owner[damaged])
    first = tab.column("section_id")[int(rows[0])].as_py()
    return [f"{path}: {len(rows)} label vectors hold NaN/inf (first in section {first}); "
            f"{_REINGEST}"]
