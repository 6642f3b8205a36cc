"""Parquet tables with a checked schema version."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from asign.errors import SchemaVersionError, StoreError
from asign.schemas import SCHEMA_VERSION, TABLES, upgrade
from asign.store.atomic import atomic_path


def conform(table: pa.Table | dict, name: str) -> pa.Table:
    """Cast a table (or a dict of columns) to the registered schema of ``name``."""
    schema = TABLES[name]
    if isinstance(table, dict):
        missing = [f.name for f in schema if f.name not in table and not f.nullable]
        if missing:
            raise ValueError(f"table {name} misses columns {missing}")
        # a nullable column added to a schema later is null where a writer does not give it
        n = len(next(iter(table.values()))) if table else 0
        return pa.table({f.name: pa.array(table[f.name] if f.name in table else [None] * n,
                                          type=f.type)
                         for f in schema}, schema=schema)
    return table.select(schema.names).cast(schema)


def write_table(path: Path, table: pa.Table | dict, name: str,
                before_replace: Callable[[Path], None] | None = None) -> pa.Table:
    table = conform(table, name)
    with atomic_path(path, before_replace) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=group_rows(table))
    return table


ROW_GROUP_BYTES = 64 << 20  # decoded bytes per row group


def group_rows(table: pa.Table) -> int:
    """Rows per row group so that one group decodes to about ``ROW_GROUP_BYTES``: a reader
    streams a table group by group (iter_table), so a group bounds its memory — the labels
    of a Visium HD stack (800k spots × two gene lists) are GBs in one group."""
    return _rows_per_group(table.nbytes / max(table.num_rows, 1))


def _rows_per_group(bytes_per_row: float) -> int:
    return max(1024, min(1 << 20, int(ROW_GROUP_BYTES / max(bytes_per_row, 1.0))))


def write_table_parts(path: Path, parts: Iterable[pa.Table | dict], name: str,
                      before_replace: Callable[[Path], None] | None = None) -> int:
    """Write one table from consecutive parts, each conformed and appended as it comes,
    so the whole table is never in memory (e.g. 50M prediction rows of a 200k-spot sample);
    atomic like ``write_table``. Returns the number of rows."""
    with atomic_path(path, before_replace) as tmp:
        _write_parts(tmp, parts, name)
        rows = pq.read_metadata(tmp).num_rows
    return rows


def _write_parts(tmp: Path, parts: Iterable[pa.Table | dict], name: str) -> None:
    with pq.ParquetWriter(tmp, TABLES[name], compression="zstd") as out:
        for part in parts:
            table = conform(part, name)
            out.write_table(table, row_group_size=group_rows(table))


def check_version(schema: pa.Schema, path: Path) -> None:
    meta = schema.metadata or {}
    version = meta.get(b"asign.schema_version")
    if version is None:
        raise StoreError("not an asign table (no schema version)", path=path,
                         fix="re-run `asign ingest` into a fresh --store")
    if int(version) > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"written by schema version {int(version)}, this asign reads up to {SCHEMA_VERSION}",
            path=path, fix="upgrade asign (pip install -U asign) to read this store")


def read_table(path: Path, columns: list[str] | None = None,
               check_rows: Callable[[int], bool | None] | None = None) -> pa.Table:
    """Read a table file; ``check_rows(claimed)`` vets the footer's row count first."""
    pf = _vetted(Path(path), columns, check_rows, whole=True)
    meta = pf.schema_arrow.metadata or {}
    name = meta.get(b"asign.table", b"").decode()
    if _older(pf):  # an older file: read what it has, add the rest
        have = set(pf.schema_arrow.names)
        return upgrade(pf.read(columns=None if columns is None
                               else [c for c in columns if c in have]),
                       name, columns)
    return pf.read(columns=columns)


def iter_table(path: Path, columns: list[str] | None = None,
               check_rows: Callable[[int], bool | None] | None = None,
               batch_rows: int | None = None, dictionary: Iterable[str] = ()
               ) -> Iterator[pa.Table]:
    """A table file in pieces of at most ``batch_rows`` rows (None: about
    ``ROW_GROUP_BYTES`` decoded per piece), vetted like :func:`read_table` but with no
    whole-file decode budget: memory is bounded by a piece (and a row group, see
    :func:`group_rows`), so a run's predictions (spots × genes rows) or a Visium HD stack's
    labels are read at any size. ``dictionary``: string columns decoded as dictionaries
    (each distinct string once per piece)."""
    path = Path(path)
    pf = _vetted(path, columns, check_rows, whole=False, dictionary=list(dictionary))
    if batch_rows is None:
        batch_rows = _rows_per_group(decoded_bytes(pf.metadata, columns)
                                     / max(pf.metadata.num_rows, 1))
    meta = pf.schema_arrow.metadata or {}
    name = meta.get(b"asign.table", b"").decode()
    older = _older(pf)
    have = set(pf.schema_arrow.names)
    read = columns if columns is None or not older else [c for c in columns if c in have]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=read):
        piece = pa.Table.from_batches([batch])
        yield upgrade(piece, name, columns) if older else piece


def _older(pf: pq.ParquetFile) -> bool:
    meta = pf.schema_arrow.metadata or {}
    name = meta.get(b"asign.table", b"").decode()
    return (name in TABLES
            and int(meta.get(b"asign.schema_version", SCHEMA_VERSION)) < SCHEMA_VERSION)


def _vetted(path: Path, columns: list[str] | None,
            check_rows: Callable[[int], bool | None] | None, *, whole: bool,
            dictionary: list[str] | None = None) -> pq.ParquetFile:
    for attempt in range(VET_ATTEMPTS):
        pf = _open(path, dictionary)
        try:
            _vet(pf, path, check_rows, columns, whole=whole)
            return pf
        except StoreError:
            # A writer may have replaced the file between our footer and its record:
            # look again before calling the file forged.
            if attempt + 1 == VET_ATTEMPTS:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


VET_ATTEMPTS = 3


def _open(path: Path, dictionary: list[str] | None = None) -> pq.ParquetFile:
    if not path.exists():
        raise StoreError("table missing", path=path, fix="run `asign ingest` for this store first")
    try:
        return pq.ParquetFile(path, read_dictionary=dictionary or None)
    except (pa.ArrowInvalid, OSError) as err:
        raise StoreError(f"table is corrupt ({err})", path=path,
                         fix="delete the file and re-run `asign ingest` (it re-creates missing "
                             "tables)") from err


def _vet(pf: pq.ParquetFile, path: Path, check_rows: Callable[[int], bool | None] | None,
         columns: list[str] | None = None, *, whole: bool = True) -> None:
    """Version, and the footer's claims (consistent, as recorded, or plausible for the file's
    size when not recorded, and, for a ``whole`` read, decodable in memory) before decoding
    anything."""
    check_version(pf.schema_arrow, path)
    meta = pf.metadata
    claimed = meta.num_rows
    if sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) != claimed:
        raise StoreError("table footer is inconsistent (row groups do not add up to its row count)",
                         path=path, fix="delete the file and re-run the command that wrote it")
    recorded = bool(check_rows(claimed)) if check_rows is not None else False
    if not recorded:
        check_claims(meta, path)
    need, budget = decoded_bytes(meta, columns), decode_budget()
    if whole and need > budget:
        raise StoreError(f"table would take {need >> 20} MiB to decode, more than the "
                         f"{budget >> 20} MiB this host allows a read; not read", path=path,
                         fix="query it with `asign query` (streamed), or read fewer columns")


# An unrecorded file (a stranger, or an older asign's) may claim at most this many rows per
# byte: asign's tables hold ≤ ~12 (3M predictions of a mean model, zstd: 11), a file of one
# repeated row 40 and more; SLACK lets small tables pass.
ROWS_PER_BYTE, ROWS_SLACK = 25, 1_000_000
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}
DECODE_FRACTION = 0.5  # of the host's memory (or address-space limit): one whole-file read


def check_claims(meta: pq.FileMetaData, path: Path) -> None:
    """Refuse a file whose footer claims more rows than a file of its size holds."""
    size = Path(path).stat().st_size
    if meta.num_rows > ROWS_PER_BYTE * size + ROWS_SLACK:
        raise StoreError(f"table footer claims {meta.num_rows} rows in a file of {size} bytes "
                         "(forged, or not written by asign); not read", path=path,
                         fix="run `asign check`; delete the file and re-run the command that "
                             "wrote it")


def decoded_bytes(meta: pq.FileMetaData, columns: list[str] | None = None) -> int:
    """A lower bound of the memory a full read takes, from the footer's value counts."""
    total = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if columns is None or col.path_in_schema.split(".")[0] in columns:
                total += col.num_values * _WIDTH.get(col.physical_type, 16)
    return total


def host_memory() -> int:
    """The host's memory, or the process's address-space limit when that is lower."""
    import os
    import resource

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return total if limit == resource.RLIM_INFINITY else min(total, limit)


def decode_budget() -> int:
    return int(host_memory() * DECODE_FRACTION)
