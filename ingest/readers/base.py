"""What every reader shares: the ``Reader`` record the registry holds, sample selection by
name or glob, and the per-sample checks that do not depend on the layout.

Geometry model (what a reader must fill in on each ``SectionInput``; docs/platforms.md):

- ``px, py``: spot centre in the section image's level-0 pixels (x = column);
  ``um_per_px``: that image's scale, best taken from the data (affine fit of the spots'
  pixel centres on their array index × pitch, ``grid_um_per_px``), not from a header.
- ``spot_shape``: ``"disc"`` (Visium, legacy ST, cells) or ``"square"`` (Visium HD bins,
  Xenium bins); ``spot_diameter_um`` is the disc diameter or the square's side.
- ``spot_pitch_um``: centre-to-centre distance of neighbouring spots on the platform's
  ``lattice`` (``"hex"``: Visium, rows pitch·√3/2 apart; ``"square"``: bins, legacy ST).
  Virtual spots on image-only sections are laid on this lattice with this pitch.
- Cross-layer overlap (ingest/overlap.py): discs by the closed form; squares by the closed
  form when both grids are turned by the same angle in the aligned frame, else by shapely's
  polygon intersection. A square's angle is its section's grid angle after alignment
  (from ``array_x, array_y`` against the aligned centres).
- Spot patch: 112 µm for discs (224 px at 0.5 µm/px), 2.04 × the side for squares (at
  least 32 µm), or ``--patch-um``; region and global tiles keep 512/224 and 1024/224 of it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asign.errors import ImageError, InputError
from asign.ingest.images import image_header, verify_image
from asign.ingest.sample import SampleInput, SectionInput

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".btf")


@dataclass(frozen=True)
class ReadOptions:
    """Choices a user makes about how a layout is read (``asign ingest`` options).
    ``bin_um``: bin size in µm for binned platforms (None = the platform's default;
    0 = Xenium cells as spots)."""

    bin_um: float | None = None


@dataclass(frozen=True)
class Reader:
    """One input layout. ``detect(path)`` is cheap (file names only); ``list_samples(path)``
    names the samples without parsing them; ``read(path, samples, options)`` parses and
    validates the samples whose id matches ``samples`` (None = all)."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str | None, ReadOptions], list[SampleInput]]
    list_samples: Callable[[Path], list[str]]


def sample_matches(sample_id: str, pattern: str | None) -> bool:
    """``pattern`` is a sample name, a glob, or a comma-separated list of either."""
    if pattern is None:
        return True
    return any(fnmatch.fnmatchcase(sample_id, p.strip()) for p in pattern.split(",") if p.strip())


def natural_key(name: str) -> tuple:
    """Sort key that orders ``S2`` before ``S10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


ORDER_FILE = "sections.txt"  # z order of a sample's section folders (ordered_sections)


def subdirs(folder: Path) -> list[Path]:
    """Sub-folders in natural order (``S2`` before ``S10``)."""
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))


def sample_folders(path: Path, is_section: Callable[[Path], bool]) -> dict[str, Path]:
    """sample id → folder, for outputs written one folder per section (Visium, Visium HD,
    Xenium): PATH is a section (a one-section sample), a sample (a folder of sections), or a
    folder of samples."""
    path = Path(path)
    if not path.is_dir():
        return {}
    if is_section(path) or any(is_section(d) for d in subdirs(path)):
        return {path.name: path}
    return {d.name: d for d in subdirs(path) if any(is_section(c) for c in subdirs(d))}


#: (sample id, section name, section folder, z, image listed in sections.txt or None,
#: options) -> the section: what a one-folder-per-section layout reads of one folder
ReadSection = Callable[[str, str, Path, int, Path | None, ReadOptions], SectionInput]


def folder_reader(name: str, description: str, is_section: Callable[[Path], bool],
                  read_section: ReadSection) -> Reader:
    """The ``Reader`` of a layout written one folder per section (Visium, Visium HD,
    Xenium): samples found by ``sample_folders``, sections ordered by ``section_folders``;
    the layout gives only what tells a section folder and how one is read."""
    def folders(path: Path) -> dict[str, Path]:
        return sample_folders(Path(path), is_section)

    def read(path: Path, samples: str | None = None,
             options: ReadOptions | None = None) -> list[SampleInput]:
        options = options or ReadOptions()
        out = []
        for sample_id, folder in sorted(folders(path).items()):
            if not sample_matches(sample_id, samples):
                continue
            warns: list[str] = []
            order = section_folders(folder, is_section, warns)
            sections = [read_section(sample_id, n, d, z, img, options)
                        for z, (n, d, img) in enumerate(order, start=1)]
            out.append(finish_sample(sample_id, sections, fmt=name, source=folder,
                                     warnings=warns))
        return out

    return Reader(name=name, description=description, detect=lambda p: bool(folders(p)),
                  read=read, list_samples=lambda p: sorted(folders(p)))


def section_folders(folder: Path, is_section: Callable[[Path], bool],
                    warnings: list[str]) -> list[tuple[str, Path, Path | None]]:
    """A sample folder's sections in z order (ordered_sections), or the folder itself when
    it is a lone section."""
    if is_section(folder):
        return [(folder.name, folder, None)]
    found = {d.name: d for d in subdirs(folder) if is_section(d)}
    return ordered_sections(folder, found, folder / ORDER_FILE, warnings)


def ordered_sections(sample_dir: Path, found: dict[str, Path], order_file: Path,
                     warnings: list[str]) -> list[tuple[str, Path, Path | None]]:
    """(name, section folder, image named in ``order_file`` or None) in z order: the lines
    of ``order_file`` ("NAME [IMAGE]", z = 1, 2, … in line order; unlisted sections are
    ignored with a warning), else the natural sort of the section names."""
    if not order_file.is_file():
        return [(name, found[name], None) for name in sorted(found, key=natural_key)]
    out = []
    for raw in order_file.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *rest = line.split()
        if name not in found:
            raise InputError(f"lists section {name}, but {sample_dir / name} is not a section",
                             path=order_file, fix="list only section folders (or fix the name)")
        out.append((name, found[name], (sample_dir / rest[0]) if rest else None))
    unlisted = sorted(set(found) - {n for n, _, _ in out}, key=natural_key)
    if unlisted:
        warnings.append(f"{order_file}: sections {', '.join(unlisted)} are not listed and "
                        "are ignored")
    return out


def grid_um_per_px(grid_um: np.ndarray, pixels: np.ndarray, path: Path) -> float:
    """µm per image pixel from the affine fit of pixel positions on the spots' nominal
    positions in µm (array index × pitch): the data's own scale, rotation-free."""
    design = np.c_[grid_um, np.ones(len(grid_um))]
    if len(grid_um) >= 3 and np.linalg.matrix_rank(design) == 3:
        coef, *_ = np.linalg.lstsq(design, pixels, rcond=None)
        px_per_um = float(np.sqrt(abs(np.linalg.det(coef[:2]))))
        if np.isfinite(px_per_um) and px_per_um > 0:
            return 1.0 / px_per_um
    raise InputError("cannot determine µm/px: fewer than 3 spots off one line", path=path,
                     fix="check the spot positions of this section")


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
