"""Where a query result goes: a file (``--out``: CSV, JSON or Parquet, streamed batch by
batch and written atomically, never into the store) or a text stream (CSV, JSON)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from asign.errors import StoreError
from asign.store.layout import StoreLayout

RESULT_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def write_result(result: pa.Table | Any, out: Path, layout: StoreLayout) -> int:
    """Save a query result (a table, or ``query.Result``: schema + batches) to ``out``
    atomically: CSV (LF line ends), strict JSON (a list of row objects; NaN and ±inf as
    null) or Parquet, by extension. Never into the store: a result file there could
    replace one of its tables. Returns the number of rows."""
    from asign.store.atomic import atomic_path

    out = Path(out)
    fmt = RESULT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise StoreError(f"unknown result file type {out.suffix or '(none)'!r}", path=out,
                         fix="name the --out file .csv, .json or .parquet")
    layout.require_outside(out, "a query result")
    if out.is_dir():
        raise StoreError("--out is a directory", path=out,
                         fix="pass a file name ending .csv, .json or .parquet")
    schema, batches = _parts(result)
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            rows = 0
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                rows = (write_csv if fmt == "csv" else write_json)(schema, batches, fh)
    return rows


def _parts(result: Any) -> tuple[pa.Schema, Iterable[pa.RecordBatch]]:
    if isinstance(result, pa.Table):
        return result.schema, result.to_batches()
    return result.schema, result


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_clean(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, str | bytes):  # numpy
        return _clean(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def strict_json(value: Any) -> str:
    """JSON that every parser accepts: NaN and ±inf become null (bare ``NaN`` is not JSON:
    jq and JavaScript refuse it), numpy scalars and arrays become Python ones. Used for
    ``--out FILE.json`` and for every ``--json`` output of the CLI."""
    return json.dumps(_clean(value), indent=1, default=str, allow_nan=False)


def write_json(schema: pa.Schema, batches: Iterable[pa.RecordBatch], fh: IO[str]) -> int:
    """A list of row objects, written row by row (strict JSON, as ``strict_json``);
    ``schema`` is unused (the same signature as ``write_csv``)."""
    rows = 0
    fh.write("[")
    for batch in batches:
        for row in batch.to_pylist():
            fh.write(("," if rows else "") + "\n" + strict_json(row))
            rows += 1
    fh.write("\n]\n" if rows else "]\n")
    return rows


def write_csv(schema: pa.Schema | pa.Table,
              batches: Iterable[pa.RecordBatch] | IO[str] | None = None,
              fh: IO[str] | None = None) -> int:
    """CSV with LF line ends, as DuckDB's own CLI writes them (csv's default CR LF breaks
    ``... | grep -qx 0`` and friends in a shell). ``write_csv(table, fh)`` also works."""
    if isinstance(schema, pa.Table):
        schema, batches, fh = schema.schema, schema.to_batches(), batches
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(schema.names)
    rows = 0
    for batch in batches:
        writer.writerows([row[c] for c in schema.names] for row in batch.to_pylist())
        rows += batch.num_rows
    return rows
