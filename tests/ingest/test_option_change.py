"""A re-ingest refused because runs are bound to the state says which options moved
(ingest/pipeline.py ``option_change``): generated sets of changed options, each named with
both values, and nothing else named: runtime options (threads, workers, the sample
filter) never, and nothing when no option moved or the step recorded no options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from asign.ingest.config import AlignOptions, IngestConfig
from asign.ingest.pipeline import option_change, recorded_config
from asign.store import Store
from asign.store.manifest_records import StepRecord

BASE = IngestConfig(sources=(Path("/data/her2st"),), store=Path("/tmp/S"), samples="C",
                    encoder="effnet-lite0")
# options that decide results, each with values other than its default
DECIDING = {"stain_norm": ["none"], "tta": [2, 8], "batch_size": [8, 64], "k_same": [6],
            "top_k_cross": [4], "spot_px": [112], "seed": [1], "precision": ["fp32"],
            "normalisation": ["log1p_cp10k"], "n_genes": [100], "weights": ["random"],
            "cross_weight": ["sum"], "align": [AlignOptions(syn=True)]}
RUNTIME = {"threads": [1, 4], "workers": [2], "samples": ["C,D"], "invalidate_runs": [True],
           "steps": [("embed",)]}


def _manifest(cfg: IngestConfig | None) -> dict:
    manifest: dict = {}
    Store.mark_step_done(manifest, "C", "embed", StepRecord.now(
        "f" * 16, config=None if cfg is None else recorded_config(cfg)))
    return manifest


@settings(max_examples=60, deadline=None)
@given(deciding=st.dictionaries(st.sampled_from(sorted(DECIDING)), st.just(0), max_size=4),
       runtime=st.dictionaries(st.sampled_from(sorted(RUNTIME)), st.just(0), max_size=3),
       pick=st.integers(0, 1))
def test_exactly_the_changed_deciding_options_are_named(deciding, runtime, pick):
    changes = {k: DECIDING[k][pick % len(DECIDING[k])] for k in deciding}
    changes |= {k: RUNTIME[k][pick % len(RUNTIME[k])] for k in runtime}
    said = option_change(_manifest(BASE), "C", "embed", dataclasses.replace(BASE, **changes))
    named = {part.split(" ")[0] for part in said.split(", ")} if said else set()
    # a group (align) is named by its own options
    assert named == {"--syn" if k == "align" else "--" + k.replace("_", "-") for k in deciding}
    if "stain_norm" in deciding:
        assert "--stain-norm macenko → none" in said


def test_a_register_change_and_a_long_list_are_named_in_one_short_line():
    manifest: dict = {}
    Store.mark_step_done(manifest, "C", "register",
                         StepRecord.now("f" * 16, config=recorded_config(BASE)))
    panel = tuple(f"G{i}" for i in range(250))
    said = option_change(manifest, "C", "register",
                         dataclasses.replace(BASE, n_genes=100, genes=panel))
    assert said == "--n-genes 250 → 100, --genes (none) → [250 values]"


def test_nothing_is_named_without_a_recorded_config_or_another_sample():
    changed = dataclasses.replace(BASE, stain_norm="none")
    assert option_change(_manifest(None), "C", "embed", changed) == ""
    assert option_change(_manifest(BASE), "D", "embed", changed) == ""
    assert option_change(_manifest(BASE), "C", "embed", BASE) == ""
