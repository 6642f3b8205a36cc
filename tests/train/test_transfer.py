"""The cross-patient check (``--test-samples``): its plan, its refusals, and a cut-down real
run (her2st C2–C3 train, B4 predicted from its image alone, few genes)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from her2st_small import HER2ST, make_small_her2st

from asign.errors import ConfigError, ConfigErrors
from asign.train import protocol
from asign.train.config import TrainConfig, validate
from asign.train.protocol import SectionInfo


def _sections() -> list[SectionInfo]:
    c = [SectionInfo("C", f"C{z}", z, True, True) for z in (2, 3, 4)]
    return [*c, SectionInfo("C", "C1", 1, True, False), SectionInfo("B", "B4", 4, True, True)]


def test_plan_trains_on_every_labelled_section_and_gives_the_test_sample_no_known_layer():
    (fold,) = protocol.plan_transfer(_sections(), test_samples=("B",))
    plans = {p.sample_id: p for p in fold.samples}
    assert fold.setting == "cross_patient"
    assert plans["C"].role == "train" and plans["C"].visible == ("C2", "C3", "C4")
    b = plans["B"]
    assert b.role == "test" and b.visible == () and b.knowns == () and b.known is None
    assert b.scored == ("B4",) and b.predicted == ("B4",)
    with pytest.raises(ConfigError, match="--test-samples Z: not in the store"):
        protocol.plan_transfer(_sections(), test_samples=("Z",))
    with pytest.raises(ConfigError, match="no sample with labelled"):
        protocol.plan_transfer(_sections(), test_samples=("B", "C"))


@pytest.mark.parametrize("model", ["asign3d", "idw", "ridge+idw", "cli"])
def test_models_that_need_a_known_layer_are_refused_in_one_line(tmp_path, model):
    cfg = TrainConfig(store=tmp_path, model=model, test_samples=("B",))
    with pytest.raises(ConfigErrors) as err:
        validate(cfg)
    msg = str(err.value)
    assert f"--model {model} needs a known layer" in msg and "\n" not in msg
    for ok in ("mean", "similarity", "ridge", "asign2d"):
        validate(TrainConfig(store=tmp_path, model=ok, test_samples=("B",)))
    assert TrainConfig(store=tmp_path, model="mean", test_samples=("B",)).setting == \
        "cross_patient"


def _small_c_and_b4(dst: Path, scale: int = 8, n_genes: int = 12) -> Path:
    """C2–C3 and B4 cut down (few genes, images downsampled), her2st layout."""
    from PIL import Image

    make_small_her2st(dst, sections=("C2", "C3"), scale=scale, n_genes=n_genes)
    genes = pd.read_csv(dst / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0).columns
    counts = pd.read_csv(HER2ST / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
    keep = [g for g in genes if g in counts.columns]
    with gzip.open(dst / "ST-cnts" / "B4.tsv.gz", "wt") as fh:
        counts[keep].to_csv(fh, sep="\t")
    spots = pd.read_csv(HER2ST / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    spots[["pixel_x", "pixel_y"]] = spots[["pixel_x", "pixel_y"]] / scale
    spots.to_csv(dst / "ST-spotfiles" / "B4_selection.tsv", sep="\t", index=False)
    image = next((HER2ST / "ST-imgs" / "B" / "B4").glob("*.jpg"))
    (dst / "ST-imgs" / "B" / "B4").mkdir(parents=True)
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(image) as im:
        size = (im.width // scale, im.height // scale)
        im.draft("RGB", size)
        im.convert("RGB").resize(size, Image.Resampling.BOX).save(
            dst / "ST-imgs" / "B" / "B4" / image.name, quality=90)
    return dst


@pytest.mark.slow
def test_c_to_b4_runs_end_to_end_and_scores_b4_only(tmp_path):
    if not (HER2ST / "ST-cnts" / "B4.tsv.gz").exists():
        pytest.skip("her2st B4 not available")
    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig
    from asign.store import open_store
    from asign.train import run

    src = _small_c_and_b4(tmp_path / "her2st")
    store = tmp_path / "store"
    # C's panel given explicitly, as the bench does: B4's counts never choose a gene
    genes = tuple(pd.read_csv(src / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0).columns)
    ingest_run(IngestConfig(sources=(src,), store=store, samples="C", extra_2d=("B",),
                            genes=genes, weights="random", batch_size=16, threads=1))
    # each sample's images were stain-normalised to its own reference, and both are recorded
    stain = open_store(store).embedding_info().extra["stain_norm"]
    assert stain["method"] == "macenko" and set(stain["samples"]) == {"B", "C"}
    assert stain["samples"]["B"]["reference_section"] == "B4"
    assert stain["samples"]["C"]["sha256"] != stain["samples"]["B"]["sha256"]
    scores = {}
    for model in ("mean", "ridge", "asign2d"):
        cfg = TrainConfig(store=store, model=model, run=f"x-{model}", samples=("C",),
                          test_samples=("B",), epochs=2, hidden=16, heads=2, threads=1)
        result = run(cfg)
        assert result.status == "done" and result.setting == "cross_patient"
        m = result.metrics.to_pandas()
        assert set(m.section_id) == {"B4"} and set(m.setting) == {"cross_patient"}
        values = dict(zip(m.metric, m.value, strict=True))
        assert values["n_genes"] == len(genes) and values["n_spots"] > 100
        assert np.isfinite(values["mse"])
        scores[model] = values
    # the mean profile is C's: the same for every B4 spot, so no PCC per gene
    assert not np.isfinite(scores["mean"]["pcc_gene"])
    assert np.isfinite(scores["ridge"]["pcc_gene"])
    con = open_store(store).duckdb()
    try:
        sections = {r[0] for r in con.execute("select distinct section_id from predictions")
                    .fetchall()}
    finally:
        con.close()
    assert sections == {"B4"}
    shutil.rmtree(src)
