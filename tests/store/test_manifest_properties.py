"""Generated manifests against the store's promise: an ingest either fails with one
AsignError line and leaves the store as it was, or leaves a store that `asign check` accepts
and whose queries return what the inputs said.

Manifests are drawn by hypothesis: ids with spaces, case, Unicode and collisions, gene
subsets per section, coordinates with NaN/inf/outside the image, counts with negative,
NaN and fractional values, relative paths with spaces and non-ASCII folders, tiny images.
Each example ingests into a copy of a store that already holds a sample ("base"), which
must come out untouched either way. The default profile is small and derandomised (CI);
``-m slow`` runs the large one."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from manifest_gen import ManifestSpec, SectionSpec, grid, simple, write_manifest

from asign.errors import AsignError
from asign.store import open_store
from asign.store.names import collision_key, name_problem

CI_EXAMPLES, SLOW_EXAMPLES = 25, 300
GENES = tuple(f"G{i}" for i in range(6))  # one panel for every ingest into the store
IMAGE_PX = 400  # 1 µm/px: a 3×3 grid of spots at 100 µm pitch from (100, 100) lies inside

# ids users type: plain, with spaces, case variants, non-ASCII, and ones that collide
SAMPLE_IDS = st.sampled_from(["A", "a", "pt 1", "pt_1", "Å", "CON", ".h", "\u212b", "s-2", "x.y",
                              "Probe ü", "b", "C 3"])
# At most one injected fault per manifest, and none in about half of them, so that about
# half the manifests are accepted and their stores checked.
FAULTS = [*[("none", None)] * 4, ("count", -1.0), ("count", math.nan), ("count", 2.5),
          ("count", math.inf), ("coord", (math.nan, 150.0)), ("coord", (math.inf, 150.0)),
          ("coord", (5000.0, 150.0)), ("coord", (-40.0, 150.0)), *[("none", None)] * 4]


@st.composite
def manifests(draw) -> tuple[ManifestSpec, dict]:
    """A manifest and what was injected into it."""
    samples = draw(st.lists(SAMPLE_IDS, min_size=1, max_size=2, unique=True))
    with_image = draw(st.booleans())
    kind, value = draw(st.sampled_from(FAULTS))
    bad_count = value if kind == "count" else None
    bad_coord = value if kind == "coord" else None
    section_names = draw(st.sampled_from(["plain", "plain", "spaced", "clash"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    sections: list[SectionSpec] = []
    for si, sample in enumerate(samples):
        layers = draw(st.integers(2, 3))
        for z in range(1, layers + 1):
            # the known layer (z = 1) measures the whole panel; the others may lack genes
            genes = GENES if z == 1 else sorted(draw(st.sets(st.sampled_from(GENES), min_size=3)))
            n = draw(st.integers(4, 9))
            coords = grid(n)
            counts = rng.poisson(4, (n, len(genes))).astype(float)
            name = {"plain": f"{sample}_L{z}", "spaced": f"{sample} L{z}",
                    "clash": f"L{z}" if si == 0 else f"l{z}"}[section_names]
            sections.append(SectionSpec(sample, name, z, coords, counts.tolist(), genes,
                                        IMAGE_PX if with_image else None))
    target = sections[draw(st.integers(0, len(sections) - 1))]
    if bad_count is not None:
        target.counts[0][0] = bad_count
    if bad_coord is not None:
        target.coords[0] = bad_coord
    folder = draw(st.sampled_from(["", "sub dir/", "ünï/"]))
    return ManifestSpec(sections), {"bad_count": bad_count, "bad_coord": bad_coord,
                                    "folder": folder, "with_image": with_image}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    from asign.ingest import run
    from asign.ingest.config import IngestConfig

    root = tmp_path_factory.mktemp("base")
    manifest = write_manifest(root / "src", simple("base", n_spots=9, genes=len(GENES)))
    run(IngestConfig(sources=(manifest,), store=root / "store", weights="random", genes=GENES))
    return root / "store"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "locks"}


def _must_fail(spec: ManifestSpec, injected: dict) -> str | None:
    """Why this manifest must be refused (None: it may be accepted)."""
    samples = list(dict.fromkeys(s.sample for s in spec.sections))
    ids = [*samples, "base"]
    if any(name_problem(i) for i in ids) or len({collision_key(i) for i in ids}) < len(ids):
        return "sample ids"
    secs = [s.section for s in spec.sections]
    if any(name_problem(i) for i in secs) or len({collision_key(i) for i in secs}) < len(secs):
        return "section ids"
    if injected["bad_count"] is not None:
        return "counts"
    return None


def _ingest(spec: ManifestSpec, injected: dict, root: Path, base: Path):
    from asign.ingest import run
    from asign.ingest.config import IngestConfig

    if root.exists():
        shutil.rmtree(root)
    store = root / "store"
    shutil.copytree(base, store)
    manifest = write_manifest(root / "src" / injected["folder"], spec)
    before = _snapshot(store)
    steps = ("register",) if injected["with_image"] else ("register", "align", "patches", "embed",
                                                           "graph")
    try:
        run(IngestConfig(sources=(manifest,), store=store, weights="random", steps=steps,
                         genes=GENES))
    except AsignError as err:
        return store, before, err
    return store, before, None


def _assert_promise(spec: ManifestSpec, injected: dict, store: Path, before: dict,
                    err: AsignError | None, base_spots: int) -> None:
    must = _must_fail(spec, injected)
    event(f"refused: {type(err).__name__}" if err is not None else "accepted")
    if err is not None:
        assert "\n" not in str(err), str(err)
        assert _snapshot(store) == before, f"store changed by a refused ingest: {err}"
        return
    assert must is None, f"accepted a manifest with bad {must}"
    from asign.store.check import check_store

    opened = open_store(store)
    assert check_store(opened) == []
    spots = opened.read("spots").to_pandas()
    assert (spots.sample_id == "base").sum() == base_spots  # the other sample is untouched
    panel = opened.read("genes").column("gene").to_pylist()
    labels = opened.read("labels").to_pandas().set_index(["section_id", "spot_id"])
    for sec in spec.sections:
        mine = spots[spots.section_id == sec.section]
        assert len(mine) == len(sec.coords) and set(mine.sample_id) == {sec.sample}
        for g in set(panel) & set(sec.genes):  # what a section measured comes back as given
            col, gi = list(sec.genes).index(g), panel.index(g)
            for spot, row in zip(sec.ids(), sec.counts, strict=True):
                stored = labels.loc[(sec.section, f"{sec.section}/{spot}"), "counts"][gi]
                assert stored == row[col], (sec.section, spot, g)


def _check(spec, injected, tmp_path_factory, base_store):
    root = tmp_path_factory.mktemp("case")
    base_spots = open_store(base_store).read("spots").num_rows
    store, before, err = _ingest(spec, injected, root, base_store)
    _assert_promise(spec, injected, store, before, err, base_spots)
    shutil.rmtree(root)


@settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(manifests())
def test_generated_manifests_keep_the_store_promise(tmp_path_factory, base_store, case):
    _check(*case, tmp_path_factory, base_store)


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(manifests())
def test_generated_manifests_keep_the_store_promise_large(tmp_path_factory, base_store, case):
    _check(*case, tmp_path_factory, base_store)
