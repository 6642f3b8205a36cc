"""Label vectors are as wide as the gene panel (store/labels.py): the one check that
training and the report both read through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asign.errors import StoreError
from asign.store import open_store
from asign.store.labels import dense_rows


@settings(max_examples=80, deadline=None)
@given(width=st.integers(1, 6),
       lengths=st.lists(st.one_of(st.none(), st.integers(0, 8)), min_size=0, max_size=12),
       seed=st.integers(0, 2**16))
def test_dense_rows_refuses_every_row_not_of_the_panel_width(width, lengths, seed):
    rng = np.random.default_rng(seed)
    rows = [None if n is None else rng.normal(size=n).tolist() for n in lengths]
    column = pa.chunked_array([pa.array(rows, pa.list_(pa.float32()))])
    path = Path("store/tables/labels/S.parquet")
    if all(n == width for n in lengths):
        out = dense_rows(column, width, path)
        assert out.shape == (len(rows), width) and out.dtype == np.float32
        np.testing.assert_array_equal(out, np.asarray(rows, np.float32).reshape(-1, width))
    else:
        with pytest.raises(StoreError) as err:
            dense_rows(column, width, path)
        assert "S.parquet" in str(err.value) and "ingest --steps register" in str(err.value)


@pytest.mark.parametrize("damage", ["short", "long", "null"])
def test_training_refuses_labels_off_the_panel(toy_store, damage):
    """One label vector off the panel's width, in a store whose records were rewritten to
    match (a buggy writer): training stops with a one-line error naming the file."""
    from asign.report.data import load_run_data
    from asign.train import TrainConfig, run
    from asign.train.data import load_sample

    assert run(TrainConfig(store=toy_store, model="idw", run="r")).status == "done"
    store = open_store(toy_store)
    path = store.layout.table("labels", "S1")
    table = pq.read_table(path)
    values = table.column("value").to_pylist()
    values[3] = {"short": values[3][:-1], "long": values[3] + [0.0], "null": None}[damage]
    i = table.schema.get_field_index("value")
    table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    pq.write_table(table, path)
    store.save_manifest(store.manifest())  # records follow the damaged file
    with pytest.raises(StoreError, match="label vectors do not match the gene panel") as err:
        load_sample(open_store(toy_store), "S1")
    assert "S1.parquet" in str(err.value) and "ingest --steps register" in str(err.value)
    # the report reads labels through the same check; a run made before the damage is
    # refused first, as stale, naming the file
    with pytest.raises(StoreError, match="labels/S1.parquet"):
        load_run_data(open_store(toy_store), "r")
