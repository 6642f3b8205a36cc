"""DuckDB views over the store's Parquet files (DESIGN §7), on a connection that can only
read them.

A store is shared: whoever runs `asign query` must not be able to change it, nor reach
other files of the host through it. So each connection is in-memory and

- holds one view per table, listing the store's files (row counts checked against their
  write records, records.py, before DuckDB decodes them);
- may then read only those files (``allowed_paths``) with every other file-system access
  off (``enable_external_access=false``: no read_csv('/etc/passwd'), glob, ATTACH,
  EXPORT, INSTALL), extensions neither autoloaded nor autoinstalled, no spill directory,
  and its configuration locked (no SET/PRAGMA/RESET can undo any of it);
- runs user SQL only when every statement is a SELECT (or EXPLAIN of one): DuckDB lets a
  COPY write to an allowed path, so the statement check is what keeps the store's own
  files from being overwritten.

Any number of such connections can read beside writers."""

from __future__ import annotations

import glob as _glob
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from asign.errors import StoreError
from asign.schemas import TABLES
from asign.store.layout import StoreLayout

VIEWS = tuple(TABLES)
# A table file deleted between listing and reading (Store.remove empties results files
# rather than deleting them, but a user may delete files): list again, a few times.
ATTEMPTS = 5
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


class QueryRefused(StoreError):
    """A statement `asign query` does not run: it would write or change the session."""


def connect(layout: StoreLayout, spill_dir: Path | None = None) -> Any:
    """A locked-down in-memory DuckDB connection with one view per table. Every file's
    schema version is checked first: DuckDB would read a newer one without complaint.
    ``spill_dir``: a private folder (outside the store) for DuckDB's spill files; None:
    no spilling (a query larger than memory fails instead)."""
    import duckdb

    con = duckdb.connect(":memory:")
    allowed: list[str] = []
    cache: dict[Path, dict] = {}
    try:
        for name in VIEWS:
            files = []
            for f in sorted(p for p in _glob.glob(layout.table_glob(name)) if not Path(p).name.startswith(".")):
                if _vetted(layout, name, Path(f), cache):  # False: removed since listed
                    files.append(f)
            if files:
                allowed += files
                listing = ", ".join(_literal(f) for f in files)
                source = f"read_parquet([{listing}], union_by_name=true)"
                con.execute(f"CREATE VIEW {name} AS {_select(layout, name, files, source)}")
            else:
                con.register(f"_empty_{name}", TABLES[name].empty_table())
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
        _lock_down(con, allowed, spill_dir)
    except BaseException:
        con.close()
        raise
    return con


def _vetted(layout: StoreLayout, name: str, path: Path, cache: dict[Path, dict]) -> bool:
    """Schema version and recorded row count of one file, from its footer (nothing decoded);
    looked at again when a writer may have replaced it between footer and record."""
    from asign.store.parquet import VET_ATTEMPTS, check_version
    from asign.store.records import check_rows

    for attempt in range(VET_ATTEMPTS):
        meta = _footer(path)
        if meta is None:
            return False
        check_version(meta.schema.to_arrow_schema(), path)
        try:
            check_rows(layout, name, path.stem, path, meta.num_rows, cache if attempt == 0 else None)
            return True
        except StoreError:
            if attempt + 1 == VET_ATTEMPTS:
                raise
            time.sleep(0.05 * (attempt + 1))
    return False


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _select(layout: StoreLayout, name: str, files: list[str], source: str) -> str:
    """The view's query. ``runs``: a ``running`` run whose process died (no live process
    holds its lock, locks.py) reads as ``interrupted``."""
    if name != "runs":
        return f"SELECT * FROM {source}"
    dead = _dead_runs(layout, files)
    if not dead:
        return f"SELECT * FROM {source}"
    ids = ", ".join(_literal(r) for r in dead)
    return (f"SELECT * REPLACE (CASE WHEN status = 'running' AND run_id IN ({ids}) "
            f"THEN 'interrupted' ELSE status END AS status) FROM {source}")


def _dead_runs(layout: StoreLayout, files: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    from asign.store.locks import run_alive

    dead = []
    for f in files:
        try:
            rows = pq.read_table(f, columns=["run_id", "status"]).to_pylist()
        except (FileNotFoundError, pa.ArrowInvalid):
            continue
        dead += [r["run_id"] for r in rows
                 if r["status"] == "running" and not run_alive(layout.run_lock(Path(f).stem))]
    return dead


def _lock_down(con: Any, allowed: list[str], spill_dir: Path | None) -> None:
    """After the views exist: only the listed files may be read, nothing else touched.
    DuckDB's default spill folder is ``.tmp`` in the working directory, which may be the
    store: spill files go to ``spill_dir`` or nowhere."""
    con.execute(f"SET temp_directory = {_literal(str(spill_dir)) if spill_dir else _literal('')}")
    con.execute(f"SET allowed_paths = [{', '.join(_literal(f) for f in allowed)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET lock_configuration = true")


def _footer(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError) as err:
        raise StoreError(f"table is corrupt ({err})", path=path,
                         fix="run `asign check` for the list of problems; delete the file and re-run the "
                             "command that wrote it") from err


def refuse_writes(sql: str, layout: StoreLayout) -> None:
    """Raise QueryRefused unless every statement of ``sql`` only reads."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise _query_error(err, layout) from err
    if not statements:
        raise QueryRefused("query is empty", path=layout.root, fix="pass one SELECT statement")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY_STATEMENTS:
            words = re.sub(r"/\*.*?\*/|--[^\n]*", " ", st.query, flags=re.S).split()  # comments out
            first = words[0].upper() if words and words[0].isalpha() else kind
            raise QueryRefused(f"refused {first} statement: `asign query` only reads the store",
                               path=layout.root,
                               fix="use SELECT (or EXPLAIN); to save a result pass --out FILE "
                                   "(.csv, .json or .parquet)")


def run_query(layout: StoreLayout, sql: str) -> pa.Table:
    import duckdb

    refuse_writes(sql, layout)
    for attempt in range(ATTEMPTS):
        try:
            with tempfile.TemporaryDirectory(prefix="asign-query-") as spill:
                con = connect(layout, Path(spill))
                try:
                    return con.sql(sql).to_arrow_table()
                finally:
                    con.close()
        except duckdb.IOException as err:
            if attempt + 1 == ATTEMPTS:
                raise _query_error(err, layout) from err
            time.sleep(0.05 * (attempt + 1))
        except duckdb.Error as err:
            raise _query_error(err, layout) from err
    raise AssertionError("unreachable")


def _query_error(err: Exception, layout: StoreLayout) -> StoreError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "disabled by configuration" in first or "configuration has been locked" in first:
        return QueryRefused(f"query refused: {first}", path=layout.root,
                            fix="`asign query` reads only the store's views (no other files, settings or extensions)")
    return StoreError(f"query failed: {first}", path=layout.root,
                      fix=f"check the SQL; views: {', '.join(VIEWS)}")



RESULT_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def write_result(table: pa.Table, out: Path, layout: StoreLayout) -> Path:
    """Save a query result to ``out`` atomically: CSV (LF line ends), strict JSON (a list of
    row objects; NaN and ±inf as null) or Parquet, by extension. Never into the store: a
    result file there could replace one of its tables."""
    from asign.store.atomic import atomic_path

    out = Path(out)
    fmt = RESULT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise StoreError(f"unknown result file type {out.suffix or '(none)'!r}", path=out,
                         fix="name the --out file .csv, .json or .parquet")
    layout.require_outside(out, "a query result")
    if out.is_dir():
        raise StoreError("--out is a directory", path=out, fix="pass a file name ending .csv, .json or .parquet")
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, compression="zstd")
        elif fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                write_csv(table, fh)
        else:
            tmp.write_text(strict_json(table.to_pylist()) + "\n", encoding="utf-8")
    return out


def strict_json(value: Any) -> str:
    """JSON that every parser accepts: NaN and ±inf become null (bare ``NaN`` is not JSON:
    jq and JavaScript refuse it), numpy scalars and arrays become Python ones. Used for
    ``--out FILE.json`` and for every ``--json`` output of the CLI."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple | set):
            return [clean(x) for x in v]
        if hasattr(v, "tolist") and not isinstance(v, str | bytes):  # numpy
            return clean(v.tolist())
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(clean(value), indent=1, default=str, allow_nan=False)


def write_csv(table: pa.Table, fh: Any) -> None:
    """``table`` as CSV with LF line ends, as DuckDB's own CLI writes them (csv's default
    CR LF breaks ``... | grep -qx 0`` and friends in a shell)."""
    import csv

    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows([row[c] for c in table.column_names] for row in table.to_pylist())
