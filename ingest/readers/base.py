"""What every reader shares: the ``Reader`` record the registry holds, sample selection by
name or glob, and the per-sample checks that do not depend on the layout."""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asign.errors import ImageError, InputError
from asign.ingest.images import image_header, verify_image
from asign.ingest.sample import SampleInput, SectionInput

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".btf")


@dataclass(frozen=True)
class Reader:
    """One input layout. ``detect(path)`` is cheap (file names only); ``list_samples(path)``
    names the samples without parsing them; ``read(path, samples)`` parses and validates
    the samples whose id matches ``samples`` (None = all)."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str | None], list[SampleInput]]
    list_samples: Callable[[Path], list[str]]


def sample_matches(sample_id: str, pattern: str | None) -> bool:
    """``pattern`` is a sample name, a glob, or a comma-separated list of either."""
    if pattern is None:
        return True
    return any(fnmatch.fnmatchcase(sample_id, p.strip()) for p in pattern.split(",") if p.strip())


def natural_key(name: str) -> tuple:
    """Sort key that orders ``S2`` before ``S10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def find_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_warning(section: SectionInput) -> str | None:
    """A section without an image is kept (labels, pre-aligned spots) but never encoded;
    say so rather than drop it."""
    if section.has_image:
        return None
    if section.has_aligned_coords:
        return (
            f"section {section.section_id} of sample {section.sample_id} has no image; its "
            "precomputed aligned coordinates are used and it gets no image features"
        )
    return (
        f"section {section.section_id} of sample {section.sample_id} has counts but no image; "
        "it is kept for its labels only (not image-encoded, not aligned)"
    )


def finish_sample(
    sample_id: str,
    sections: Iterable[SectionInput],
    *,
    fmt: str,
    source: Path,
    warnings: Iterable[str] = (),
) -> SampleInput:
    """Order sections by z, refuse duplicate z or section ids, and attach a warning for each
    image-less section (also logged)."""
    ordered = tuple(sorted(sections, key=lambda s: s.z))
    seen_z: dict[int, str] = {}
    seen_id: set[str] = set()
    for s in ordered:
        if s.z in seen_z:
            raise InputError(
                f"sections {seen_z[s.z]} and {s.section_id} of sample {sample_id} share z={s.z}",
                path=source,
                fix="give every section of a sample its own z (sectioning order)",
            )
        if s.section_id in seen_id:
            raise InputError(
                f"section id {s.section_id} appears twice in sample {sample_id}",
                path=source,
                fix="give every section a unique name",
            )
        seen_z[s.z] = s.section_id
        seen_id.add(s.section_id)
    notes = list(warnings)
    for s in ordered:
        note = image_warning(s)
        if note is not None:
            notes.append(note)
    for note in notes:
        log.warning(note)
    return SampleInput(
        sample_id=sample_id, sections=ordered, format=fmt, source=source, warnings=tuple(notes)
    )


def check_spots_in_image(spots: Any, image: Path, fix: str, what: str = "spot centre(s)",
                         example: str | None = None) -> None:
    """Every spot centre (``px``, ``py``) inside the image, whose size comes from its header
    (checked before anything is decoded); then the image itself is verified. ``example``:
    a column whose first outside value the message quotes."""
    w, h = image_header(image).size
    outside = (spots["px"] < 0) | (spots["px"] >= w) | (spots["py"] < 0) | (spots["py"] >= h)
    if outside.any():
        eg = f" (e.g. {spots[example][outside].iloc[0]})" if example else ""
        raise ImageError(f"{int(outside.sum())} {what} fall outside the {w}×{h} image{eg}",
                         path=image, fix=fix)
    verify_image(image)
