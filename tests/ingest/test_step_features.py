"""patches/embed steps: spot patches are stored at the encoder's input size."""

from __future__ import annotations

import shutil

import pytest
from her2st_small import HER2ST, SMALL_INGEST, small_her2st_store

from asign.ingest import run as ingest_run
from asign.ingest.config import IngestConfig
from asign.store import open_store

pytestmark = pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")


def test_small_encoder_stores_patches_at_its_input_size(tmp_path_factory, tmp_path):
    src, master = small_her2st_store(tmp_path_factory)
    store_path = tmp_path / "store"
    shutil.copytree(master, store_path)
    summary = ingest_run(IngestConfig(sources=(src,), store=store_path,
                                      **{**SMALL_INGEST, "encoder": "resnet18-l3-64"}))
    assert summary["ran"] == ["C:patches", "C:embed", "C:graph"]  # register, align reused
    store = open_store(store_path)
    embed = store.manifest()["params"]["embed"]
    assert (embed["encoder"], embed["dim"], embed["stored_px"]) == ("resnet18-l3-64", 256, 64)
    spot = store.query("SELECT spot_id FROM spots LIMIT 1").column("spot_id")[0].as_py()
    with store.vectors(readonly=True) as vec:
        assert vec.get_patches([spot]).shape == (1, 64, 64, 3)


def test_streamed_spot_level_equals_separate_steps(tmp_path_factory, tmp_path, caplog):
    """patches+embed in one run (spot crops go straight to the encoder, PNGs stored beside
    the vectors: ingest/spot_stream.py) writes the very LMDB entries that the two steps run
    separately write (cut → PNG → LMDB, then PNG decode → encoder): patches, vectors, markers."""
    import logging

    from store_compare import lmdb_entries

    src, master = small_her2st_store(tmp_path_factory)
    # a new patch size: both steps re-run; the spot level streams only unnormalised images (a
    # stain reference is fitted on the stored patches first)
    cfg = {**SMALL_INGEST, "encoder": "resnet18-l3-64", "stain_norm": "none"}
    streamed, separate = tmp_path / "streamed", tmp_path / "separate"
    shutil.copytree(master, streamed)
    shutil.copytree(master, separate)
    with caplog.at_level(logging.INFO, logger="asign.ingest.spot_stream"):
        ingest_run(IngestConfig(sources=(src,), store=streamed, steps=("patches", "embed"), **cfg))
    assert "spot level streamed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asign.ingest.spot_stream"):
        ingest_run(IngestConfig(sources=(src,), store=separate, steps=("patches",), **cfg))
        ingest_run(IngestConfig(sources=(src,), store=separate, steps=("embed",), **cfg))
    assert "spot level streamed" not in caplog.text
    a, b = lmdb_entries(streamed), lmdb_entries(separate)
    assert sum(k.startswith(b"patch/") for k in a) > 100
    assert sum(k.startswith(b"emb/resnet18-l3-64/spot/") for k in a) > 100
    assert a == b


@pytest.mark.slow
def test_histo_classic_is_zscored_with_the_reference_section(tmp_path_factory, tmp_path):
    """A standardised encoder's spot vectors of the reference section (the panel layer,
    C2) have mean 0 / std 1 per feature; other sections are mapped by the same map."""
    import numpy as np

    src, master = small_her2st_store(tmp_path_factory)
    store_path = tmp_path / "store"
    shutil.copytree(master, store_path)
    summary = ingest_run(IngestConfig(sources=(src,), store=store_path, steps=("embed", "graph"),
                                      **{**SMALL_INGEST, "encoder": "histo-classic"}))
    assert summary["ran"] == ["C:embed", "C:graph"]
    store = open_store(store_path)
    embed = store.manifest()["params"]["embed"]
    assert embed["standardised"]["C"]["reference_section"] == "C2"
    spots = store.read("spots", key="C").to_pandas()
    with store.vectors(readonly=True) as vec:
        def feats(section: str) -> np.ndarray:
            ids = spots.spot_id[spots.section_id == section]
            return vec.embeddings("histo-classic", "spot", list(ids), 65).astype(np.float64)

        ref, other = feats("C2"), feats("C3")
    varying = ref.std(0) > 0.5  # constant features are only centred
    np.testing.assert_allclose(ref.mean(0), 0, atol=2e-2)
    np.testing.assert_allclose(ref.std(0)[varying], 1, atol=2e-2)
    assert abs(other.mean(0)).max() > 0.05  # C3 is not re-centred on itself
