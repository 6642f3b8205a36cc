"""Sample readers, one per input layout, held in the ``READERS`` registry. The CLI's
``--format`` choices, ``asign doctor`` and the docs read from it.

``read_samples`` is the one entry point: detect the layout, read the selected samples,
and apply the checks that hold for every layout (≥2 sections per 3D sample, section ids
unique across samples)."""

from __future__ import annotations

from pathlib import Path

from asign.errors import ConfigError, InputError
from asign.ingest.readers import her2st, manifest, visium, visium_hd, xenium, zarr
from asign.ingest.readers.base import Reader, ReadOptions, sample_matches
from asign.ingest.sample import SampleInput

# Order is detection priority: an explicit manifest wins over a folder's layout.
READERS: dict[str, Reader] = {r.name: r for r in (
    manifest.READER, zarr.READER, her2st.READER, visium_hd.READER, xenium.READER, visium.READER)}

__all__ = ["READERS", "ReadOptions", "Reader", "detect_format", "read_samples", "list_samples"]


def _layouts() -> str:
    return "; ".join(f"{r.name}: {r.description}" for r in READERS.values())


def detect_format(path: Path) -> str:
    """Name of the first registered reader that recognises ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputError("sample source not found", path=path, fix="check the path")
    for name, reader in READERS.items():
        if reader.detect(path):
            return name
    raise InputError(
        "not a known sample layout",
        path=path,
        fix=f"pass --format explicitly or arrange the folder as one of: {_layouts()}",
    )


def _reader(src: Path, fmt: str) -> Reader:
    name = detect_format(src) if fmt == "auto" else fmt
    if name not in READERS:
        raise ConfigError(
            f"unknown format {fmt!r}",
            fix=f"use one of: auto, {', '.join(READERS)}",
        )
    reader = READERS[name]
    if fmt != "auto" and not reader.detect(src):
        raise InputError(
            f"does not look like the {name} layout",
            path=src,
            fix=f"use --format auto, or arrange it as {reader.description}",
        )
    return reader


def list_samples(src: Path, fmt: str = "auto") -> list[str]:
    """Sample ids available in ``src`` without parsing counts or images."""
    src = Path(src)
    return _reader(src, fmt).list_samples(src)


def read_samples(
    src: Path,
    fmt: str = "auto",
    samples: str | None = None,
    *,
    allow_single: bool = False,
    options: ReadOptions | None = None,
) -> list[SampleInput]:
    """Read the samples of ``src`` whose id matches ``samples`` (a name, a glob, or a
    comma-separated list; None = all).

    A sample with one section is not a 3D sample: it is an error unless ``allow_single``
    (the caller uses it as extra 2D training data)."""
    src = Path(src)
    reader = _reader(src, fmt)
    available = reader.list_samples(src)
    if not any(sample_matches(s, samples) for s in available):
        raise InputError(
            f"no sample matches {samples!r} (available: {', '.join(available) or 'none'})",
            path=src,
            fix="pass --samples with one of the available sample ids or a glob",
        )
    out = reader.read(src, samples, options or ReadOptions())
    single = [s.sample_id for s in out if len(s.sections) < 2]
    if single and not allow_single:
        raise InputError(
            f"sample {', '.join(single)} has one section; asign needs ≥2 sections of one block",
            path=src,
            fix="add sections, select other samples with --samples, or use it as extra 2D training "
                "data with --extra-2d",
        )
    if not allow_single:
        _check_placed(out, src, reader)
    owner: dict[str, str] = {}
    for sample in out:
        for section in sample.sections:
            other = owner.setdefault(section.section_id, sample.sample_id)
            if other != sample.sample_id:
                raise InputError(
                    f"section id {section.section_id} is used by samples {other} and "
                    f"{sample.sample_id}",
                    path=src,
                    fix="give sections store-unique names (e.g. prefix them with the sample id)",
                )
    return out


def _check_placed(samples: list[SampleInput], src: Path, reader: Reader) -> None:
    """A section is placed by an image (aligned later) or by aligned coordinates given with
    the input; a sample with no placed section has nothing to build on. Say what is missing
    before anything runs (one placed section passes: it can still train as a 2D section)."""
    for sample in samples:
        if any(s.has_image or s.has_aligned_coords for s in sample.sections):
            continue
        raise InputError(
            f"sample {sample.sample_id}: none of its sections can be placed in 3D; "
            f"{', '.join(s.section_id for s in sample.sections)} have neither an H&E image nor "
            "aligned x_um, y_um",
            path=src,
            fix=f"add the images ({reader.name} layout: {reader.description}), or give aligned "
                "coordinates per spot in a manifest (README: 'Bring your own alignment')",
        )
