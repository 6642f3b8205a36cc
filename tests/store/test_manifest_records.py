"""The manifest's typed records (labels, step done markers, embeddings) read and write the
JSON layout stores have always had: an existing manifest round-trips byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from her2st_small import HER2ST, small_her2st_store

from asign.store import LabelsInfo, StepRecord, open_store
from asign.store.manifest import save_manifest

# A manifest as an older asign wrote it: no table hashes, a step without its config, an
# LMDB step whose digest was recorded as null, fields no record names, and labels without
# the section spacing (written before it was recorded).
OLD = {
    "format": "asign-store", "schema_version": 1, "asign_version": "0.1.0",
    "created_at": "2025-01-01T00:00:00Z", "inputs": {"C1": {"image_sha256": "ab"}},
    "params": {
        "labels": {"normalisation": "log_ratio", "n_genes": 250, "panel_sections": ["C1"],
                   "absent_genes": {"C2": ["ERBB2"]}, "legacy": True},
        "embed": {"encoder": "resnet50", "dim": 2048, "precision": None, "seed": 0,
                  "torch": "2.1"},
    },
    "steps": {"C": {
        "register": {"fingerprint": "aa", "done_at": "2025-01-01T00:00:01Z"},
        "align": {"fingerprint": "bb", "done_at": "2025-01-01T00:00:02Z", "score": 0.9,
                  "config": {"steps": ["align"]}},
        "embed": {"fingerprint": "cc", "done_at": "2025-01-01T00:00:03Z",
                  "entries_sha256": None},
    }},
}


def _round_trip(store, manifest: dict) -> dict:
    """Every record read through the typed methods and written back through them."""
    out = json.loads(json.dumps(manifest))
    labels = store.labels_info(out)
    if labels is not None:
        store.record_labels_info(out, labels)
    info = store.embedding_info(out)
    if info is not None:
        store.record_embedding_info(out, info)
    for sample, steps in store.step_records(out).items():
        for step, record in steps.items():
            assert store.step_fingerprint(out, sample, step) == record.fingerprint
            store.mark_step_done(out, sample, step, record)
    return out


def test_an_old_manifest_round_trips_through_the_typed_records(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    assert _round_trip(store, OLD) == OLD
    save_manifest(tmp_path / "a.json", OLD)
    save_manifest(tmp_path / "b.json", _round_trip(store, OLD))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    labels = store.labels_info(OLD)
    assert labels == LabelsInfo(normalisation="log_ratio", n_genes=250, panel_sections=["C1"],
                                absent_genes={"C2": ["ERBB2"]}, extra={"legacy": True})
    embed = store.step_record(OLD, "C", "embed")
    assert embed.recorded("entries_sha256") and embed.entries_sha256 is None
    register = store.step_record(OLD, "C", "register")
    assert not register.recorded("config") and store.step_record(OLD, "C", "graph") is None
    assert store.step_record(OLD, "C", "align").extra == {"score": 0.9}
    # an update sets a field and records a None among the values as null
    assert register.updated(entries_sha256=None).to_dict()["entries_sha256"] is None


def test_a_new_step_record_is_the_layout_mark_step_wrote(tmp_path):
    store = open_store(tmp_path / "s", create=True)
    manifest = store.manifest()
    store.mark_step_done(manifest, "C", "embed", StepRecord.now(
        "fp", {"entries_sha256": "e", "n": 3}, {"steps": ["embed"]}))
    record = manifest["steps"]["C"]["embed"]
    assert set(record) == {"fingerprint", "done_at", "entries_sha256", "n", "config"}
    assert (record["fingerprint"], record["n"], record["config"]) == ("fp", 3, {"steps": ["embed"]})
    store.forget_steps(manifest, "C", ["graph", "embed"])
    assert manifest["steps"] == {"C": {}}


@pytest.mark.skipif(not HER2ST.exists(), reason="needs ../shared/data/her2st")
def test_a_real_stores_manifest_round_trips_unchanged(tmp_path_factory, tmp_path):
    _, built = small_her2st_store(tmp_path_factory)
    root = Path(shutil.copytree(built, tmp_path / "S"))
    store = open_store(root)
    before = store.layout.manifest.read_bytes()
    manifest = store.manifest()
    assert store.labels_info(manifest).normalisation and store.step_records(manifest)
    store.save_manifest(_round_trip(store, manifest))
    assert store.layout.manifest.read_bytes() == before
