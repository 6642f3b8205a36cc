"""Whole-slide images: the backend registry, verification by tiles, pyramid thumbnails and
regions, µm/px from slide metadata. Fixtures are pyramidal TIFF / OME-TIFF written by
``tests/wsi_fixtures.py`` from real her2st pixels, upsampled."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
from her2st_small import HER2ST, IMAGE_NAMES
from PIL import Image
from wsi_fixtures import upsampled, write_slide

from asign.errors import ImageError
from asign.ingest import images, patches, slides

NATIVE_UM = 0.69  # her2st C, µm/px (fit of spot pixels on the array, rounded)
CROP = (4700, 5300, 6300, 6900)  # 1600 px of C2 around its spots' median
FACTOR = 3  # 0.23 µm/px, a 40x scan
JPEG_PASSES = 2.0
"""A spot patch cut from the 3× pyramid (JPEG q90 tiles, read at level 1) differs from the
native patch of the same tissue by less than this many times what one JPEG q90 pass leaves
on the native patch: measured 0.98–1.14× here (19 C2 spots), up to 1.6× on 200 spots of C2–C6
(bench/wsi.py); one native pixel off reads 3.7–5.5×."""
PATCH_TOLERANCE = 2.5
"""Mean |Δ| (of 255) allowed between two readers' patches of the same square."""


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> tuple[Path, Image.Image]:
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(HER2ST / "ST-imgs" / "C" / "C2" / IMAGE_NAMES["C2"]) as im:
        crop = im.convert("RGB").crop(CROP)
    path = tmp_path_factory.mktemp("native") / "c2.png"  # lossless: the crop's own pixels
    crop.save(path)
    return path, crop


@pytest.fixture(scope="session")
def pyramids(native, tmp_path_factory) -> dict[str, Path]:
    """The native crop at 3× as a generic tiled TIFF and as an OME-TIFF (same tiles)."""
    _, crop = native
    root = tmp_path_factory.mktemp("wsi")
    w, h = crop.size[0] * FACTOR, crop.size[1] * FACTOR
    fn = upsampled(crop, FACTOR)
    return {"tiff": write_slide(root / "c2.tif", w, h, fn, NATIVE_UM / FACTOR),
            "ome": write_slide(root / "c2.ome.tif", w, h, fn, NATIVE_UM / FACTOR, ome=True)}


@pytest.fixture(scope="session")
def liar(tmp_path_factory) -> dict[str, Path]:
    """A pyramid whose every level is one flat grey, 10·log2(downsample) + 40: what a read
    returns names the level it came from."""
    root = tmp_path_factory.mktemp("liar")

    def flat(ds: float, x: int, y: int, side: int) -> np.ndarray:
        return np.full((side, side, 3), 40 + 10 * int(np.log2(ds)), dtype=np.uint8)

    return {"tiff": write_slide(root / "liar.tif", 4096, 4096, flat, 0.25),
            "ome": write_slide(root / "liar.ome.tif", 4096, 4096, flat, 0.25, ome=True)}


def _level_read(pixels: np.ndarray) -> int:
    return int(round((float(np.median(pixels)) - 40) / 10))


def test_the_registry_picks_the_reader(native, pyramids):
    assert slides.backend_for(pyramids["tiff"]).name == "openslide"
    assert slides.backend_for(pyramids["ome"]).name == "ome-tiff"  # OpenSlide sees level 0 only
    assert slides.backend_for(native[0]).name == "pil"
    for path in pyramids.values():
        assert images.open_slide(path).level_count >= 4


def test_an_aperio_svs_reads_through_openslide_with_its_mpp(native, tmp_path):
    import openslide

    _, crop = native
    path = write_slide(tmp_path / "c2.svs", 2400, 2400, upsampled(crop, 1.5), 0.46, svs=True)
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    assert slides.backend_for(path).name == "openslide"
    assert images.verify_image(path) == (2400, 2400)
    assert images.um_per_px(path, None) == pytest.approx(0.46)
    assert images.read_thumbnail(path, 12.0).shape == (200, 200, 3)


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_thumbnails_and_regions_come_from_the_level_nearest_the_target(liar, kind):
    path = liar[kind]
    for downsample, level in [(1.0, 0), (2.0, 1), (3.0, 1), (4.0, 2), (7.9, 2), (8.0, 3)]:
        thumb = images.read_thumbnail(path, downsample)
        assert thumb.shape[:2] == (round(4096 / downsample),) * 2
        assert _level_read(thumb) == level, downsample
        region = images.read_region(path, 1000, 1000, int(224 * downsample), 224)
        assert region.shape == (224, 224, 3) and _level_read(region) == level, downsample


def _jpeg_noise(rgb: np.ndarray) -> float:
    """Mean |Δ| that one JPEG q90 pass (as the slide's tiles) leaves on ``rgb``."""
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return float(np.abs(rgb.astype(float) - np.asarray(Image.open(buf))).mean())


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_pyramid_thumbnail_equals_the_native_one(native, pyramids, kind):
    """A thumbnail of the 3× slide, read from a coarse level, shows the native image within
    two JPEG passes (the coarse level's tiles and the level itself; at 5.5 µm/px a q90 pass
    alone leaves ~5.8 of 255), and one thumbnail pixel off is far outside that."""
    thumb = images.read_thumbnail(pyramids[kind], 8.0 * FACTOR).astype(float)
    ref = np.asarray(native[1].resize(thumb.shape[1::-1], Image.Resampling.BOX))
    noise = _jpeg_noise(ref)
    assert np.abs(thumb - ref).mean() < 2 * noise
    assert np.abs(thumb - np.roll(ref, 1, axis=1)).mean() > 3 * noise


def _spot_centres(n: int = 24) -> np.ndarray:
    """Tissue spot centres of C2 inside the crop (native px, relative to it)."""
    import pandas as pd

    df = pd.read_csv(HER2ST / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    xy = df[["pixel_x", "pixel_y"]].to_numpy(float) - CROP[:2]
    margin = 200
    inside = (xy > margin).all(axis=1) & (xy < np.subtract(CROP[2:], CROP[:2]) - margin).all(axis=1)
    return xy[inside][:n]


def _patch_pair(native_path: Path, slide: Path, x: float, y: float, shift: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """The spot patch of the native image and the patch of the same tissue (its box × 3,
    shifted by ``shift`` native px) cut from the 3× slide, both resized to 224 px. (At the
    3× scale ``equivalent_px`` rounds to the slide's own pixels: a box placed independently
    may sit up to half a native pixel off, which is not what this compares.)"""
    side = patches.equivalent_px(224, NATIVE_UM)
    (nx, ny), = patches.spot_patch_box(np.array([x]), np.array([y]), side)
    return (patches.crop(native_path, nx, ny, side, 224).astype(float),
            patches.crop(slide, FACTOR * (nx + shift), FACTOR * ny, FACTOR * side, 224
                         ).astype(float))


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_patches_from_the_pyramid_equal_the_native_ones_within_jpeg_noise(native, pyramids, kind):
    centres = _spot_centres()
    assert len(centres) >= 12
    ratios, off = [], []
    for x, y in centres:
        a, b = _patch_pair(native[0], pyramids[kind], x, y)
        noise = _jpeg_noise(a.astype(np.uint8))
        ratios.append(np.abs(a - b).mean() / noise)
        a, b = _patch_pair(native[0], pyramids[kind], x, y, shift=1)
        off.append(np.abs(a - b).mean() / noise)
    assert max(ratios) < JPEG_PASSES, ratios
    assert min(off) > JPEG_PASSES, off  # the check can tell one native pixel


def test_ome_and_tiff_backends_read_the_same_tissue_edges_white(pyramids):
    w, h = images.image_size(pyramids["tiff"])
    assert images.image_size(pyramids["ome"]) == (w, h)
    for x, y, size in [(500, 700, 487), (-200, -100, 487), (w - 300, h - 100, 1113),
                       (w + 10, 0, 64)]:
        a = images.read_region(pyramids["tiff"], x, y, size, 224)
        b = images.read_region(pyramids["ome"], x, y, size, 224)
        assert np.abs(a.astype(float) - b).mean() < PATCH_TOLERANCE, (x, y, size)
    corner = images.read_region(pyramids["ome"], -200, -100, 487, 224)
    assert corner[:40, :40].min() == 255  # outside the slide: white, as OpenSlide returns


def test_tiled_slides_are_verified_by_tiles_without_the_pixel_limit(native, pyramids, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "100000")  # far below the slides' 23 Mpx
    side = (CROP[2] - CROP[0]) * FACTOR
    for path in pyramids.values():
        fresh = Path(shutil.copy(path, tmp_path / path.name))  # not verified before
        assert images.verify_image(fresh) == (side, side)
        assert images.image_header(fresh).size == (side, side)
    plain = Path(shutil.copy(native[0], tmp_path / "plain.png"))
    with pytest.raises(ImageError, match="above asign's limit"):
        images.verify_image(plain)  # a plain image is decoded whole: the limit holds


def test_each_image_is_verified_once(pyramids, tmp_path, monkeypatch):
    path = Path(shutil.copy(pyramids["tiff"], tmp_path / "once.tif"))
    seen: list[Path] = []
    real = slides.verify_tiled
    monkeypatch.setattr(slides, "verify_tiled", lambda p, s: seen.append(p) or real(p, s))
    for _ in range(3):
        images.verify_image(path)
        images.read_thumbnail(path, 16.0)
    assert seen == [path]
    path.touch()  # new content (mtime): verified again
    images.verify_image(path)
    assert len(seen) == 2


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_a_truncated_slide_is_refused_in_one_line(pyramids, tmp_path, kind):
    data = pyramids[kind].read_bytes()
    path = tmp_path / f"cut-{pyramids[kind].name}"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageError) as err:
        images.verify_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_corrupt_tile_is_refused(pyramids, tmp_path):
    import tifffile

    path = Path(shutil.copy(pyramids["tiff"], tmp_path / "bad.tif"))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[-1]  # the coarsest level: all its tiles are sampled
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    with pytest.raises(ImageError, match="unreadable|cannot"):
        images.verify_image(path)


def test_um_per_px_from_the_slide_and_checked_against_the_given_one(native, pyramids):
    expected = NATIVE_UM / FACTOR
    for path in pyramids.values():
        assert images.um_per_px(path, None) == pytest.approx(expected, rel=1e-6)
        assert images.um_per_px(path, 0.231) == 0.231  # within the tolerance: as given
        with pytest.raises(ImageError, match="disagrees") as err:
            images.um_per_px(path, 0.69)
        assert "um_per_px = 0.23" in str(err.value) and "\n" not in str(err.value)
    assert images.um_per_px(native[0], 0.69) == 0.69  # a PNG states nothing: the given one
    assert images.um_per_px(native[0], None) is None


def test_manifest_takes_um_per_px_from_the_slide_or_refuses_a_wrong_one(pyramids, tmp_path):
    from asign.ingest.readers import manifest

    base = ('[[sections]]\nsample = "S"\nsection = "S1"\nz = 1\nimage = "{img}"\n'
            "spot_diameter_um = 55\nspot_pitch_um = 100\n")
    for kind, path in pyramids.items():
        doc = tmp_path / f"{kind}.toml"
        doc.write_text(base.format(img=path))
        (sample,) = manifest.read(doc)
        assert sample.sections[0].um_per_px == pytest.approx(NATIVE_UM / FACTOR)
        doc.write_text(base.format(img=path) + "um_per_px = 0.69\n")
        with pytest.raises(ImageError, match="disagrees"):
            manifest.read(doc)


@pytest.mark.slow
def test_a_slide_above_two_gigapixels_is_read_in_bounded_memory(tmp_path):
    """2.03 Gpx at level 0 (C2 upsampled 4.7×), written tile by tile: verify, thumbnail at
    the align step's scales and a patch, with peak memory far below level 0's 6 GB of RGB."""
    from asign.ingest.step_align import FINE_UM_PER_PX, THUMB_UM_PER_PX

    Image.MAX_IMAGE_PIXELS = None
    factor = 4.7
    with Image.open(HER2ST / "ST-imgs" / "C" / "C2" / IMAGE_NAMES["C2"]) as im:
        src = im.convert("RGB")
    w, h = int(src.size[0] * factor), int(src.size[1] * factor)
    assert w * h > 2e9
    path = write_slide(tmp_path / "big.tif", w, h, upsampled(src, factor), NATIVE_UM / factor,
                       tile=512)
    del src
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert images.verify_image(path) == (w, h)
    um = images.um_per_px(path, None)
    for target in (THUMB_UM_PER_PX, FINE_UM_PER_PX):
        thumb = images.read_thumbnail(path, target / um)
        assert thumb.shape[1] == round(w / (target / um)) and thumb.std() > 10
    patch = patches.crop(path, w // 2, h // 2, patches.equivalent_px(224, um), 224)
    assert patch.shape == (224, 224, 3)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 1_000_000  # < 1 GB (kB)
