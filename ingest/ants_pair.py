"""The ANTs adapter of alignment (ingest/align.py): one pair's images as ANTs images,
seeded single-threaded registrations from a given start, and the affine or SyN result
back as our matrices and arrays.

Conventions as in ingest/align.py: 3×3 matrices act on (x, y, 1) column vectors with
x = image column; an image is handed over with its ``frame`` (grid pixel → section µm).
ITK transforms map fixed points to moving points, ours moving to fixed: inverted at the
boundary here and nowhere else."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SYN_ITERATIONS = (40, 20, 0)
# SyN smoothing, variances in registration-grid pixels (~11 µm): ANTs' update-field default,
# plus a smoothed total field. Adjacent sections share tissue shape, not cells, so only a
# smooth deformation is believable; on her2st C the unsmoothed field (ANTs' total 0) moved
# spots up to ~190 µm and lowered the expression referee on 3 of 4 pairs (bench/alignment.py).
SYN_FLOW_SIGMA = 3.0
SYN_TOTAL_SIGMA = 3.0


class Section(Protocol):
    """What a registration needs of a section (ingest/align.py's prepared section)."""

    mask: np.ndarray
    image: np.ndarray
    frame: np.ndarray


@contextlib.contextmanager
def ants_env(seed: int) -> Iterator[None]:
    """Seeded sampling (ANTs otherwise seeds from the clock) and one ITK thread, so the result
    does not depend on the machine. Restores the environment afterwards."""
    wanted = {"ANTS_RANDOM_SEED": str(seed + 1), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in (k for k, v in saved.items() if v is None):
            del os.environ[k]


def to_ants(img: np.ndarray, frame: np.ndarray) -> Any:
    import ants

    # transposed so that ITK's first axis is x (image column), like our matrices
    return ants.from_numpy(np.ascontiguousarray(img.T, dtype=np.float32),
                           origin=(float(frame[0, 2]), float(frame[1, 2])),
                           spacing=(float(frame[0, 0]), float(frame[1, 1])))


def _write_start(m: np.ndarray, path: str) -> None:
    import ants

    inv = np.linalg.inv(m)  # ITK transforms map fixed points to moving points
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="float",
                                    dimension=2, matrix=inv[:2, :2], translation=inv[:2, 2],
                                    center=(0.0, 0.0))
    ants.write_transform(tx, path)


def _read_affine(path: str) -> np.ndarray:
    import ants

    tx = ants.read_transform(path)
    pts = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0]])
    q = np.array([tx.apply_to_point(tuple(p)) for p in pts])
    inv = np.eye(3)
    inv[:2, :2] = np.c_[q[1] - q[0], q[2] - q[0]] / 1000.0
    inv[:2, 2] = q[0]
    return np.linalg.inv(inv)


@dataclass
class AntsPair:
    """ANTs registrations of one pair (moving → fixed), sharing images and a scratch folder.
    Run inside :func:`ants_env`."""

    mov: Section
    fix: Section
    tmp: str

    def __post_init__(self) -> None:
        import cv2

        self.fixed = to_ants(self.fix.image, self.fix.frame)
        self.moving = to_ants(self.mov.image, self.mov.frame)
        # Metric only near the fixed tissue: 4× fewer samples, same optimum.
        near = cv2.dilate(self.fix.mask.astype(np.uint8),
                          np.ones((41, 41), np.uint8)).astype(np.float32)
        self.metric_mask = to_ants(near, self.fix.frame)
        self.calls = 0

    def _prefix(self, start: np.ndarray) -> str:
        self.calls += 1
        prefix = os.path.join(self.tmp, f"r{self.calls}_")
        _write_start(start, prefix + "init.mat")
        return prefix

    def run(self, start: np.ndarray, kind: str, shrink: tuple[int, ...],
            iterations: tuple[int, ...]) -> tuple[np.ndarray, float]:
        """A ``kind`` ("Rigid", "Affine") registration from ``start`` (µm, moving → fixed):
        the result as a µm matrix and its mean-squares metric (lower is better)."""
        import ants

        prefix = self._prefix(start)
        out = ants.registration(self.fixed, self.moving, type_of_transform=kind,
                                initial_transform=[prefix + "init.mat"],
                                outprefix=prefix, mask=self.metric_mask, mask_all_stages=True,
                                aff_metric="meansquares", aff_random_sampling_rate=0.25,
                                aff_iterations=iterations, aff_shrink_factors=shrink,
                                aff_smoothing_sigmas=tuple(s // 2 for s in shrink))
        metric = ants.image_similarity(self.fixed, out["warpedmovout"], metric_type="MeanSquares")
        return _read_affine(out["fwdtransforms"][0]), float(metric)

    def syn(self, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SyN after ``affine``: the displacement (H, W, 2) in µm on the fixed grid, and
        that grid's frame."""
        import ants

        prefix = self._prefix(affine)
        out = ants.registration(self.fixed, self.moving, type_of_transform="SyNOnly",
                                initial_transform=[prefix + "init.mat"], outprefix=prefix,
                                syn_metric="meansquares", reg_iterations=SYN_ITERATIONS,
                                flow_sigma=SYN_FLOW_SIGMA, total_sigma=SYN_TOTAL_SIGMA)
        # The inverse warp moves points of the moving section (after the affine) onto the
        # fixed one: what spots need. Checked against ants.apply_transforms_to_points.
        warps = [p for p in out["invtransforms"] if p.endswith((".nii.gz", ".nii"))]
        field = ants.image_read(warps[0]).numpy()  # (W, H, 2): our images are transposed
        return np.ascontiguousarray(np.transpose(field, (1, 0, 2))), self.fix.frame
