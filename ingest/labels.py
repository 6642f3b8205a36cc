"""Gene panel and expression labels. Pure: sections in, arrays out.

The panel is chosen on labelled *training* sections only: a hidden layer's counts must not
decide which genes are predicted, or its evaluation leaks. Two normalisations exist:

- ``log_ratio``: ln((c+1) / Σ_panel(c+1)) per spot, what the reference code trains on and
  the scale of the paper's numbers;
- ``log1p_cp10k``: log1p(1e4 · c / Σ_all-genes c), the TRIPLEX/HEST convention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence

import numpy as np

from asign.errors import ConfigError, InputError
from asign.ingest.sample import SectionInput

log = logging.getLogger(__name__)

DEFAULT_N_GENES = 250


def _training(
    sections: Sequence[SectionInput], train_sections: Collection[str]
) -> list[SectionInput]:
    wanted = set(train_sections)
    chosen = [s for s in sections if s.section_id in wanted]
    unknown = wanted - {s.section_id for s in chosen}
    if unknown:
        raise InputError(
            f"training section(s) {', '.join(sorted(unknown))} are not among the samples read",
            fix="name training sections by their section id",
        )
    unlabelled = [s.section_id for s in chosen if not s.has_counts]
    if unlabelled:
        raise InputError(
            f"training section(s) {', '.join(unlabelled)} have no counts",
            fix="train on sections that have counts",
        )
    if not chosen:
        raise InputError(
            "no training section with counts",
            fix="give at least one section with counts to train on",
        )
    return chosen


def check_genes(sections: Sequence[SectionInput], genes: Sequence[str]) -> list[str]:
    """A user-requested gene list, deduplicated in order; every gene must be in every
    given section's counts."""
    wanted = list(dict.fromkeys(genes))
    if not wanted:
        raise InputError("the requested gene list is empty", fix="name at least one gene")
    for s in sections:
        have = set(s.genes)
        missing = [g for g in wanted if g not in have]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise InputError(
                f"requested gene(s) {shown} absent from section {s.section_id}",
                path=s.counts_path,
                fix="check the spelling (gene symbols as in the counts header) or drop those genes",
            )
    return wanted


def select_panel(
    sections: Sequence[SectionInput],
    n_genes: int = DEFAULT_N_GENES,
    *,
    train_sections: Collection[str],
    genes: Sequence[str] | None = None,
) -> list[str]:
    """The gene panel: ``genes`` if given (checked against the training sections), else the
    ``n_genes`` genes with the highest mean count per spot over all spots of the training
    sections, among genes present in every training section; ties broken by gene name.
    Fewer genes are returned when fewer exist."""
    train = _training(sections, train_sections)
    if genes is not None:
        return check_genes(train, genes)
    if n_genes < 1:
        raise ConfigError(f"n_genes={n_genes} must be ≥1", fix="ask for at least one gene")
    common = set(train[0].genes).intersection(*(s.genes for s in train[1:]))
    if not common:
        raise InputError(
            "the training sections share no gene",
            fix="check the counts tables use the same gene naming",
        )
    names = sorted(common)
    totals = np.zeros(len(names), dtype=np.float64)
    n_spots = 0
    for s in train:
        col = {g: i for i, g in enumerate(s.genes)}
        sums = np.asarray(s.counts.sum(axis=0, dtype=np.int64)).ravel()
        totals += sums[[col[g] for g in names]]
        n_spots += s.counts.shape[0]
    mean = totals / max(n_spots, 1)
    order = np.lexsort((np.array(names), -mean))
    if len(names) < n_genes:
        log.info(
            "panel: only %d genes are shared by the training sections (asked for %d)",
            len(names),
            n_genes,
        )
    return [names[i] for i in order[:n_genes]]


def panel_counts(section: SectionInput, panel: Sequence[str]) -> np.ndarray:
    """Dense (n_spots, len(panel)) int64 counts; a panel gene the section lacks is a zero
    column (a hidden or query section measured on another gene set)."""
    if not section.has_counts:
        raise ValueError(f"section {section.section_id} has no counts")
    col = {g: i for i, g in enumerate(section.genes)}
    idx = np.array([col.get(g, -1) for g in panel], dtype=np.int64)
    out = np.zeros((section.counts.shape[0], len(panel)), dtype=np.int64)
    present = idx >= 0
    if present.any():
        out[:, present] = section.counts[:, idx[present]].toarray()
    return out


def log_ratio(counts: np.ndarray, total_counts: np.ndarray | None = None) -> np.ndarray:
    """ln((c+1) / Σ_panel(c+1)) per spot; ``total_counts`` is unused (panel-relative)."""
    c = np.asarray(counts, dtype=np.float64) + 1.0
    return (np.log(c) - np.log(c.sum(axis=1, keepdims=True))).astype(np.float32)


def log1p_cp10k(counts: np.ndarray, total_counts: np.ndarray | None) -> np.ndarray:
    """log1p(1e4 · c / Σ_all c) per spot, Σ over all genes; a spot with no counts is 0."""
    if total_counts is None:
        raise ValueError("log1p_cp10k needs the per-spot total over all genes")
    c = np.asarray(counts, dtype=np.float64)
    total = np.asarray(total_counts, dtype=np.float64).reshape(-1, 1)
    scale = np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(c * scale).astype(np.float32)


NORMALISATIONS: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    "log_ratio": log_ratio,
    "log1p_cp10k": log1p_cp10k,
}


def normalise(
    counts: np.ndarray, total_counts: np.ndarray | None, method: str = "log_ratio"
) -> np.ndarray:
    """Normalised float32 labels with the registered ``method``."""
    if method not in NORMALISATIONS:
        raise ConfigError(
            f"unknown normalisation {method!r}", fix=f"use one of {', '.join(NORMALISATIONS)}"
        )
    return NORMALISATIONS[method](counts, total_counts)
