"""DuckDB views over the store's Parquet files (DESIGN §7). Each connection is in-memory
and read-only towards the store, so any number of queries can run beside writers."""

from __future__ import annotations

import glob as _glob
from typing import Any

import pyarrow as pa

from asign.errors import StoreError
from asign.schemas import TABLES
from asign.store.layout import StoreLayout

VIEWS = tuple(TABLES)


def connect(layout: StoreLayout) -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    for name in VIEWS:
        pattern = layout.table_glob(name)
        files = sorted(p for p in _glob.glob(pattern) if not p.rsplit("/", 1)[-1].startswith("."))
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name=true)")
        else:
            con.register(f"_empty_{name}", TABLES[name].empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
    return con


def run_query(layout: StoreLayout, sql: str) -> pa.Table:
    import duckdb

    con = connect(layout)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        raise StoreError(f"query failed: {first}", path=layout.root,
                         fix=f"check the SQL; views: {', '.join(VIEWS)}") from err
    finally:
        con.close()
