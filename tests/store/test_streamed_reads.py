"""Tables that grow with spots × genes are read in pieces (Store.iter_table): the pieces
hold the table's content whatever their size, an older-schema file is upgraded piece by
piece, and a written table's row groups are bounded in bytes, so a piece is too."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asign.schemas import TABLES
from asign.store import open_store
from asign.store import parquet as store_parquet


def _predictions(n_spots: int, n_genes: int, with_bounds: bool, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_spots * n_genes
    value = rng.normal(size=n).astype(np.float32)
    bound = pa.array(value - 1) if with_bounds else pa.nulls(n, pa.float32())
    return pa.table({
        "run_id": ["r"] * n, "fold": np.zeros(n, np.int32), "sample_id": ["S"] * n,
        "section_id": [f"L{i % 3}" for i in range(n_spots) for _ in range(n_genes)],
        "spot_id": [f"s{i}" for i in range(n_spots) for _ in range(n_genes)],
        "gene": [f"g{j}" for _ in range(n_spots) for j in range(n_genes)],
        "value": value, "lower": bound,
        "upper": pa.array(value + 1) if with_bounds else pa.nulls(n, pa.float32()),
    }, schema=TABLES["predictions"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_spots=st.integers(0, 120), n_genes=st.integers(1, 6), with_bounds=st.booleans(),
       part_rows=st.integers(1, 400), batch_rows=st.integers(1, 500), seed=st.integers(0, 9))
def test_pieces_hold_the_whole_table(tmp_path_factory, n_spots, n_genes, with_bounds,
                                     part_rows, batch_rows, seed):
    store = open_store(tmp_path_factory.mktemp("s"), create=True)
    table = _predictions(n_spots, n_genes, with_bounds, seed)
    parts = [table.slice(a, part_rows) for a in range(0, table.num_rows, part_rows)]
    store.write_parts("predictions", parts or [table], key="r")
    whole = store.read("predictions", key="r")
    pieces = list(store.iter_table("predictions", "r", batch_rows=batch_rows,
                                   dictionary=["spot_id", "gene"]))
    assert all(p.num_rows <= batch_rows for p in pieces)
    got = pa.concat_tables([p.cast(TABLES["predictions"]) for p in pieces]) if pieces else \
        TABLES["predictions"].empty_table()
    assert got.equals(whole) and whole.equals(table)
    cols = ["gene", "value"]
    some = list(store.iter_table("predictions", "r", cols, batch_rows=batch_rows))
    assert all(p.column_names == cols for p in some)


def test_an_older_file_is_upgraded_piece_by_piece(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    old = _predictions(30, 4, False, 0).drop_columns(["lower", "upper"])
    old = old.replace_schema_metadata({b"asign.table": b"predictions",
                                       b"asign.schema_version": b"1"})
    path = store.layout.table("predictions", "r")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(old, path)
    pieces = list(store.iter_table("predictions", "r", ["spot_id", "lower"], batch_rows=7))
    assert sum(p.num_rows for p in pieces) == 120
    assert all(p.column("lower").null_count == p.num_rows for p in pieces)


def test_row_groups_are_bounded_in_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_parquet, "ROW_GROUP_BYTES", 2 << 20)
    store = open_store(tmp_path / "s", create=True)
    n, g = 12_000, 100  # 9.6 MB of label lists: about five groups
    rng = np.random.default_rng(0)
    labels = pa.table({
        "sample_id": ["S"] * n, "section_id": ["L1"] * n,
        "spot_id": [f"s{i}" for i in range(n)], "total_count": np.full(n, 7, np.int64),
        "counts": pa.array(list(rng.integers(0, 9, (n, g)).astype(np.int32))),
        "value": pa.array(list(rng.normal(size=(n, g)).astype(np.float32))),
    })
    store.write("labels", labels, key="S")
    meta = pq.ParquetFile(store.layout.table("labels", "S")).metadata
    assert meta.num_row_groups >= 5
    per_group = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert max(per_group) * labels.nbytes / n <= 2 * (2 << 20)
    assert store.read("labels", key="S").equals(labels.cast(TABLES["labels"]))
