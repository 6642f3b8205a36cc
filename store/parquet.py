"""Parquet tables with a checked schema version."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from asign.errors import SchemaVersionError, StoreError
from asign.schemas import SCHEMA_VERSION, TABLES
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
        return pa.table({f.name: pa.array(table[f.name] if f.name in table else [None] * n, type=f.type)
                         for f in schema}, schema=schema)
    return table.select(schema.names).cast(schema)


def write_table(path: Path, table: pa.Table | dict, name: str) -> pa.Table:
    table = conform(table, name)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def write_table_parts(path: Path, parts: Iterable[pa.Table | dict], name: str) -> int:
    """Write one table from consecutive parts, each conformed and appended as it comes,
    so the whole table is never in memory (e.g. 50M prediction rows of a 200k-spot sample);
    atomic like ``write_table``. Returns the number of rows."""
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, TABLES[name], compression="zstd") as out:
        for part in parts:
            table = conform(part, name)
            out.write_table(table)
            rows += table.num_rows
    return rows


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


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise StoreError("table missing", path=path, fix="run `asign ingest` for this store first")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise StoreError(f"table is corrupt ({err})", path=path,
                         fix="delete the file and re-run `asign ingest` (it re-creates missing tables)") from err
    check_version(pf.schema_arrow, path)
    return pf.read(columns=columns)
