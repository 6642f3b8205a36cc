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

import contextlib
import glob as _glob
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from asign.errors import StoreError
from asign.schemas import TABLES
from asign.store.layout import RUN_TABLES, StoreLayout
from asign.store.query_out import strict_json, write_csv, write_result

__all__ = ["connect", "open_result", "run_query", "strict_json", "write_csv", "write_result"]

log = logging.getLogger(__name__)

VIEWS = tuple(TABLES)
BATCH_ROWS = 65_536  # rows per Arrow batch streamed out of DuckDB
MEMORY_FRACTION = 0.25  # of the host's memory (or address-space limit), DuckDB's default 80 %
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
# A table file deleted between listing and reading (Store.remove empties results files
# rather than deleting them, but a user may delete files): list again, a few times.
ATTEMPTS = 5
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


class QueryRefused(StoreError):
    """A statement `asign query` does not run: it would write or change the session."""


def connect(layout: StoreLayout, spill_dir: Path | None = None,
            memory_limit: str | None = None) -> Any:
    """A locked-down in-memory DuckDB connection with one view per table. Every file's
    schema version and size claims are checked first: DuckDB would read a newer one without
    complaint. A results file that fails the check is left out of its view with a warning
    (one run's file must not stop queries over the others); an ingest table that fails it
    makes its own view fail, with the file and the fix, and no other view.
    ``spill_dir``: a private folder (outside the store) for DuckDB's spill files; None:
    no spilling (a query larger than memory fails instead). ``memory_limit``: DuckDB's
    (e.g. "2GB"); default ``MEMORY_FRACTION`` of the host's memory."""
    import duckdb

    con = duckdb.connect(":memory:")
    allowed: list[str] = []
    cache: dict[Path, dict] = {}
    try:
        con.execute(f"SET memory_limit = {_literal(memory_limit or default_memory_limit())}")
        for name in VIEWS:
            files, broken = [], []
            for f in sorted(p for p in _glob.glob(layout.table_glob(name))
                            if not Path(p).name.startswith(".")):
                try:
                    if _vetted(layout, name, Path(f), cache):  # False: removed since listed
                        files.append(f)
                except StoreError as err:
                    if name not in RUN_TABLES:
                        broken.append(err)
                    else:
                        log.warning("%s: %s; left out of the %s view (a stray or damaged results "
                                    "file: delete it, or re-run the `asign train` command that "
                                    "wrote it)", err.path, err.message, name)
            if broken:
                _BROKEN[str(broken[0])] = broken[0]  # raised as itself when the view is read
                con.register(f"_empty_{name}", TABLES[name].empty_table())
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name} "
                            f"WHERE (SELECT error({_literal(str(broken[0]))})) IS NULL")
            elif files:
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
    from asign.store.parquet import VET_ATTEMPTS, check_claims, check_version
    from asign.store.records import check_rows

    for attempt in range(VET_ATTEMPTS):
        meta = _footer(path)
        if meta is None:
            return False
        check_version(meta.schema.to_arrow_schema(), path)
        try:
            if not check_rows(layout, name, path.stem, path, meta.num_rows,
                              cache if attempt == 0 else None):
                check_claims(meta, path)  # not recorded: judged by its size
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
                         fix="run `asign check` for the list of problems; delete the file and "
                             "re-run the command that wrote it") from err


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


def default_memory_limit() -> str:
    """``MEMORY_FRACTION`` of the host's memory, or of the process's address-space limit
    when that is lower (DuckDB's own default, 80 % of RAM, starves a shared host)."""
    from asign.store.parquet import host_memory

    return f"{max(64, int(host_memory() * MEMORY_FRACTION) >> 20)}MiB"


def check_memory_limit(value: str | None) -> list[str]:
    """The problem with a --memory-limit value (none when it is valid or not given)."""
    if value is None or _SIZE.match(value):
        return []
    return [f"--memory-limit {value!r} is not a size such as 512MB or 4GB"]


@contextlib.contextmanager
def open_result(layout: StoreLayout, sql: str, memory_limit: str | None = None
                ) -> Iterator[Result]:
    """The result of read-only ``sql`` as a stream of Arrow batches (``BATCH_ROWS`` rows
    each), so that printing the first rows or writing a file never holds the whole result.
    A table file deleted while the query starts is retried; an error while streaming is
    one StoreError."""
    import duckdb

    refuse_writes(sql, layout)
    with tempfile.TemporaryDirectory(prefix="asign-query-") as spill:
        for attempt in range(ATTEMPTS):
            con = None
            try:
                con = connect(layout, Path(spill), memory_limit)
                reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
                break
            except duckdb.IOException as err:
                if con is not None:
                    con.close()
                if attempt + 1 == ATTEMPTS:
                    raise _query_error(err, layout) from err
                time.sleep(0.05 * (attempt + 1))
            except duckdb.Error as err:
                if con is not None:
                    con.close()
                raise _query_error(err, layout) from err
        try:
            yield Result(reader, layout)
        finally:
            con.close()


class Result:
    """A query's result: its ``schema``, and its batches when iterated (once)."""

    def __init__(self, reader: Any, layout: StoreLayout) -> None:
        self.schema: pa.Schema = reader.schema
        self._reader, self._layout = reader, layout

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import duckdb

        try:
            yield from self._reader
        except duckdb.Error as err:
            raise _query_error(err, self._layout) from err


def run_query(layout: StoreLayout, sql: str, memory_limit: str | None = None) -> pa.Table:
    """The whole result as one table (for callers that need it all; `asign query` streams)."""
    with open_result(layout, sql, memory_limit) as result:
        return pa.Table.from_batches(list(result), result.schema)


# The errors of damaged ingest tables whose views fail when read (connect), by message.
_BROKEN: dict[str, StoreError] = {}


def _query_error(err: Exception, layout: StoreLayout) -> StoreError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    own = _BROKEN.get(first.removeprefix("Invalid Input Error: "))
    if own is not None:
        return own
    if "disabled by configuration" in first or "configuration has been locked" in first:
        return QueryRefused(f"query refused: {first}", path=layout.root,
                            fix="`asign query` reads only the store's views (no other files, "
                                "settings or extensions)")
    if "Out of Memory" in first or "out of memory" in first:
        return StoreError(f"query needs more memory than its limit: {first}", path=layout.root,
                          fix="narrow the query (WHERE, LIMIT, fewer columns), or raise "
                              "--memory-limit")
    return StoreError(f"query failed: {first}", path=layout.root,
                      fix=f"check the SQL; views: {', '.join(VIEWS)}")
