"""Contract tests of the store: round trips, versions, atomicity, permissions, views."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asign.errors import SchemaVersionError, StoreError
from asign.schemas import SCHEMA_VERSION, TABLES
from asign.store import Done, EmbeddingRows, open_store


def _example(name: str) -> pa.Table:
    """Two plausible rows for every column of a registered schema."""
    cols = {}
    for f in TABLES[name]:
        t = f.type
        if pa.types.is_string(t):
            cols[f.name] = [f"{f.name}-a", f"{f.name}-b"]
        elif pa.types.is_boolean(t):
            cols[f.name] = [True, False]
        elif pa.types.is_integer(t):
            cols[f.name] = [1, 2]
        elif pa.types.is_floating(t):
            cols[f.name] = [0.5, 1.5]
        elif pa.types.is_timestamp(t):
            cols[f.name] = [pa.scalar(0, type=t).as_py()] * 2
        elif pa.types.is_fixed_size_list(t):
            cols[f.name] = [[float(i) for i in range(t.list_size)]] * 2
        elif pa.types.is_list(t):
            cols[f.name] = [[1, 2, 3], [4, 5, 6]]
        else:
            raise AssertionError(f"no example for {t}")
    return pa.table(
        {k: pa.array(v, type=TABLES[name].field(k).type) for k, v in cols.items()},
        schema=TABLES[name],
    )


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_round_trips(tmp_path, name):
    store = open_store(tmp_path / "s", create=True)
    table = _example(name)
    key = None if name in ("sections", "genes") else "k1"
    store.write(name, table, key=key)
    back = store.read(name, key=key)
    assert back.equals(table)
    meta = pq.read_schema(store.layout.table(name, key)).metadata
    assert meta[b"asign.table"] == name.encode()
    assert int(meta[b"asign.schema_version"]) == SCHEMA_VERSION
    # and through the DuckDB view
    assert store.query(f"select count(*) as n from {name}").column("n")[0].as_py() == 2


def test_newer_schema_version_is_refused(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    path = store.layout.table("genes")
    table = _example("genes")
    newer = table.replace_schema_metadata(
        {b"asign.table": b"genes", b"asign.schema_version": str(SCHEMA_VERSION + 1).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(newer, path)
    with pytest.raises(SchemaVersionError, match="upgrade asign"):
        store.read("genes")


def test_newer_store_manifest_is_refused(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    m = json.loads(store.layout.manifest.read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    store.layout.manifest.write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError):
        open_store(tmp_path / "s")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="asign ingest"):
        open_store(tmp_path / "nothing")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_store_is_refused(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            open_store(root, create=True)
    finally:
        root.chmod(0o700)


def test_failed_write_leaves_previous_file_intact(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    store.write("genes", _example("genes"))
    before = store.layout.table("genes").read_bytes()
    with pytest.raises(ValueError):
        store.write("genes", {"gene": ["x"]})  # missing columns → nothing replaced
    assert store.layout.table("genes").read_bytes() == before
    assert not [p for p in store.layout.tables.iterdir() if p.name.startswith(".")]


def test_lmdb_vectors_round_trip_and_counts(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    vecs = np.arange(12, dtype=np.float16).reshape(3, 4)
    with store.vectors(readonly=False) as v:
        v.put(embeddings=[EmbeddingRows("enc", "spot", [f"s{i}" for i in range(3)], vecs)],
              done=[Done.embeddings("fp", "S_1", "spot", 0)])
    with store.vectors(readonly=True) as v:
        got = v.embeddings("enc", "spot", ["s2", "s0"], 4)
        assert np.array_equal(got, vecs[[2, 0]])
        assert v.count_embeddings("enc", "spot") == 3
        assert v.count_embeddings("enc", "spot", "s2") == 1
        assert v.is_done(Done.embeddings("fp", "S_1", "spot", 0))
        assert not v.is_done(Done.embeddings("fp", "S_1", "spot", 1))
        assert v.count_done() == 1 and v.count_done(patches=True) == 0
        # the marker's key is the one stores have always held
        assert v.entries()[b"done/emb/fp/S_1/spot/0"] == b"1"
        with pytest.raises(StoreError, match="missing"):
            v.embeddings("enc", "spot", ["nope"], 4)


def test_views_exist_when_empty_and_queries_fail_cleanly(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    for view in ("sections", "spots", "genes", "edges", "runs", "metrics", "predictions"):
        assert store.query(f"select * from {view}").num_rows == 0
    with pytest.raises(StoreError, match="query failed"):
        store.query("select no_such_column from spots")
