"""Section alignment (DESIGN §3.3): every section of a sample into one frame in µm.

Tissue shape leads. Adjacent H&E sections tens of µm apart share their outline and coarse
anatomy, not their cells, so keypoint matching finds only a handful of true matches.
Each pair is therefore registered in four steps, after checking that the two tissue areas
agree (a rigid transform cannot hide an image whose µm/px is wrong: areas of adjacent her2st
sections differ by < 3 %, a wrong resolution shows as a squared scale):

1. a brute-force rotation and flip search on tissue masks at ~44 µm/px, starting from the
   centres of mass (plus OpenCV SIFT+RANSAC's estimate, when it finds enough inliers);
2. ANTs rigid registration from the best starts on tissue-weighted darkness images;
3. ANTs refinement of the winner at ~11 µm/px (optionally affine, optionally SyN);
4. plausibility checks (scale, shear, overlap, and an overlap no worse than superposing
   the tissue centres unrotated) that name the pair when they fail.

Pairs are neighbour to neighbour and composed toward the reference section (the middle
one by default). The aligned frame is the reference's full-resolution pixel frame in µm.

Conventions: matrices are 3×3 and act on column vectors (x, y, 1) with x = image column,
y = image row. Rotation angles are in degrees; positive turns the image clockwise as
displayed (y points down). ``flip`` mirrors x of the moving section before rotating.
API, arrays in, arrays out, no files: ``align_sample`` (the whole sample, in this process),
and its parts for callers that run pairs elsewhere (ingest/step_align.py, one Dask task per
pair): ``plan_pairs``, ``prepare_section``, ``register_pair`` and ``compose``; the checks
``check_plausible`` and ``check_tissue_areas``. The ANTs calls live in ingest/ants_pair.py,
the matrix geometry in ingest/geometry.py.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import numpy as np

from asign.errors import AlignmentError, ConfigError
from asign.ingest.ants_pair import AntsPair, ants_env
from asign.ingest.geometry import Decomposition, apply_transform, decompose, rigid_matrix
from asign.ingest.tissue import tissue_mask

__all__ = ["Decomposition", "InitGuess", "PairPlan", "PairQC", "PairResult", "PreparedSection",
           "SectionTransform", "align_sample", "apply_transform", "check_plausible",
           "check_tissue_areas", "compose", "decompose", "dice", "plan_pairs", "prepare_section",
           "register_pair", "rigid_matrix"]

log = logging.getLogger(__name__)

WORK_UM = 11.0         # registration grid; finer thumbnails are reduced to it
SEARCH_UM = 44.0       # brute-force rotation/flip search grid
SEARCH_DEG = 30.0      # automatic search range, ± around 0
USER_SEARCH_DEG = 10.0 # search range around a user's initial rotation
SEARCH_STEP_DEG = 2.0
STARTS_PER_FLIP = 2    # ANTs starts per mirror state
MIN_FEATURE_INLIERS = 8
MIN_OVERLAP = 0.3      # Dice below this after registration means it failed
MAX_OVERLAP_LOSS = 0.05  # ... as does a Dice this much below superposing the centres unrotated


@dataclass(frozen=True)
class InitGuess:
    """A user's hint for one pair (moving → fixed) when automatic matching fails."""

    rotation_deg: float = 0.0
    flip: bool = False  # mirror x of the moving section


@dataclass(frozen=True)
class PairQC:
    moving: str
    fixed: str
    ransac_inliers: int    # SIFT+RANSAC inliers (few on H&E sections; recorded, not trusted)
    overlap_before: float  # Dice of tissue masks with centres of mass superposed
    overlap_after: float   # Dice after registration
    rotation_deg: float
    scale: float
    shear: float
    flipped: bool
    metric: float          # ANTs mean-squares metric of the final registration (lower is better)
    scale_x: float = 1.0
    scale_y: float = 1.0


@dataclass(frozen=True)
class SectionTransform:
    section_id: str
    reference_id: str
    matrix: np.ndarray  # 3×3: full-res pixel (px, py, 1) of this section → aligned µm (x, y, 1)
    qc: PairQC | None   # the pair linking this section to its neighbour toward the reference
    method: str
    # syn=True only: displacement (H, W, 2) in µm on a grid of the neighbour's frame
    # (``warp_grid``: grid px → neighbour µm). A point y = pair(x) of this section, in the
    # neighbour's µm, lands at y + warp(y) (ANTs' inverse warp; see ingest/deform.py, which
    # chains it to the reference; ``matrix`` stays the affine part alone).
    warp: np.ndarray | None = None
    warp_grid: np.ndarray | None = None
    pair: np.ndarray | None = None  # this section's µm → the neighbour's µm (None: reference)


# --- checks -------------------------------------------------------------------------------

def check_plausible(matrix: np.ndarray, moving: str, fixed: str,
                    max_scale_dev: tuple[float, float] = (0.8, 1.25),
                    max_shear: float = 0.15) -> Decomposition:
    """Reject transforms no microtome produces. Raises AlignmentError naming the pair."""
    d = decompose(matrix)
    lo, hi = max_scale_dev
    fix = (f"give an initial rotation/flip for the pair {moving}:{fixed}, or check that both "
           "images have the same µm/px")
    if not (lo <= d.scale_x <= hi and lo <= d.scale_y <= hi):
        raise AlignmentError(f"pair {moving}->{fixed}: implausible scale "
                             f"{d.scale_x:.3f}×{d.scale_y:.3f} (allowed {lo}–{hi})", fix=fix)
    if abs(d.shear) > max_shear:
        raise AlignmentError(f"pair {moving}->{fixed}: implausible shear {d.shear:.3f} "
                             f"(allowed ±{max_shear})", fix=fix)
    return d


def check_tissue_areas(moving: str, area_moving_um2: float, fixed: str, area_fixed_um2: float,
                       max_scale_dev: tuple[float, float] = (0.8, 1.25),
                       path: str | None = None) -> float:
    """The linear scale the two tissue areas imply; AlignmentError naming the pair (and
    ``path``, the images) when it is outside ``max_scale_dev``, the bounds check_plausible
    puts on a transform."""
    lo, hi = max_scale_dev
    scale = float(np.sqrt(area_moving_um2 / area_fixed_um2)) if area_fixed_um2 > 0 else float("inf")
    if not lo <= scale <= hi:
        raise AlignmentError(
            f"pair {moving}->{fixed}: the tissue areas ({area_moving_um2 / 1e6:.2f} vs "
            f"{area_fixed_um2 / 1e6:.2f} mm²) imply a scale of {scale:.2f} (allowed {lo}–{hi}); no "
            "plausible transform aligns them",
            path=path,
            fix="check that each image has the µm/px its spot file implies (an image exported at "
                "another resolution?), or leave out a section that is torn or only partly imaged")
    return scale


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


# --- per-section working images -----------------------------------------------------------

@dataclass(frozen=True)
class PreparedSection:
    name: str
    mask: np.ndarray    # bool, registration grid
    image: np.ndarray   # float32 registration image (tissue-weighted darkness)
    grey: np.ndarray    # uint8 contrast-equalised grey, for keypoints
    frame: np.ndarray   # registration-grid pixel → section µm (its full-res pixel frame × µm/px)

    @property
    def area_um2(self) -> float:
        return float(self.mask.sum()) * abs(float(np.linalg.det(self.frame[:2, :2])))

    @property
    def centroid(self) -> np.ndarray:
        ys, xs = np.nonzero(self.mask)
        x, y = apply_transform(self.frame, xs.mean(), ys.mean())
        return np.array([float(x), float(y)])


def _resized_frame(frame: np.ndarray, old_hw: tuple[int, ...],
                   new_hw: tuple[int, ...]) -> np.ndarray:
    """Frame of an image resized from ``old_hw`` to ``new_hw`` (pixel centres preserved)."""
    kx, ky = old_hw[1] / new_hw[1], old_hw[0] / new_hw[0]
    return frame @ np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def prepare_section(name: str, thumb: np.ndarray, mask: np.ndarray, downsample: float,
                    um_per_px: float) -> PreparedSection:
    import cv2

    thumb_um = downsample * um_per_px
    h, w = mask.shape
    hw = (h, w)
    if thumb_um < WORK_UM:
        f = thumb_um / WORK_UM
        hw = (max(8, round(h * f)), max(8, round(w * f)))
    # thumbnail pixel t covers full-res [t·ds, (t+1)·ds): its centre is (t + 0.5)·ds − 0.5
    thumb_frame = np.diag([um_per_px, um_per_px, 1.0]) @ np.array(
        [[downsample, 0, 0.5 * downsample - 0.5], [0, downsample, 0.5 * downsample - 0.5],
         [0, 0, 1]])
    frame = _resized_frame(thumb_frame, (h, w), hw)
    if hw != (h, w):
        thumb = _resize(thumb, hw)
        mask = _resize(mask.astype(np.float32), hw) > 0.5
    grey = cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY)
    dark = 1.0 - grey.astype(np.float32) / 255.0
    # Darkness normalised to the tissue's median: stain strength differs between sections,
    # the mean-squares metric must not chase it.
    image = np.where(mask, np.clip(dark / max(float(np.median(dark[mask])), 1e-3), 0.0, 2.0), 0.0)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    return PreparedSection(name, mask, image, grey, frame)


def _warp_mask(src: np.ndarray, src_frame: np.ndarray, dst_shape: tuple[int, ...],
               dst_frame: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Moving mask resampled onto the fixed grid through µm transform ``m``."""
    import cv2

    pix = np.linalg.inv(dst_frame) @ m @ src_frame
    out = cv2.warpAffine(src.astype(np.uint8), pix[:2], (dst_shape[1], dst_shape[0]),
                         flags=cv2.INTER_NEAREST)
    return out.astype(bool)


# --- starts: brute-force mask search and keypoints -----------------------------------------

def _search_starts(mov: PreparedSection, fix: PreparedSection,
                   guess: InitGuess | None) -> list[tuple[float, np.ndarray, bool]]:
    """(Dice, start matrix, flipped) of the best rotations per mirror state."""
    def coarse(s: PreparedSection) -> tuple[np.ndarray, np.ndarray]:
        f = s.frame[0, 0] / SEARCH_UM
        hw = (max(8, round(s.mask.shape[0] * f)), max(8, round(s.mask.shape[1] * f)))
        return (_resize(s.mask.astype(np.float32), hw) > 0.5,
                _resized_frame(s.frame, s.mask.shape, hw))

    (mm, mf), (fm, ff) = coarse(mov), coarse(fix)
    cm, cf = mov.centroid, fix.centroid
    if guess is None:
        flips, angles = (False, True), np.arange(-SEARCH_DEG, SEARCH_DEG + 1e-9, SEARCH_STEP_DEG)
    else:
        flips = (guess.flip,)
        angles = guess.rotation_deg + np.arange(-USER_SEARCH_DEG, USER_SEARCH_DEG + 1e-9,
                                                SEARCH_STEP_DEG)
    starts = []
    for flip in flips:
        scored = [(dice(_warp_mask(mm, mf, fm.shape, ff, rigid_matrix(a, flip, cm, cf)), fm), a)
                  for a in angles]
        picked: list[tuple[float, float]] = []
        for score, a in sorted(scored, reverse=True):
            if all(abs(a - b) > 2 * SEARCH_STEP_DEG for _, b in picked):
                picked.append((score, a))
            if len(picked) == STARTS_PER_FLIP:
                break
        starts += [(s, rigid_matrix(a, flip, cm, cf), flip) for s, a in picked]
    return starts


def _keypoint_start(mov: PreparedSection, fix: PreparedSection,
                    flip: bool) -> tuple[int, np.ndarray | None]:
    """SIFT + ratio test + RANSAC similarity. Returns (inliers, µm start matrix or None)."""
    import cv2

    grey = mov.grey[:, ::-1].copy() if flip else mov.grey
    mask = mov.mask[:, ::-1] if flip else mov.mask
    kernel = np.ones((9, 9), np.uint8)
    sift = cv2.SIFT_create(nfeatures=3000)
    ka, da = sift.detectAndCompute(grey, cv2.dilate(mask.astype(np.uint8), kernel) * 255)
    kb, db = sift.detectAndCompute(fix.grey, cv2.dilate(fix.mask.astype(np.uint8), kernel) * 255)
    if da is None or db is None or len(ka) < 3 or len(kb) < 3:
        return 0, None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < 3:
        return 0, None
    src = np.float32([ka[g.queryIdx].pt for g in good])
    dst = np.float32([kb[g.trainIdx].pt for g in good])
    est, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0,
                                           maxIters=5000, confidence=0.999)
    n = int(inl.sum()) if inl is not None else 0
    if est is None or n < MIN_FEATURE_INLIERS \
            or not 0.9 <= np.sqrt(abs(np.linalg.det(est[:, :2]))) <= 1.1:
        return n, None
    pix = np.vstack([est, [0, 0, 1]])
    mirror = (np.array([[-1.0, 0, mov.mask.shape[1] - 1], [0, 1, 0], [0, 0, 1]]) if flip
              else np.eye(3))
    return n, fix.frame @ pix @ mirror @ np.linalg.inv(mov.frame)


# --- one pair ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairPlan:
    """One adjacent pair to register: ``moving`` onto its neighbour ``fixed`` (toward the
    reference), with the user's hint for it, if any."""

    moving: str
    fixed: str
    guess: InitGuess | None


@dataclass(frozen=True)
class PairResult:
    """What registering one pair found (moving µm → fixed µm)."""

    moving: str
    fixed: str
    matrix: np.ndarray
    qc: PairQC
    method: str
    warp: np.ndarray | None = None  # syn only: see SectionTransform.warp
    grid: np.ndarray | None = None


def register_pair(mov: PreparedSection, fix: PreparedSection, guess: InitGuess | None, *,
                  transform: str = "rigid", syn: bool = False, seed: int = 0,
                  max_scale_dev: tuple[float, float] = (0.8, 1.25),
                  max_shear: float = 0.15, sources: tuple[str, str] | None = None) -> PairResult:
    """Register one pair; independent of every other pair (a unit of work of its own).
    AlignmentError names the pair, and ``sources`` (the two images) when given."""
    try:
        m, qc, method, warp, grid = _register_pair(mov, fix, guess, transform, syn, seed,
                                                   max_scale_dev, max_shear)
    except AlignmentError as err:
        if not sources or err.path is not None:
            raise
        raise AlignmentError(err.message, path=", ".join(sources), fix=err.fix) from None
    return PairResult(mov.name, fix.name, m, qc, method, warp, grid)


def _register_pair(mov: PreparedSection, fix: PreparedSection, guess: InitGuess | None,
                   transform: str, syn: bool, seed: int, max_scale_dev: tuple[float, float],
                   max_shear: float
                   ) -> tuple[np.ndarray, PairQC, str, np.ndarray | None, np.ndarray | None]:
    check_tissue_areas(mov.name, mov.area_um2, fix.name, fix.area_um2, max_scale_dev)
    starts = _search_starts(mov, fix, guess)
    inliers: dict[bool, int] = {}
    for flip in sorted({f for _, _, f in starts}):
        inliers[flip], m = _keypoint_start(mov, fix, flip)
        if m is not None:
            starts.append((np.nan, m, flip))
    before = dice(_warp_mask(mov.mask, mov.frame, fix.mask.shape, fix.frame,
                             rigid_matrix(0.0, False, mov.centroid, fix.centroid)), fix.mask)

    warp = grid = None
    with ants_env(seed), tempfile.TemporaryDirectory(prefix="asign-align-") as tmp:
        reg = AntsPair(mov, fix, tmp)
        tried = []
        for _, start, _ in starts:
            m, _ = reg.run(start, "Rigid", shrink=(4, 2), iterations=(100, 50))
            tried.append((dice(_warp_mask(mov.mask, mov.frame, fix.mask.shape, fix.frame, m),
                               fix.mask), m))
        best = max(tried, key=lambda t: t[0])[1]
        m, metric = reg.run(best, "Rigid", shrink=(2, 1), iterations=(100, 50))
        method = "ants-rigid"
        if transform == "affine":
            m, metric = reg.run(m, "Affine", shrink=(2, 1), iterations=(100, 50))
            method = "ants-rigid+affine"
        if syn:
            warp, grid = reg.syn(m)
            method += "+syn"

    d = check_plausible(m, mov.name, fix.name, max_scale_dev, max_shear)
    after = dice(_warp_mask(mov.mask, mov.frame, fix.mask.shape, fix.frame, m), fix.mask)
    hint = (f"check or drop the initial rotation/flip given for the pair {mov.name}:{fix.name} "
            "(--init)" if guess is not None
            else f"give an initial rotation/flip for the pair {mov.name}:{fix.name}")
    if after < MIN_OVERLAP:
        raise AlignmentError(f"pair {mov.name}->{fix.name}: registration failed, tissue overlap "
                             f"{after:.2f} after alignment (before {before:.2f})", fix=hint)
    if after < before - MAX_OVERLAP_LOSS:
        raise AlignmentError(f"pair {mov.name}->{fix.name}: registration failed, tissue overlap "
                             f"{after:.2f} after alignment is below the {before:.2f} of "
                             "merely superposing the tissue centres",
                             fix=hint)
    qc = PairQC(moving=mov.name, fixed=fix.name, ransac_inliers=inliers.get(d.flipped, 0),
                overlap_before=before, overlap_after=after, rotation_deg=d.rotation_deg,
                scale=d.scale, shear=d.shear, flipped=d.flipped, metric=metric, scale_x=d.scale_x,
                scale_y=d.scale_y)
    log.info("aligned %s->%s: rotation %.2f°, flipped %s, overlap %.3f -> %.3f, "
             "%d keypoint inliers", mov.name, fix.name, d.rotation_deg, d.flipped, before, after,
             qc.ransac_inliers)
    return m, qc, method, warp, grid


# --- the sample ----------------------------------------------------------------------------

def _guess_for(init: dict[tuple[str, str], InitGuess], moving: str, fixed: str) -> InitGuess | None:
    if (moving, fixed) in init:
        return init[(moving, fixed)]
    if (fixed, moving) in init:  # the inverse hint: a mirror is its own inverse
        g = init[(fixed, moving)]
        return InitGuess(rotation_deg=g.rotation_deg if g.flip else -g.rotation_deg, flip=g.flip)
    return None


def plan_pairs(order: list[str], *, reference: str | None = None,
               init: dict[tuple[str, str], InitGuess] | None = None,
               transform: str = "rigid") -> tuple[str, list[PairPlan]]:
    """The reference section and the adjacent pairs of ``order`` (z order), each moving
    section onto its neighbour toward the reference, nearest the reference first. Checks
    the options (ConfigError) before any work."""
    if transform not in ("rigid", "affine"):
        raise ConfigError(f"unknown alignment transform {transform!r}",
                          fix="use 'rigid' or 'affine'")
    ref = order[len(order) // 2] if reference is None and order else reference
    if ref not in order:
        raise ConfigError(f"reference section {ref!r} is not among the imaged sections {order}",
                          fix="pick one of the listed sections")
    init = dict(init or {})
    adjacent = set(zip(order, order[1:], strict=False)) | set(zip(order[1:], order, strict=False))
    unknown = [f"{a}:{b}" for a, b in init if (a, b) not in adjacent]
    if unknown:
        raise ConfigError(
            f"initial guesses for non-adjacent or unknown pairs: {', '.join(unknown)}",
            fix="give hints only for neighbouring sections, e.g. "
                + ", ".join(f"{a}:{b}" for a, b in zip(order, order[1:], strict=False)))
    r = order.index(ref)
    plans = []
    # outward from the reference: composing in this order places each fixed neighbour first
    for i in list(range(r - 1, -1, -1)) + list(range(r + 1, len(order))):
        mov, fix = order[i], order[i + 1 if i < r else i - 1]
        plans.append(PairPlan(mov, fix, _guess_for(init, mov, fix)))
    return ref, plans


def compose(order: list[str], reference: str, um_per_px: dict[str, float],
            pairs: list[PairResult]) -> list[SectionTransform]:
    """Chain the pairs (in :func:`plan_pairs` order) to the reference: every section's
    full-resolution pixels → the reference's frame in µm."""
    um = um_per_px
    out = {reference: SectionTransform(reference, reference,
                                       np.diag([um[reference], um[reference], 1.0]), None,
                                       "identity(reference)")}
    for p in pairs:
        um_f, um_m = um[p.fixed], um[p.moving]
        matrix = (out[p.fixed].matrix @ np.diag([1 / um_f, 1 / um_f, 1.0]) @ p.matrix
                  @ np.diag([um_m, um_m, 1.0]))
        out[p.moving] = SectionTransform(p.moving, reference, matrix, p.qc, p.method, p.warp,
                                         p.grid, p.matrix)
    return [out[sid] for sid in order]


def align_sample(
    thumbs: dict[str, np.ndarray],
    thumb_downsample: dict[str, float],
    um_per_px: dict[str, float],
    *,
    reference: str | None = None,
    init: dict[tuple[str, str], InitGuess] | None = None,
    transform: str = "rigid",
    syn: bool = False,
    seed: int = 0,
    max_scale_dev: tuple[float, float] = (0.8, 1.25),
    max_shear: float = 0.15,
    masks: dict[str, np.ndarray] | None = None,
    sources: dict[str, str] | None = None,
) -> list[SectionTransform]:
    """Register the sections (dict order = z order) into the reference section's frame in µm.

    ``masks`` may carry tissue masks already computed at thumbnail resolution; missing ones
    are detected here. Raises AlignmentError naming the pair for implausible results, and
    the pair's ``sources`` (e.g. image paths) when given."""
    order = list(thumbs)
    ref, plans = plan_pairs(order, reference=reference, init=init, transform=transform)
    masks = dict(masks or {})
    secs = {sid: prepare_section(sid, thumbs[sid],
                                 masks[sid] if sid in masks
                                 else tissue_mask(thumbs[sid], f"section {sid}"),
                                 float(thumb_downsample[sid]), float(um_per_px[sid]))
            for sid in order}
    pairs = [register_pair(secs[p.moving], secs[p.fixed], p.guess, transform=transform, syn=syn,
                           seed=seed, max_scale_dev=max_scale_dev, max_shear=max_shear,
                           sources=(sources[p.moving], sources[p.fixed]) if sources else None)
             for p in plans]
    return compose(order, ref, um_per_px, pairs)
