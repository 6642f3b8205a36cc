"""Stain normalisation of the encoder's input, and the dihedral views of test-time
augmentation: two ingest options that change what the frozen encoder sees.

Stain (``--stain-norm``): serial sections stained on different days differ in hue and
intensity, and a frozen ImageNet encoder reads that as signal. ``macenko`` maps every patch
and tile to one reference stain (Macenko et al., ISBI 2009, as ``torchstain`` implements
it): the reference's stain vectors and concentration scale are fitted once per sample on
the tissue of its panel layer (``--panel-from``, the known layer of the default protocol),
from a mosaic of up to ``REFERENCE_PATCHES`` of its spot patches; every image is then
normalised with its own stain vectors estimated from its own pixels. Images only: no
expression value enters. A patch with too little tissue to estimate its stain (blank
glass, a fold) is kept as it is and counted; the counts are logged per sample. A
reference section whose tissue cannot be fitted is a one-line error.

TTA (``--tta``): the encoder's features averaged over 1, 2, 4 or 8 of the dihedral views
of each image (identity, the three rotations by 90°, and the transposes of the four):
H&E has no preferred orientation, so the average is a feature that does not depend on
how the slide was laid on the scanner. It costs ``tta`` × the encoder's time."""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asign.errors import InputError

log = logging.getLogger(__name__)

STAIN_NORMS = ("none", "macenko")
TTA_VIEWS = (1, 2, 4, 8)
REFERENCE_PATCHES = 64  # spot patches of the reference section in the fitting mosaic


class StainError(InputError):
    """The reference section's tissue gives no stain reference."""


def _macenko() -> Any:
    from torchstain.numpy.normalizers.macenko import NumpyMacenkoNormalizer

    return NumpyMacenkoNormalizer()


@dataclass
class StainReference:
    """A fitted reference stain and the count of images kept unnormalised (thread-safe)."""

    method: str
    section: str
    stain_matrix: np.ndarray  # (3, 2) optical-density vectors of haematoxylin and eosin
    max_concentration: np.ndarray  # (2,) 99th percentiles of their concentrations
    kept: int = 0
    seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _normaliser: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._normaliser = _macenko()
        self._normaliser.HERef = self.stain_matrix
        self._normaliser.maxCRef = self.max_concentration

    def __getstate__(self) -> dict[str, Any]:  # to a Dask worker: no lock, no normaliser
        return {"method": self.method, "section": self.section,
                "stain_matrix": self.stain_matrix, "max_concentration": self.max_concentration}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W, 3) uint8 in the reference stain; as it is when its own stain
        cannot be estimated (too few tissue pixels, a degenerate optical density)."""
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                out, _, _ = self._normaliser.normalize(I=image, stains=False)
            ok = out.shape == image.shape and bool(np.isfinite(out).all())
        except (ValueError, IndexError, np.linalg.LinAlgError):
            ok = False
        with self._lock:
            self.seen += 1
            self.kept += not ok
        return np.ascontiguousarray(out, dtype=np.uint8) if ok else image

    def wrap(self, loader: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: self.normalise(np.asarray(loader()))

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: the method, the reference section and the fit."""
        digest = hashlib.sha256(np.concatenate([self.stain_matrix.ravel(),
                                                self.max_concentration]).tobytes())
        # full precision (JSON keeps a float64 exactly): fine-tuning rebuilds the fit from it
        return {"method": self.method, "reference_section": self.section,
                "stain_matrix": self.stain_matrix.tolist(),
                "max_concentration": self.max_concentration.tolist(),
                "sha256": digest.hexdigest()}

    def log_kept(self, sample_id: str) -> None:
        if self.kept:
            log.warning("stain normalisation, sample %s: %d of %d images kept as they are "
                        "(too little tissue to estimate their stain)", sample_id, self.kept,
                        self.seen)


def fit_reference(method: str, section: str, images: list[np.ndarray]) -> StainReference:
    """The reference stain of ``section`` from its spot patches (a mosaic of up to
    ``REFERENCE_PATCHES`` of them, evenly spaced in the given order)."""
    if not images:
        raise StainError(f"section {section} has no spot patches to fit a {method} stain "
                         "reference on", fix="ingest with --stain-norm none, or check that the "
                         "section has spots inside its image")
    pick = np.linspace(0, len(images) - 1, min(len(images), REFERENCE_PATCHES)).round()
    mosaic = np.concatenate([np.asarray(images[int(i)]) for i in np.unique(pick)], axis=0)
    normaliser = _macenko()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            normaliser.fit(mosaic)
        he, max_c = np.asarray(normaliser.HERef, float), np.asarray(normaliser.maxCRef, float)
        if not (np.isfinite(he).all() and np.isfinite(max_c).all() and (max_c > 0).all()):
            raise ValueError("degenerate fit")
    except (ValueError, IndexError, np.linalg.LinAlgError):
        raise StainError(f"section {section}: its spot patches hold too little stained tissue "
                         f"to fit a {method} stain reference",
                         fix="ingest with --stain-norm none, or pick another reference layer "
                             "with --panel-from") from None
    return StainReference(method, section, he, max_c)


def with_sample(record: dict[str, Any] | None, sample_id: str,
                reference: StainReference) -> dict[str, Any]:
    """The manifest's stain record with ``sample_id``'s fit set: ``{"method", "samples":
    {sample_id: fit}}`` (each sample has its own reference; the others' fits are kept)."""
    same = isinstance(record, dict) and record.get("method") == reference.method
    kept = dict(record.get("samples") or {}) if same else {}
    return {"method": reference.method, "samples": {**kept, sample_id: reference.record()}}


def recorded_reference(record: dict[str, Any], sample_id: str) -> StainReference | None:
    """The reference ingest fitted for ``sample_id`` (``with_sample``'s record); None when the
    record has none for it (a store written before references were kept per sample)."""
    fit = (record.get("samples") or {}).get(sample_id)
    if fit is None:
        return None
    return StainReference(str(record["method"]), str(fit["reference_section"]),
                          np.asarray(fit["stain_matrix"], float),
                          np.asarray(fit["max_concentration"], float))


def dihedral_views(batch: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """The first ``n`` of the 8 dihedral views of an (N, H, W, C) batch, contiguous."""
    for k in range(n):
        view = np.rot90(batch, k % 4, axes=(1, 2))
        if k >= 4:
            view = view.transpose(0, 2, 1, 3)
        yield np.ascontiguousarray(view)
