"""Evaluation protocol: which labels training may see, which sections are scored, and the
training episodes that hide layers as at test time.

Roles (decided per fold from the ``sections`` table):

- **target sample** — at least two *placed* sections (an image, aligned later, or aligned
  coordinates given with the input), at least one with counts, not named in
  ``extra_2d``. Its *known layers* (``--known``: one or a comma-separated set of
  ``first|middle|last|Z|section id`` among its labelled, placed sections, e.g. ``2,5`` or
  ``first,last``) are the only sections whose labels training may use; its other labelled
  sections are *hidden* (ground truth for scoring only); its image-only sections (virtual
  spots) get predictions but no scores.
- **training sample** (``--folds K ≥ 2`` only) — a target sample outside the test fold:
  every labelled layer is visible to training.
- **2D training section** — a sample with a single placed, labelled section (e.g. her2st
  B4), or any sample/section named in ``extra_2d``: trained as its own single-section graph
  (no cross-layer edges), never scored.

Settings (one per run, recorded in ``runs.setting`` and ``metrics.setting`` so the two are
never averaged together):

- ``within_sample`` (``--folds 1``): one fold; every target sample is a test sample. The
  model learns from the known layers (+ 2D sections) and imputes the hidden layers of the
  same samples.
- ``cross_sample`` (``--folds K``): sample-level K-fold over target samples. Fold ids come
  from a DuckDB query over ``sections``: samples ordered by ``md5(sample_id || ':' || seed)``,
  fold = row_number mod K. Test samples contribute only their known layer to training
  (DESIGN §4, as in the paper).

Training episodes (:func:`episode`), drawn afresh each epoch from a generator seeded by
(seed, epoch, graph), so a resumed run replays them exactly:

- a graph with ≥ 2 visible labelled sections (a training sample, or a test sample with
  two or more known layers): one visible section is drawn as the episode's known layer,
  the other visible sections are hidden — whole layers, the test-time situation;
- a graph with one visible labelled section (a test sample's known layer, a 2D section):
  whole layers cannot be hidden without using hidden labels, so a random fraction
  ``episode_known_fraction`` (default 0.2, the paper's "ratio of known labels") of that
  layer's spots is drawn as known and the rest are hidden.

The spot loss is computed on the episode's hidden spots only; CLI propagates from the
episode's known spots. Labels outside the visible set are removed by :func:`visible_labels`
before anything in training sees them (zeros plus a False mask), which the no-leakage test
checks by perturbing hidden labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asign.errors import ConfigError

ROLES = ("test", "train", "train_2d")


@dataclass(frozen=True)
class SectionInfo:
    sample_id: str
    section_id: str
    z: int
    has_counts: bool
    has_image: bool
    has_coords: bool = False  # aligned coordinates given with the input (no image needed)

    @property
    def placed(self) -> bool:
        return self.has_image or self.has_coords


@dataclass(frozen=True)
class SamplePlan:
    """What one sample contributes to one fold."""

    sample_id: str
    role: str  # test | train | train_2d
    sections: tuple[str, ...]  # the placed sections in the graph, in z order
    visible: tuple[str, ...]  # labelled sections whose labels training may use
    known: str | None = None  # test samples: the (first) known layer
    scored: tuple[str, ...] = ()  # test samples: hidden labelled sections, scored
    knowns: tuple[str, ...] = ()  # test samples: every known layer (``known`` is the first)

    @property
    def predicted(self) -> tuple[str, ...]:
        """Sections that get predictions: every section but the known ones (test only)."""
        if self.role != "test":
            return ()
        known = set(self.knowns or (self.known,))
        return tuple(s for s in self.sections if s not in known)


@dataclass(frozen=True)
class Fold:
    fold: int
    setting: str
    samples: tuple[SamplePlan, ...]

    @property
    def test(self) -> tuple[SamplePlan, ...]:
        return tuple(p for p in self.samples if p.role == "test")


def known_tokens(known: str | int) -> tuple[str, ...]:
    """``--known`` split into its comma-separated parts (``"2,5"`` → ``("2", "5")``)."""
    return tuple(t.strip() for t in str(known).split(",") if t.strip())


def resolve_knowns(sections: list[SectionInfo], known: str | int) -> tuple[str, ...]:
    """The known layers of one sample, in z order. Each part of ``known`` is ``first`` (lowest
    z), ``middle`` (the median z, the lower one for an even count), ``last``, a z index, or a
    section id, among the sample's labelled, placed sections. A section id of another sample
    is skipped (one ``--known`` serves several samples), but every sample needs one layer."""
    labelled = sorted((s for s in sections if s.has_counts and s.placed), key=lambda s: s.z)
    sample = sections[0].sample_id if sections else "?"
    if not labelled:
        raise ConfigError(f"sample {sample} has no placed section with counts",
                          fix="ingest at least one section with counts for this sample")
    zs = ", ".join(str(s.z) for s in labelled)
    ids = {s.section_id for s in labelled}
    all_ids = {s.section_id for s in sections}
    chosen: set[str] = set()
    for key in known_tokens(known):
        if key == "first":
            chosen.add(labelled[0].section_id)
        elif key == "last":
            chosen.add(labelled[-1].section_id)
        elif key == "middle":
            chosen.add(labelled[(len(labelled) - 1) // 2].section_id)
        elif key.lstrip("-").isdigit():
            match = [s.section_id for s in labelled if s.z == int(key)]
            if not match:
                raise ConfigError(f"sample {sample} has no labelled, placed section at z={key}",
                                  fix=f"use --known first|middle|last or one of z = {zs}")
            chosen.add(match[0])
        elif key in ids:
            chosen.add(key)
        elif key in all_ids:
            raise ConfigError(f"--known {key}: section {key} of sample {sample} has no counts "
                              "or is not placed",
                              fix=f"use labelled, placed sections: {', '.join(sorted(ids))}")
    if not chosen:
        raise ConfigError(f"--known {known} names no labelled, placed section of sample {sample}",
                          fix=f"use first|middle|last, one of z = {zs}, or a section id: "
                              f"{', '.join(sorted(ids))}")
    return tuple(s.section_id for s in labelled if s.section_id in chosen)


def resolve_known(sections: list[SectionInfo], known: str | int) -> str:
    """The (first) known layer of one sample (see :func:`resolve_knowns`)."""
    return resolve_knowns(sections, known)[0]


def is_extra_2d(sample_id: str, section_ids: list[str], extra_2d: tuple[str, ...]) -> bool:
    return sample_id in extra_2d or any(s in extra_2d for s in section_ids)


def fold_assignment(con: object, samples: list[str], folds: int, seed: int) -> dict[str, int]:
    """Deterministic sample-level folds from a DuckDB query over ``sections``."""
    if folds == 1:
        return dict.fromkeys(samples, 0)
    if folds > len(samples):
        fix = (f"use --folds {len(samples)} or fewer" if len(samples) >= 2 else
               "use --folds 1 (within-sample imputation), or ingest another sample with "
               "two or more labelled sections")
        raise ConfigError(f"--folds {folds} needs at least {folds} target samples (samples "
                          f"with two or more labelled sections); the store has "
                          f"{len(samples)} ({', '.join(samples)})", fix=fix)
    rows = con.execute(  # type: ignore[attr-defined]
        """
        WITH s AS (SELECT DISTINCT sample_id FROM sections WHERE list_contains(?, sample_id))
        SELECT sample_id,
               CAST((row_number() OVER (ORDER BY md5(sample_id || ':' || CAST(? AS VARCHAR)),
                                        sample_id) - 1) % ? AS INTEGER) AS fold
        FROM s ORDER BY sample_id
        """,
        [samples, seed, folds],
    ).fetchall()
    return {str(s): int(f) for s, f in rows}


def plan_folds(
    sections: list[SectionInfo],
    *,
    known: str | int = "first",
    folds: int = 1,
    fold_of: dict[str, int] | None = None,
    samples: tuple[str, ...] = (),
    extra_2d: tuple[str, ...] = (),
) -> list[Fold]:
    """Every fold's sample roles. ``fold_of`` maps target samples to folds (from
    :func:`fold_assignment`); with ``folds == 1`` it is not needed."""
    by_sample: dict[str, list[SectionInfo]] = {}
    for s in sections:
        if samples and s.sample_id not in samples and s.sample_id not in extra_2d:
            continue
        by_sample.setdefault(s.sample_id, []).append(s)
    if samples:
        missing = [s for s in samples if s not in by_sample]
        if missing:
            raise ConfigError(f"samples not in the store: {', '.join(missing)}",
                              fix="check --samples against "
                                  "`asign query \"SELECT * FROM sections\"`")

    targets: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}
    two_d: list[SamplePlan] = []
    for sample_id in sorted(by_sample):
        secs = sorted(by_sample[sample_id], key=lambda s: s.z)
        imaged = [s for s in secs if s.placed]
        labelled = [s.section_id for s in imaged if s.has_counts]
        if not labelled:
            continue  # nothing to learn from and nothing to propagate
        if len(imaged) >= 2 and not is_extra_2d(sample_id, [s.section_id for s in secs], extra_2d):
            k = resolve_knowns(secs, known)
            hidden = tuple(s for s in labelled if s not in k)
            targets[sample_id] = (tuple(s.section_id for s in imaged), k, hidden)
        else:
            # Each labelled section is its own 2D graph, as a single slide would be.
            for sec in labelled:
                two_d.append(SamplePlan(sample_id, "train_2d", (sec,), (sec,)))
    if not targets:
        raise ConfigError("no sample to evaluate: a target sample needs ≥ 2 placed sections (an "
                          "H&E image, or aligned x_um, y_um given with the input), one of them "
                          "with counts",
                          fix="ingest a multi-section sample, or check --samples/--extra-2d")

    fold_of = fold_of or dict.fromkeys(targets, 0)
    n_folds = 1 if folds == 1 else folds
    setting = "within_sample" if folds == 1 else "cross_sample"
    out: list[Fold] = []
    for f in range(n_folds):
        plans: list[SamplePlan] = []
        for sample_id, (secs, k, hidden) in targets.items():
            if fold_of[sample_id] == f:
                plans.append(SamplePlan(sample_id, "test", secs, k, k[0], hidden, knowns=k))
            else:
                plans.append(SamplePlan(sample_id, "train", secs, (*k, *hidden)))
        out.append(Fold(f, setting, tuple(plans) + tuple(two_d)))
    return out


def plan_transfer(
    sections: list[SectionInfo],
    *,
    test_samples: tuple[str, ...],
    samples: tuple[str, ...] = (),
) -> list[Fold]:
    """The cross-patient setting (``--test-samples``): one fold in which every labelled,
    placed section of the other samples (``samples`` when given) is visible to training,
    and each test sample is predicted from its images alone: it has no known layer, its
    labelled sections are scored and nothing of it enters training."""
    by_sample: dict[str, list[SectionInfo]] = {}
    for s in sections:
        by_sample.setdefault(s.sample_id, []).append(s)
    missing = [t for t in test_samples if t not in by_sample]
    if missing:
        raise ConfigError(f"--test-samples {', '.join(missing)}: not in the store",
                          fix="ingest the sample into this store (its image, and its counts "
                              "to be scored), or check the name")
    plans: list[SamplePlan] = []
    for sample_id in sorted(by_sample):
        secs = sorted((s for s in by_sample[sample_id] if s.placed), key=lambda s: s.z)
        ids = tuple(s.section_id for s in secs)
        labelled = tuple(s.section_id for s in secs if s.has_counts)
        if sample_id in test_samples:
            plans.append(SamplePlan(sample_id, "test", ids, (), None, labelled))
        elif (not samples or sample_id in samples) and labelled:
            plans.append(SamplePlan(sample_id, "train", ids, labelled))
    if not any(p.role == "train" for p in plans):
        raise ConfigError("--test-samples leaves no sample with labelled, placed sections to "
                          "train on", fix="ingest a training sample into this store, or "
                                          "check --samples")
    return [Fold(0, "cross_patient", tuple(plans))]


def visible_labels(
    labels: np.ndarray, has_label: np.ndarray, section: np.ndarray, visible_idx: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(labels with everything outside the visible sections zeroed, visible mask).

    This is the only door through which labels enter training; ``section`` holds each
    spot's section index and ``visible_idx`` the indices of the visible sections."""
    mask = has_label & np.isin(section, np.asarray(visible_idx, dtype=section.dtype))
    out = np.where(mask[:, None], labels, 0.0).astype(np.float32)
    absent = ~np.isfinite(out).all(axis=0)
    if absent.any():  # masked at ingest: a gene the section's counts lack is no zero to learn
        from asign.errors import InputError

        raise InputError(f"{int(absent.sum())} panel gene(s) are absent from the counts of a known "
                         "(training) layer, so they cannot be learnt from it",
                         fix="pick a known layer measured on every panel gene (--known), or "
                             "re-ingest with --genes naming genes that layer has")
    return out, mask


@dataclass(frozen=True)
class Episode:
    known: np.ndarray  # (N,) bool: labels clamped / propagated from
    hidden: np.ndarray  # (N,) bool: spot loss computed here


def episode(
    visible: np.ndarray, section: np.ndarray, rng: np.random.Generator, known_fraction: float
) -> Episode:
    """One training episode over a graph's visible labelled spots (see module docstring)."""
    layers = np.unique(section[visible])
    if layers.size >= 2:
        k = rng.choice(layers)
        known = visible & (section == k)
        return Episode(known, visible & ~known)
    idx = np.flatnonzero(visible)
    n_known = int(round(known_fraction * idx.size))
    n_known = min(max(n_known, 1), max(idx.size - 1, 0))
    known = np.zeros_like(visible)
    known[rng.choice(idx, size=n_known, replace=False)] = True
    return Episode(known, visible & ~known)


def episode_rng(seed: int, epoch: int, graph: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, graph, 0x5EED])


def tile_targets(own_tile: np.ndarray, y: np.ndarray,
                 visible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region/global targets: per spot, the mean visible label of the spots whose own tile
    (rank 0) is its own tile; mask False where that tile holds no visible spot. Only the
    visible labels enter, so a test sample's targets come from its known layer alone.
    Returned once per tile, ``(table (T, G) float32, tile (N,) int64, mask (N,))``: spot
    i's target is ``table[tile[i]]`` (an (N, G) copy per spot was GBs at Visium HD scale;
    loss.TileTarget reads it)."""
    own_tile = np.asarray(own_tile, dtype=np.int64)
    n_tiles = int(own_tile.max()) + 1 if own_tile.size else 0
    sums = np.zeros((n_tiles, y.shape[1]), dtype=np.float64)
    counts = np.zeros(n_tiles, dtype=np.int64)
    np.add.at(sums, own_tile[visible], y[visible])
    np.add.at(counts, own_tile[visible], 1)
    table = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    tile = np.where(own_tile < 0, own_tile + n_tiles, own_tile)  # as numpy indexes −1
    return table, tile, counts[own_tile] > 0
