"""Section alignment (ingest/align.py) and tissue detection (ingest/tissue.py).

Real-data tests use C4 and C5 of ../shared/data/her2st at ~22 µm/px. The authors'
alignment (ST-aligned warped_x/warped_y) is read here only, as the reference to measure
against; the product never sees it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from her2st_small import HER2ST

from asign.errors import AlignmentError, ConfigError, InputError
from asign.ingest.align import (
    InitGuess,
    align_sample,
    apply_transform,
    check_plausible,
    decompose,
    rigid_matrix,
)
from asign.ingest.overlay import render_overlay
from asign.ingest.tissue import tissue_mask

THUMB_UM = 22.0
PAIR = ("C4", "C5")

needs_data = pytest.mark.skipif(not (HER2ST / "ST-imgs").is_dir(),
                                reason="../shared/data/her2st not present")


def _spots(section: str) -> pd.DataFrame:
    return pd.read_csv(HER2ST / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")


def _um_per_px(section: str) -> float:
    s = _spots(section)
    coef, *_ = np.linalg.lstsq(np.c_[s.x, s.y, np.ones(len(s))], np.c_[s.pixel_x, s.pixel_y],
                               rcond=None)
    return 200.0 / float(np.sqrt(abs(np.linalg.det(coef[:2]))))


def _authors(section: str) -> np.ndarray:
    a = pd.read_csv(HER2ST / "ST-aligned" / f"{section}-cluster-annotation.tsv.gz", sep="\t")
    coef, *_ = np.linalg.lstsq(np.c_[a.pixel_x, a.pixel_y, np.ones(len(a))],
                               np.c_[a.warped_x, a.warped_y], rcond=None)
    m = np.eye(3)
    m[:2] = coef.T
    return m


def _thumb_frame(ds: float) -> np.ndarray:
    return np.array([[ds, 0, 0.5 * ds - 0.5], [0, ds, 0.5 * ds - 0.5], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def real_pair():
    from asign.ingest.images import read_thumbnail

    um = {s: _um_per_px(s) for s in PAIR}
    ds = {s: THUMB_UM / um[s] for s in PAIR}
    thumbs = {s: read_thumbnail(next((HER2ST / "ST-imgs" / "C" / s).glob("*.jpg")), ds[s])
              for s in PAIR}
    transforms = align_sample(thumbs, ds, um)
    return thumbs, ds, um, {t.section_id: t for t in transforms}


@needs_data
def test_real_pair_matches_authors_alignment(real_pair):
    _, _, um, tr = real_pair
    a, b = PAIR
    s = _spots(a)
    pts = np.c_[s.pixel_x, s.pixel_y, np.ones(len(s))].T
    ours = np.linalg.inv(tr[b].matrix) @ tr[a].matrix @ pts
    theirs = np.linalg.inv(_authors(b)) @ _authors(a) @ pts
    err = np.linalg.norm(ours[:2] - theirs[:2], axis=0) * um[b]
    assert np.median(err) <= 30.0, np.median(err)
    assert np.percentile(err, 95) <= 60.0, np.percentile(err, 95)

    assert tr[b].qc is None and tr[b].method == "identity(reference)"  # middle of two = index 1
    np.testing.assert_allclose(tr[b].matrix, np.diag([um[b], um[b], 1.0]))
    qc = tr[a].qc
    assert (qc.moving, qc.fixed) == (a, b)
    assert not qc.flipped and abs(qc.scale - 1.0) < 1e-3 and abs(qc.shear) < 1e-3
    assert qc.overlap_after > qc.overlap_before and qc.overlap_after > 0.95
    assert qc.ransac_inliers >= 0 and np.isfinite(qc.metric)


@needs_data
def test_alignment_is_deterministic(real_pair):
    thumbs, ds, um, tr = real_pair
    again = {t.section_id: t.matrix for t in align_sample(thumbs, ds, um)}
    for sid, t in tr.items():
        np.testing.assert_array_equal(again[sid], t.matrix)


@needs_data
@pytest.mark.parametrize("hint", [False, True], ids=["automatic", "user-hint"])
def test_mirrored_rotated_section_is_recovered(real_pair, hint):
    import cv2

    thumbs, ds, um, tr = real_pair
    fixed, moving = PAIR[1], PAIR[0]
    theta = 17.0
    h, w = thumbs[moving].shape[:2]
    c = np.array([w / 2, h / 2])
    s_px = rigid_matrix(theta, True, c, c)
    mirrored = cv2.warpAffine(thumbs[moving], s_px[:2], (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    f = _thumb_frame(ds[moving])
    s_full = f @ s_px @ np.linalg.inv(f)
    expected = tr[moving].matrix @ np.linalg.inv(s_full)  # full px of the copy -> aligned µm

    init = {("X", fixed): InitGuess(rotation_deg=theta, flip=True)} if hint else None
    out = align_sample({"X": mirrored, fixed: thumbs[fixed]}, {"X": ds[moving], fixed: ds[fixed]},
                       {"X": um[moving], fixed: um[fixed]}, reference=fixed, init=init)
    got = next(t for t in out if t.section_id == "X")
    assert got.qc.flipped
    assert abs(got.qc.rotation_deg - decompose(expected).rotation_deg) < 2.0
    # the copy's spots land where the plain run put the original's
    s = _spots(moving)
    pts = s_full @ np.c_[s.pixel_x, s.pixel_y, np.ones(len(s))].T
    err = np.linalg.norm((got.matrix @ pts)[:2] - (expected @ pts)[:2], axis=0)
    assert np.median(err) < 15.0


@needs_data
def test_overlay_shows_every_section(real_pair):
    thumbs, ds, um, tr = real_pair
    png = render_overlay(thumbs, ds, list(tr.values()), um)
    assert png.dtype == np.uint8 and png.ndim == 3 and png.shape[2] == 3
    assert min(png.shape[:2]) > 300
    # each section's outline colour is drawn (first two colours of the palette)
    for colour in [(31, 119, 180), (255, 127, 14)]:
        assert (np.abs(png.astype(int) - colour).sum(axis=2) < 30).sum() > 100


def test_implausible_transforms_are_rejected_naming_the_pair():
    c = np.array([5000.0, 5000.0])
    ok = rigid_matrix(12.0, True, c, c)
    d = check_plausible(ok, "C3", "C4")
    assert d.flipped and abs(d.rotation_deg - 12.0) < 1e-9 and abs(d.scale - 1.0) < 1e-12

    scaled = ok @ np.diag([1.4, 1.4, 1.0])
    with pytest.raises(AlignmentError, match=r"C3->C4.*scale"):
        check_plausible(scaled, "C3", "C4")
    shrunk = ok @ np.diag([1.0, 0.7, 1.0])
    with pytest.raises(AlignmentError, match=r"C3->C4.*scale"):
        check_plausible(shrunk, "C3", "C4")
    sheared = ok @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(AlignmentError, match=r"C5->C4.*shear"):
        check_plausible(sheared, "C5", "C4")
    check_plausible(sheared, "C5", "C4", max_shear=0.35)  # the bound is a parameter


def test_decompose_recovers_known_parameters():
    rot = np.radians(-14.0)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    upper = np.array([[1.1, 0.05 * 0.9], [0.0, 0.9]])
    m = np.eye(3)
    m[:2, :2] = r @ upper @ np.diag([-1.0, 1.0])
    d = decompose(m)
    assert d.flipped
    np.testing.assert_allclose([d.rotation_deg, d.scale_x, d.scale_y, d.shear],
                               [-14.0, 1.1, 0.9, 0.05], atol=1e-9)


def test_blank_image_has_no_tissue():
    blank = np.full((200, 240, 3), 236, np.uint8)
    blank += np.random.default_rng(0).integers(0, 3, blank.shape, dtype=np.uint8)  # JPEG-like noise
    with pytest.raises(InputError, match="slide_7.jpg.*no tissue"):
        tissue_mask(blank, name="slide_7.jpg")
    with pytest.raises(InputError, match="section C8.*no tissue"):
        align_sample({"C8": blank, "C9": blank}, {"C8": 16.0, "C9": 16.0}, {"C8": 0.7, "C9": 0.7})


def test_tissue_mask_finds_a_stained_blob_and_ignores_dust():
    img = np.full((200, 200, 3), (240, 228, 236), np.uint8)  # pinkish glass
    yy, xx = np.mgrid[:200, :200]
    img[(yy - 90) ** 2 + (xx - 110) ** 2 < 60**2] = (120, 70, 150)  # H&E purple
    img[(yy - 180) ** 2 + (xx - 20) ** 2 < 8**2] = (90, 90, 90)  # grey dust: dark, unsaturated
    mask = tissue_mask(img)
    assert mask[90, 110] and not mask[180, 20] and not mask[5, 5]
    assert abs(mask.sum() - np.pi * 60**2) < 0.05 * np.pi * 60**2


def test_apply_transform_round_trip():
    rng = np.random.default_rng(1)
    m = rigid_matrix(7.5, False, np.array([100.0, 200.0]),
                     np.array([3000.0, 1000.0])) @ np.diag([0.69, 0.69, 1])
    px, py = rng.uniform(0, 9000, 50), rng.uniform(0, 9000, 50)
    x, y = apply_transform(m, px, py)
    bx, by = apply_transform(np.linalg.inv(m), x, y)
    np.testing.assert_allclose(bx, px, atol=1e-8)
    np.testing.assert_allclose(by, py, atol=1e-8)
    # distances scale by µm/px exactly
    np.testing.assert_allclose(np.hypot(x[1] - x[0], y[1] - y[0]),
                               0.69 * np.hypot(px[1] - px[0], py[1] - py[0]))


def test_hints_for_unknown_pairs_are_refused():
    img = np.zeros((10, 10, 3), np.uint8)
    thumbs = {"A": img, "B": img, "C": img}
    with pytest.raises(ConfigError, match="A:C"):
        align_sample(thumbs, dict.fromkeys(thumbs, 16.0), dict.fromkeys(thumbs, 0.7),
                     init={("A", "C"): InitGuess(10.0)})
    with pytest.raises(ConfigError, match="reference"):
        align_sample(thumbs, dict.fromkeys(thumbs, 16.0), dict.fromkeys(thumbs, 0.7), reference="Z")
