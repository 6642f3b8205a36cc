"""A cut-down copy of the real her2st data in its original layout, for fast tests:
fewer genes, fewer sections and images downsampled by an integer factor (spot pixel
coordinates scaled to match). Built from ../shared/data/her2st, never committed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
from PIL import Image

HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"
IMAGE_NAMES = {"C2": "5714_HE_BT_C2.jpg", "C3": "5714_HE_BT_D1.jpg", "C4": "5714_HE_BT_D2.jpg",
               "C5": "5714_HE_BT_E1.jpg", "C6": "5714_HE_BT_E2.jpg"}


def make_small_her2st(dst: Path, sections: tuple[str, ...] = ("C2", "C3", "C4"), scale: int = 4,
                      n_genes: int = 40, with_c1: bool = False) -> Path:
    """Write a her2st-layout folder at ``dst`` and return it."""
    Image.MAX_IMAGE_PIXELS = None
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs/C"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    names = (("C1",) if with_c1 else ()) + tuple(sections)
    first = pd.read_csv(HER2ST / "ST-cnts" / f"{sections[0]}.tsv.gz", sep="\t", index_col=0)
    genes = first.sum(axis=0).sort_values(ascending=False).index[:n_genes]
    for s in names:
        counts = first if s == sections[0] else pd.read_csv(HER2ST / "ST-cnts" / f"{s}.tsv.gz",
                                                            sep="\t", index_col=0)
        keep = [g for g in genes if g in counts.columns]
        with gzip.open(dst / "ST-cnts" / f"{s}.tsv.gz", "wt") as fh:
            counts[keep].to_csv(fh, sep="\t")
        spots = pd.read_csv(HER2ST / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        spots["pixel_x"] = spots["pixel_x"] / scale
        spots["pixel_y"] = spots["pixel_y"] / scale
        spots.to_csv(dst / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t", index=False)
        if s in IMAGE_NAMES:
            (dst / "ST-imgs" / "C" / s).mkdir(parents=True, exist_ok=True)
            with Image.open(HER2ST / "ST-imgs" / "C" / s / IMAGE_NAMES[s]) as im:
                size = (im.width // scale, im.height // scale)
                im.draft("RGB", size)
                small = im.convert("RGB").resize(size, Image.Resampling.BOX)
                small.save(dst / "ST-imgs" / "C" / s / IMAGE_NAMES[s], quality=90)
    return dst


SMALL_SECTIONS = ("C2", "C3", "C4")
SMALL_INGEST = dict(samples="C", weights="random", batch_size=16)


def small_her2st_store(tmp_path_factory) -> tuple[Path, Path]:
    """(source, store): C2–C4 cut down to 30 genes and its uninterrupted ingest
    (``SMALL_INGEST``), built once per test session and shared by every module that asks
    (cached under the session's base temporary directory). Callers must not modify them."""
    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig

    base = tmp_path_factory.getbasetemp() / "her2st_small_C2-C4"
    src, store, done = base / "her2st", base / "store", base / "complete"
    if not done.exists():
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        make_small_her2st(src, sections=SMALL_SECTIONS, n_genes=30)
        ingest_run(IngestConfig(sources=(src,), store=store, **SMALL_INGEST))
        done.touch()
    return src, store
