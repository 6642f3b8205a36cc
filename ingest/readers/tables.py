"""Counts and spot tables: parse delimited or Parquet files and refuse bad values (NaN,
negative, non-integer, duplicate ids, spot ids the spot table does not know) with a one-line
CountsError that names the file."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from asign.errors import CountsError, InputError

_INT32_MAX = np.iinfo(np.int32).max
# Rows per chunk of a wide table: keeps a 5k-spot × 30k-gene dense table out of memory.
_CHUNK_VALUES = 20_000_000
_FIX_VALUES = "counts must be raw non-negative integer UMI counts (no NaN, no normalised values)"


@dataclass(frozen=True)
class CountsTable:
    """A spots × genes count matrix as read from one file (rows in file order)."""

    path: Path
    spot_ids: tuple[str, ...]
    genes: tuple[str, ...]
    matrix: sp.csr_matrix  # int32
    total: np.ndarray  # int64 per spot, over all genes


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _header(path: Path, error: type[InputError] = CountsError) -> tuple[list[str], str]:
    """Column names and delimiter (tab if the header has one, else comma)."""
    try:
        with _open_text(path) as fh:
            line = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise error(
            f"cannot read table ({err})", path=path, fix="check the file is a text or gzipped table"
        ) from err
    if not line:
        raise error("table is empty", path=path, fix="write a header row and one row per spot")
    sep = "\t" if "\t" in line else ","
    return [c.strip().strip('"') for c in line.split(sep)], sep


def check_unique(ids: Sequence[str], path: Path, what: str) -> None:
    s = pd.Index(ids)
    dup = s[s.duplicated()].unique()
    if len(dup):
        shown = ", ".join(map(str, dup[:3]))
        raise CountsError(
            f"{len(dup)} duplicate {what}(s), e.g. {shown}",
            path=path,
            fix=f"every {what} must appear once",
        )


def check_values(
    values: np.ndarray, path: Path, rows: Sequence[str], cols: Sequence[str]
) -> np.ndarray:
    """Validate a dense block of counts and return it as int32."""

    def where(mask: np.ndarray) -> str:
        r, c = np.argwhere(mask)[0]
        return f"{int(mask.sum())} value(s), first at spot {rows[r]} gene {cols[c]}"

    if values.dtype.kind == "O":
        num = pd.DataFrame(values).apply(pd.to_numeric, errors="coerce").to_numpy(float)
        bad = np.isnan(num) & pd.notna(values)
        if bad.any():
            raise CountsError(f"non-numeric counts: {where(bad)}", path=path, fix=_FIX_VALUES)
        values = num
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            raise CountsError(f"NaN or empty counts: {where(nan)}", path=path, fix=_FIX_VALUES)
    if values.dtype.kind == "b":
        raise CountsError("counts are boolean", path=path, fix=_FIX_VALUES)
    neg = values < 0
    if neg.any():
        raise CountsError(f"negative counts: {where(neg)}", path=path, fix=_FIX_VALUES)
    if values.dtype.kind == "f":
        frac = values != np.floor(values)
        if frac.any():
            raise CountsError(f"non-integer counts: {where(frac)}", path=path, fix=_FIX_VALUES)
    if values.size and values.max() > _INT32_MAX:
        raise CountsError("a count exceeds 2^31-1", path=path, fix=_FIX_VALUES)
    return values.astype(np.int32, copy=False)


def check_sparse(matrix: sp.csr_matrix, path: Path) -> sp.csr_matrix:
    """Validate the stored values of a sparse count matrix and return it as int32 CSR."""
    data = matrix.data
    if data.dtype.kind == "f":
        if np.isnan(data).any():
            raise CountsError("NaN counts in matrix", path=path, fix=_FIX_VALUES)
        if (data != np.floor(data)).any():
            raise CountsError("non-integer counts in matrix", path=path, fix=_FIX_VALUES)
    if data.size and data.min() < 0:
        raise CountsError("negative counts in matrix", path=path, fix=_FIX_VALUES)
    if data.size and data.max() > _INT32_MAX:
        raise CountsError("a count exceeds 2^31-1", path=path, fix=_FIX_VALUES)
    out = sp.csr_matrix(matrix, dtype=np.int32)
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _from_frame(df: pd.DataFrame, path: Path) -> tuple[list[str], sp.csr_matrix]:
    ids = df.iloc[:, 0].astype(str).tolist()
    genes = [str(c) for c in df.columns[1:]]
    values = check_values(df.iloc[:, 1:].to_numpy(), path, ids, genes)
    return ids, sp.csr_matrix(values)


_NA = ["", "NA", "NaN", "nan"]


def _parse_block(
    bodies: list[str], ids: list[str], sep: str, genes: list[str], path: Path
) -> sp.csr_matrix:
    """Parse the value fields of a block of rows as ONE column: pandas' C parser then
    builds one array instead of one Series per gene (3x faster for 15k genes).
    A sentinel value keeps an empty last field from being swallowed as a trailing newline."""
    text = "\n".join(bodies).replace(sep, "\n") + "\n0"
    col = pd.read_csv(
        io.StringIO(text),
        header=None,
        names=["v"],
        engine="c",
        na_values=_NA,
        keep_default_na=False,
        skip_blank_lines=False,
    )["v"].to_numpy()[:-1]
    values = check_values(col.reshape(len(bodies), len(genes)), path, ids, genes)
    return sp.csr_matrix(values)


def _read_delimited(path: Path) -> tuple[list[str], list[str], sp.csr_matrix]:
    names, sep = _header(path)
    ids: list[str] = []
    parts: list[sp.csr_matrix] = []
    bodies: list[str] = []
    genes: list[str] | None = None
    try:
        with _open_text(path) as fh:
            fh.readline()
            for lineno, raw in enumerate(fh, start=2):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                n_fields = line.count(sep) + 1
                if genes is None:
                    # R's write.table omits the row-name header cell: then every header
                    # cell is a gene.
                    genes = names if n_fields == len(names) + 1 else names[1:]
                    if not genes:
                        raise CountsError(
                            "counts table has no gene columns",
                            path=path,
                            fix="first column spot id, then one column per gene",
                        )
                    check_unique(genes, path, "gene column")
                    block_rows = max(1, _CHUNK_VALUES // len(genes))
                if n_fields != len(genes) + 1:
                    raise CountsError(
                        f"line {lineno} has {n_fields} fields but the header names {len(genes)} "
                        "genes",
                        path=path,
                        fix="every row needs a spot id and one value per gene",
                    )
                sid, _, body = line.partition(sep)
                ids.append(sid.strip().strip('"'))
                bodies.append(body)
                if len(bodies) == block_rows:
                    parts.append(_parse_block(bodies, ids[-len(bodies) :], sep, genes, path))
                    bodies = []
    except (UnicodeDecodeError, EOFError, OSError, pd.errors.ParserError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CountsError(
            f"cannot read counts table ({msg})", path=path, fix="re-export the counts table"
        ) from err
    if genes is None:
        genes = names[1:]
    if bodies:
        parts.append(_parse_block(bodies, ids[-len(bodies) :], sep, genes, path))
    matrix = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(genes)))
    return ids, genes, matrix


def read_counts_table(path: Path) -> CountsTable:
    """Wide table, one row per spot: first column the spot id, then one column per gene.
    Delimited text (CSV/TSV, optionally gzipped) or Parquet."""
    path = Path(path)
    if not path.is_file():
        raise CountsError("counts file not found", path=path, fix="check the counts path")
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        try:
            df = pq.read_table(path).to_pandas()
        except (OSError, ValueError) as err:
            raise CountsError(
                f"cannot read Parquet ({err})", path=path, fix="re-export the counts table"
            ) from err
        if df.shape[1] < 2:
            raise CountsError(
                "counts table has no gene columns",
                path=path,
                fix="first column spot id, then one column per gene",
            )
        check_unique([str(c) for c in df.columns[1:]], path, "gene column")
        ids, blocks = _from_frame(df, path)
        genes = [str(c) for c in df.columns[1:]]
        matrix = blocks
    else:
        ids, genes, matrix = _read_delimited(path)
    if not ids:
        raise CountsError("counts table has no spots", path=path, fix="write one row per spot")
    check_unique(ids, path, "spot id")
    matrix = sp.csr_matrix(matrix, dtype=np.int32)
    total = np.asarray(matrix.sum(axis=1, dtype=np.int64)).ravel()
    return CountsTable(
        path=path, spot_ids=tuple(ids), genes=tuple(genes), matrix=matrix, total=total
    )


def match_counts_to_spots(
    table: CountsTable, spot_ids: Sequence[str], spot_path: Path
) -> np.ndarray:
    """Row of the spot table for every counts row; an unknown spot id is an error that names
    both files."""
    index = pd.Index(spot_ids)
    pos = index.get_indexer(list(table.spot_ids))
    missing = [table.spot_ids[i] for i in np.flatnonzero(pos < 0)]
    if missing:
        shown = ", ".join(missing[:3])
        raise CountsError(
            f"{len(missing)} spot id(s) in counts are absent from the spot table {spot_path} (e.g. "
            f"{shown})",
            path=table.path,
            fix="use the spot table that belongs to this counts file, or remove those rows",
        )
    return pos


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A small delimited (CSV/TSV, optionally gzipped) or Parquet table with a header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path=path, fix=f"check the {what} path")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pandas()
        _, sep = _header(path, InputError)
        return pd.read_csv(path, sep=sep, engine="c")
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        ValueError,
    ) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"cannot parse {what} ({msg})",
            path=path,
            fix=f"write the {what} as CSV/TSV with a header row",
        ) from err
