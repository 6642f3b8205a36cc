"""One small file cannot take a shared store down, and no query can take the host down:
a stray or damaged results file is left out of its view with a warning (check names it);
a damaged ingest table fails only the queries that read it; a footer's or an image
header's size claims are checked before anything is decoded, recorded or not; DuckDB runs
under a memory limit; a table prints at most --max-rows rows while --out streams them all."""

from __future__ import annotations

import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_errors import one_error
from typer.testing import CliRunner

from asign.cli import app
from asign.errors import ImageError, StoreError
from asign.schemas import TABLES
from asign.store import open_store
from asign.store.codecs import decode_patch
from asign.store.parquet import read_table
from asign.store.thumbnails import Thumbnail

runner = CliRunner()


def cli(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def _query(store, sql, *extra):
    return cli("query", "--store", store, sql, "-f", "csv", *extra)


def test_two_byte_junk_in_results_is_left_out_with_a_warning(toy_store):
    junk = toy_store / "results" / "predictions" / "junk.parquet"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"xx")
    n_spots = open_store(toy_store).read("spots").num_rows
    code, out, err = _query(toy_store, "select count(*) n from spots")
    assert code == 0 and out.splitlines() == ["n", str(n_spots)], err
    assert f"{junk}: table is corrupt" in err and "left out of the predictions view" in err
    code, out, err = _query(toy_store, "select count(*) n from predictions")
    assert code == 0 and out.splitlines() == ["n", "0"], err
    code, _, err = cli("check", "--store", toy_store)
    corrupt = [ln for ln in err.splitlines() if ln.startswith(f"problem: {junk}: table is corrupt")]
    assert code == 1 and len(corrupt) == 1, err
    assert "re-run the `asign train` command" in corrupt[0] and "ingest" not in corrupt[0]
    junk.unlink()
    code, _, err = cli("check", "--store", toy_store)
    assert code == 0, err


def test_a_damaged_ingest_table_fails_only_its_own_view(toy_store):
    part = toy_store / "tables" / "spots" / "B.parquet"
    part.write_bytes(b"PAR1")
    code, out, err = _query(toy_store, "select count(*) n from genes")
    assert code == 0 and int(out.splitlines()[1]) > 0, err
    line = one_error(*cli("query", "--store", toy_store, "select count(*) from spots")[::2])
    assert str(part) in line and "corrupt" in line


def _stranger(path, rows: int) -> None:
    """A results file not written by asign (no write record): the predictions schema, one
    row repeated ``rows`` times, a few kB on disk."""
    schema = TABLES["predictions"]
    cols = {f.name: pa.repeat(pa.scalar("x" if pa.types.is_string(f.type) else 0, f.type), rows)
            for f in schema}
    pq.write_table(pa.table(cols, schema=schema), path, compression="zstd", row_group_size=rows,
                   data_page_size=1 << 30)


def test_unrecorded_footer_claims_are_judged_by_the_file_size(toy_store):
    path = toy_store / "results" / "predictions" / "stranger.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    _stranger(path, 5_000_000)
    assert path.stat().st_size < 200_000
    with pytest.raises(StoreError, match="claims 5000000 rows in a file of"):
        read_table(path)
    code, out, err = _query(toy_store, "select count(*) n from predictions")
    assert code == 0 and out.splitlines() == ["n", "0"], err
    assert "claims 5000000 rows" in err
    _stranger(path, 1000)  # plausible: read (check reports it as unrecorded, not here)
    assert read_table(path).num_rows == 1000


def test_a_table_shows_max_rows_and_out_streams_them_all(toy_store, tmp_path):
    n = open_store(toy_store).read("spots").num_rows
    r = runner.invoke(app, ["query", "--store", str(toy_store), "select spot_id from spots",
                            "--max-rows", "5"])
    assert r.exit_code == 0, r.stderr
    assert sum(" S1" in ln or " B" in ln for ln in r.stdout.splitlines()) == 5
    assert "showing the first 5 rows; pass --out FILE" in r.stderr
    for suffix in (".csv", ".json", ".parquet"):
        out = tmp_path / f"all{suffix}"
        code, _, err = cli("query", "--store", toy_store, "select spot_id from spots", "--out", out)
        assert code == 0 and f"{n} row(s) written" in err, err
    assert len((tmp_path / "all.csv").read_text().splitlines()) == n + 1
    assert pq.read_table(tmp_path / "all.parquet").num_rows == n
    import json

    assert len(json.loads((tmp_path / "all.json").read_text())) == n
    code, out, _ = _query(toy_store, "select spot_id from spots")  # csv on stdout: all rows
    assert len(out.splitlines()) == n + 1


def test_duckdb_runs_under_a_memory_limit(toy_store):
    from asign.store.parquet import host_memory

    code, out, err = _query(toy_store, "select current_setting('memory_limit') m")
    assert code == 0, err
    shown = out.splitlines()[1]
    value, unit = float(shown.split()[0]), shown.split()[1]
    limit = value * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert limit <= 0.26 * host_memory()  # DuckDB's own default would be 80 %
    code, out, err = _query(toy_store, "select current_setting('memory_limit') m", "--memory-limit",
                            "100MB")
    shown = out.splitlines()[1]
    assert code == 0 and "MiB" in shown and float(shown.split()[0]) < 100
    line = one_error(*_query(toy_store, "select 1", "--memory-limit", "lots")[::2])
    assert "--memory-limit 'lots'" in line


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height, followed by a tiny IDAT: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_image_headers_are_checked_before_decoding(tmp_path):
    with pytest.raises(ImageError, match="claims 5000×5000 px"):
        decode_patch(_png_header(5000, 5000))
    thumb = tmp_path / "t.png"
    thumb.write_bytes(_png_header(8000, 8000))
    with pytest.raises(ImageError, match="thumbnail claims 8000×8000 px"):
        Thumbnail(thumb, 8.0).read()
    thumb.write_bytes(_png_header(64, 64))  # plausible, but its pixels are truncated
    with pytest.raises(ImageError, match="not a readable image"):
        Thumbnail(thumb, 8.0).read()
