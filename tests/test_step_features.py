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
