"""Visium before/after: ingest (register step) the same Space Ranger fixture (the reader
tests' writer, with her2st thumbnails as hires images) with the hand-written parser of
commit 2833293c3b and with spatialdata-io's, then compare every table by content.
Run from the repository root: ``.venv/bin/python bench/visium_before_after.py``. It swaps
ingest/readers/visium.py for the run and restores it."""
import sys, shutil, subprocess
from pathlib import Path
import pandas as pd
sys.path.insert(0, "tests/ingest"); sys.path.insert(0, "tests")
from test_readers_visium import write_section
root = Path("/tmp/asign_visium_before_after")
shutil.rmtree(root, ignore_errors=True)
from PIL import Image
from her2st_small import HER2ST, IMAGE_NAMES
Image.MAX_IMAGE_PIXELS = None
for i, (n, c) in enumerate(zip(["S1", "S2", "S3"], ["C2", "C3", "C4"])):
    write_section(root / "BLOCK" / n, seed=i, variant="h5")
    hires = root / "BLOCK" / n / "outs" / "spatial" / "tissue_hires_image.png"
    size = Image.open(hires).size
    with Image.open(HER2ST / "ST-imgs" / "C" / c / IMAGE_NAMES[c]) as im:
        im.draft("RGB", (im.width // 8, im.height // 8))
        im.convert("RGB").resize(size).save(hires)
def ingest(store):
    subprocess.run([".venv/bin/asign", "ingest", str(root / "BLOCK"), "--store", str(store),
                    "--steps", "register", "--weights", "random"], check=True,
                   capture_output=True)
new = Path("ingest/readers/visium.py")
keep = new.read_text()
ingest(root / "after")
new.write_text(subprocess.run(["git", "show", "2833293c3b7cefabab111e913d0667fb7a698177:ingest/readers/visium.py"],
                              check=True, capture_output=True, text=True).stdout)
try:
    ingest(root / "before")
finally:
    new.write_text(keep)
def tables(store):
    out = {}
    for p in sorted((store / "tables").rglob("*.parquet")):
        df = pd.read_parquet(p)
        df = df.drop(columns=[c for c in df.columns if c in ("created_at",)])
        out[str(p.relative_to(store))] = df.sort_values(list(df.columns[:3])).reset_index(drop=True)
    return out
a, b = tables(root / "before"), tables(root / "after")
assert a.keys() == b.keys(), (a.keys(), b.keys())
for k in a:
    x, y = a[k], b[k]
    for c in x.columns:
        if x[c].dtype == object and len(x) and hasattr(x[c].iloc[0], "__len__") and not isinstance(x[c].iloc[0], str):
            x[c] = x[c].map(list); y[c] = y[c].map(list)
    pd.testing.assert_frame_equal(x, y)
    print(f"{k}: {len(x)} rows × {len(x.columns)} columns identical")
