"""Arrow schemas of every store table, and their version.

Each Parquet file carries ``asign.table`` and ``asign.schema_version`` in its schema
metadata; readers refuse a version newer than ``SCHEMA_VERSION`` (see store.parquet).
Bump ``SCHEMA_VERSION`` whenever a column is added, removed or changes meaning, and say here
what changed; :func:`upgrade` lets files of an older version read as the current one.

- 2: ``predictions.lower`` / ``predictions.upper`` (the conformal interval, train/intervals.py);
  files of version 1 read with those columns null (no interval was computed).
- 3: ``sections.spot_shape`` (disc | square) and ``sections.lattice`` (hex | square), the
  platform's geometry (ingest/readers/base.py); older files read them null = disc, square."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3
STORE_FORMAT = "asign-store"

_str = pa.string()
_f64 = pa.float64()
_f32 = pa.float32()
_i32 = pa.int32()


# Every table, by name, in declaration order (the order of the query views): a table is
# declared once, by its ``_schema`` call below.
TABLES: dict[str, pa.Schema] = {}


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    version = str(SCHEMA_VERSION).encode()
    TABLES[name] = pa.schema(fields, metadata={b"asign.table": name.encode(),
                                               b"asign.schema_version": version})
    return TABLES[name]


SECTIONS = _schema("sections", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("z", _i32, nullable=False),
    pa.field("image_path", _str),
    pa.field("image_sha256", _str),
    pa.field("width", _i32),
    pa.field("height", _i32),
    pa.field("um_per_px", _f64),
    pa.field("spot_diameter_um", _f64, nullable=False),
    pa.field("spot_pitch_um", _f64, nullable=False),
    pa.field("n_spots", _i32, nullable=False),
    pa.field("has_counts", pa.bool_(), nullable=False),
    pa.field("has_image", pa.bool_(), nullable=False),
    pa.field("counts_path", _str),
    pa.field("counts_sha256", _str),
    pa.field("format", _str, nullable=False),
    # aligned x_um, y_um came with the input (aligned elsewhere, e.g. PASTE): the section is
    # placed without an image. Stores written before these columns read them as absent.
    pa.field("has_coords", pa.bool_()),
    pa.field("section_um", _f64),  # spacing between consecutive z, µm (given or assumed)
    pa.field("z_um", _f64),        # z × section_um: the section's position along the stack
    pa.field("spot_shape", _str),  # disc | square (side = spot_diameter_um); null = disc
    pa.field("lattice", _str),     # hex | square: the platform's spot layout; null = square
])

SPOTS = _schema("spots", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("spot_id", _str, nullable=False),
    pa.field("barcode", _str, nullable=False),
    pa.field("z", _i32, nullable=False),
    pa.field("array_x", _i32),
    pa.field("array_y", _i32),
    pa.field("px", _f64),
    pa.field("py", _f64),
    pa.field("x_um", _f64),
    pa.field("y_um", _f64),
    pa.field("is_virtual", pa.bool_(), nullable=False),
])

GENES = _schema("genes", [
    pa.field("gene", _str, nullable=False),
    pa.field("rank", _i32, nullable=False),
    pa.field("mean_count", _f64),
])

LABELS = _schema("labels", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("spot_id", _str, nullable=False),
    pa.field("total_count", pa.int64(), nullable=False),
    pa.field("counts", pa.list_(_i32), nullable=False),
    pa.field("value", pa.list_(_f32), nullable=False),
])

TRANSFORMS = _schema("transforms", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("reference_id", _str, nullable=False),
    pa.field("method", _str, nullable=False),
    pa.field("matrix", pa.list_(_f64, 9), nullable=False),
    pa.field("pair", _str),
    pa.field("ransac_inliers", _i32),
    pa.field("overlap_before", _f64),
    pa.field("overlap_after", _f64),
    pa.field("rotation_deg", _f64),
    pa.field("scale", _f64),
    pa.field("shear", _f64),
    pa.field("flipped", pa.bool_()),
    pa.field("metric", _f64),
    # the registered pair: this section's µm → the neighbour's µm (toward the reference);
    # with --syn the neighbour's deformation field (table ``warps``) follows it
    pa.field("neighbour_id", _str),
    pa.field("pair_matrix", pa.list_(_f64, 9)),
])

WARPS = _schema("warps", [  # --syn only: one displacement field per registered pair
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),   # the moving section
    pa.field("neighbour_id", _str, nullable=False),  # the fixed section; the field lives in its µm
    pa.field("grid", pa.list_(_f64, 9), nullable=False),  # field pixel (col, row, 1) → neighbour µm
    pa.field("height", _i32, nullable=False),
    pa.field("width", _i32, nullable=False),
    pa.field("dx", pa.list_(_f32), nullable=False),  # row-major (height × width), µm
    pa.field("dy", pa.list_(_f32), nullable=False),
])

TILES = _schema("tiles", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("tile_id", _str, nullable=False),
    pa.field("level", _str, nullable=False),
    pa.field("x0", _i32, nullable=False),
    pa.field("y0", _i32, nullable=False),
    pa.field("size_px", _i32, nullable=False),
])

SPOT_TILES = _schema("spot_tiles", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("spot_id", _str, nullable=False),
    pa.field("level", _str, nullable=False),
    pa.field("tile_id", _str, nullable=False),
    pa.field("rank", _i32, nullable=False),  # 0 = the tile containing the spot, 1.. = neighbours
])

EMBEDDINGS = _schema("embeddings", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("encoder", _str, nullable=False),
    pa.field("level", _str, nullable=False),
    pa.field("id", _str, nullable=False),
])

EDGES = _schema("edges", [
    pa.field("sample_id", _str, nullable=False),
    pa.field("src_spot_id", _str, nullable=False),
    pa.field("dst_spot_id", _str, nullable=False),
    pa.field("kind", _str, nullable=False),
    pa.field("weight", _f32, nullable=False),
    pa.field("distance_um", _f32),
    pa.field("iou", _f32),
    pa.field("cosine", _f32),
])

RUNS = _schema("runs", [
    pa.field("run_id", _str, nullable=False),
    pa.field("name", _str, nullable=False),
    pa.field("model", _str, nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("status", _str, nullable=False),
    pa.field("setting", _str, nullable=False),  # within_sample | cross_sample
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("asign_version", _str, nullable=False),
    pa.field("git_commit", _str),
    pa.field("store_hash", _str),
    pa.field("seconds", _f64),
    pa.field("config", _str, nullable=False),  # resolved config as JSON
])

METRICS = _schema("metrics", [
    pa.field("run_id", _str, nullable=False),
    pa.field("fold", _i32, nullable=False),
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("setting", _str, nullable=False),
    pa.field("metric", _str, nullable=False),
    pa.field("value", _f64),
])

PREDICTIONS = _schema("predictions", [
    pa.field("run_id", _str, nullable=False),
    pa.field("fold", _i32, nullable=False),
    pa.field("sample_id", _str, nullable=False),
    pa.field("section_id", _str, nullable=False),
    pa.field("spot_id", _str, nullable=False),
    pa.field("gene", _str, nullable=False),
    pa.field("value", _f32, nullable=False),
    pa.field("lower", _f32),  # the run's interval (runs.config coverage); null: none computed
    pa.field("upper", _f32),
])


def upgrade(table: pa.Table, name: str, columns: list[str] | None = None) -> pa.Table:
    """A table read from a file of an older schema version, as the current version reads:
    columns added since (all nullable) are null; ``columns`` restricts to those asked for."""
    schema = TABLES[name]
    want = columns if columns is not None else schema.names
    n = table.num_rows
    arrays = []
    for col in want:
        if col in table.column_names:
            arrays.append(table.column(col).cast(schema.field(col).type))
        elif col in schema.names and schema.field(col).nullable:
            arrays.append(pa.nulls(n, schema.field(col).type))
        else:
            raise KeyError(f"column {col} is not in table {name}")
    # the current schema (nullability, metadata): concatenates with files of this version
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(c) for c in want],
                                                         metadata=schema.metadata))
