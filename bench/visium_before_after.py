"""Visium before/after: ingest (register step) the same Space Ranger fixture (the reader
tests' writer, with her2st thumbnails as hires images) with the hand-written parser of
commit 2833293c3b and with spatialdata-io's, then compare every table by content.

Run from the repository root: ``.venv/bin/python bench/visium_before_after.py``. It swaps
ingest/readers/visium.py for the run and restores it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

BEFORE = "2833293c3b7cefabab111e913d0667fb7a698177"
ROOT = Path("/tmp/asign_visium_before_after")


def _fixture() -> Path:
    sys.path[:0] = ["tests/ingest", "tests"]
    from her2st_small import HER2ST, IMAGE_NAMES
    from test_readers_visium import write_section

    Image.MAX_IMAGE_PIXELS = None
    shutil.rmtree(ROOT, ignore_errors=True)
    for i, (name, c) in enumerate(zip(["S1", "S2", "S3"], ["C2", "C3", "C4"], strict=True)):
        write_section(ROOT / "BLOCK" / name, seed=i, variant="h5")
        hires = ROOT / "BLOCK" / name / "outs" / "spatial" / "tissue_hires_image.png"
        size = Image.open(hires).size
        with Image.open(HER2ST / "ST-imgs" / "C" / c / IMAGE_NAMES[c]) as im:
            im.draft("RGB", (im.width // 8, im.height // 8))
            im.convert("RGB").resize(size).save(hires)
    return ROOT / "BLOCK"


def _ingest(src: Path, store: Path) -> None:
    subprocess.run([".venv/bin/asign", "ingest", str(src), "--store", str(store), "--steps",
                    "register", "--weights", "random"], check=True, capture_output=True)


def _tables(store: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for p in sorted((store / "tables").rglob("*.parquet")):
        df = pd.read_parquet(p)
        for c in df.columns:  # array cells (labels' counts) compare as lists
            if len(df) and isinstance(df[c].iloc[0], np.ndarray):
                df[c] = df[c].map(list)
        out[str(p.relative_to(store))] = df.sort_values(list(df.columns[:3])).reset_index(
            drop=True)
    return out


def main() -> None:
    src = _fixture()
    reader = Path("ingest/readers/visium.py")
    current = reader.read_text()
    _ingest(src, ROOT / "after")
    old = subprocess.run(["git", "show", f"{BEFORE}:ingest/readers/visium.py"], check=True,
                         capture_output=True, text=True).stdout
    reader.write_text(old)
    try:
        _ingest(src, ROOT / "before")
    finally:
        reader.write_text(current)
    a, b = _tables(ROOT / "before"), _tables(ROOT / "after")
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
        print(f"{name}: {len(a[name])} rows × {len(a[name].columns)} columns identical")


if __name__ == "__main__":
    main()
