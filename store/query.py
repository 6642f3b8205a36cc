"""DuckDB views over the store's Parquet files (DESIGN §7). Each connection is in-memory
and read-only towards the store, so any number of queries can run beside writers."""

from __future__ import annotations

import glob as _glob
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


def connect(layout: StoreLayout) -> Any:
    """An in-memory DuckDB connection with one view per table. Every file's schema version
    is checked first: DuckDB would read a newer one without complaint."""
    import duckdb

    from asign.store.parquet import check_version

    con = duckdb.connect(":memory:")
    try:
        for name in VIEWS:
            files = []
            for f in sorted(p for p in _glob.glob(layout.table_glob(name)) if not Path(p).name.startswith(".")):
                schema = _footer_schema(Path(f))
                if schema is not None:  # None: removed since listed (a run replaced it)
                    check_version(schema, Path(f))
                    files.append(f)
            if files:
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name=true)")
            else:
                con.register(f"_empty_{name}", TABLES[name].empty_table())
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
    except BaseException:
        con.close()
        raise
    return con


def _footer_schema(path: Path) -> pa.Schema | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError) as err:
        raise StoreError(f"table is corrupt ({err})", path=path,
                         fix="run `asign check` for the list of problems; delete the file and re-run the "
                             "command that wrote it") from err


def run_query(layout: StoreLayout, sql: str) -> pa.Table:
    import duckdb

    for attempt in range(ATTEMPTS):
        con = None
        try:
            con = connect(layout)
            return con.sql(sql).to_arrow_table()
        except duckdb.IOException as err:
            if attempt + 1 == ATTEMPTS:
                raise _query_error(err, layout) from err
            time.sleep(0.05 * (attempt + 1))
        except duckdb.Error as err:
            raise _query_error(err, layout) from err
        finally:
            if con is not None:
                con.close()
    raise AssertionError("unreachable")


def _query_error(err: Exception, layout: StoreLayout) -> StoreError:
    first = str(err).strip().splitlines()[0]
    return StoreError(f"query failed: {first}", path=layout.root,
                      fix=f"check the SQL; views: {', '.join(VIEWS)}")
