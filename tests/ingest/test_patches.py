"""Patch and tile geometry, patch compression, and a real crop from her2st C3."""

from __future__ import annotations

import numpy as np
import pytest
from her2st_small import HER2ST as DATA

from asign.errors import ConfigError, ImageError
from asign.ingest import patches as P
from asign.store.codecs import decode_patch, encode_patch


def test_equivalent_px_rescales_to_the_reference_scale():
    assert P.equivalent_px(224, P.REFERENCE_UM_PER_PX) == 224
    assert P.equivalent_px(224, 0.25) == 448  # twice the resolution, twice the pixels
    assert P.equivalent_px(224, 1.0) == 112
    # her2st: ~0.69 µm/px, so the same 112 µm field is ~162 px.
    assert P.equivalent_px(224, 0.69) == 162
    assert P.equivalent_px(1024, 0.69) == 742
    with pytest.raises(ConfigError):
        P.equivalent_px(224, 0.0)
    with pytest.raises(ConfigError):
        P.equivalent_px(224, float("nan"))


def test_tile_grid_covers_image_without_overlap():
    grid = P.tile_grid(1000, 700, 300, level="region")
    assert (grid.n_cols, grid.n_rows) == (4, 3)
    corners = grid.corners()
    assert corners.shape == (12, 2)
    covered = np.zeros((700, 1000), dtype=np.int32)
    for x, y in corners:
        covered[y : y + 300, x : x + 300] += 1
    assert (covered == 1).all()
    # Row-major indexing: tile 5 = row 1, col 1.
    assert tuple(corners[5]) == (300, 300)
    assert grid.tile_ids("C3", np.array([5]))[0] == "C3/region/r001c001"


def test_tile_grid_on_a_bbox_starts_at_its_corner_and_is_clipped_to_the_image():
    grid = P.tile_grid(1000, 700, 256, bbox=(100, 50, 900, 2000))
    assert (grid.origin_x, grid.origin_y) == (100, 50)
    assert grid.n_cols == 4  # 800 px wide → 4 tiles of 256
    assert grid.n_rows == 3  # clipped to 650 px high → 3 tiles
    with pytest.raises(ConfigError):
        P.tile_grid(1000, 700, 256, bbox=(900, 0, 100, 700))


def test_spot_to_tiles_edge_cases():
    grid = P.tile_grid(1000, 1000, 100)  # 10 × 10 tiles
    px = np.array([0.0, 99.999, 100.0, 550.0, 999.0, -1.0, 1000.0])
    py = np.array([0.0, 0.0, 0.0, 550.0, 999.0, 5.0, 5.0])
    t = P.spot_to_tiles(px, py, grid)
    assert t.shape == (7, P.N_NEIGHBOURS)
    assert t[0, 0] == 0 and t[1, 0] == 0
    assert t[2, 0] == 1  # a centre on a tile edge belongs to the right-hand tile
    # The image corner has 3 neighbours; the rest are padding.
    assert sorted(t[0, 1:][t[0, 1:] >= 0]) == [1, 10, 11]
    assert t[3, 0] == 55
    assert sorted(t[3, 1:]) == [44, 45, 46, 54, 56, 64, 65, 66]
    assert t[4, 0] == 99 and sorted(t[4, 1:][t[4, 1:] >= 0]) == [88, 89, 98]
    assert (t[5] == -1).all() and (t[6] == -1).all()  # centres outside the grid


def test_spot_to_tiles_matches_brute_force():
    rng = np.random.default_rng(1)
    grid = P.tile_grid(900, 650, 128, bbox=(20, 30, 900, 650))
    corners = grid.corners()
    px, py = rng.uniform(20, 899, 200), rng.uniform(30, 649, 200)
    t = P.spot_to_tiles(px, py, grid)
    for i in range(px.size):
        inside = np.nonzero(
            (corners[:, 0] <= px[i])
            & (px[i] < corners[:, 0] + 128)
            & (corners[:, 1] <= py[i])
            & (py[i] < corners[:, 1] + 128)
        )[0]
        assert inside.tolist() == [t[i, 0]]
        centre = corners[t[i, 0]] + 64
        near = np.nonzero(np.abs(corners + 64 - centre).max(axis=1) <= 128)[0]
        assert sorted(t[i][t[i] >= 0].tolist()) == sorted(near.tolist())
    used = P.used_tiles(t)
    assert set(used.tolist()) == set(t[t >= 0].tolist())


def test_spot_tile_table_is_long_format_with_ranks():
    grid = P.tile_grid(300, 300, 100)
    t = P.spot_to_tiles(np.array([50.0, 150.0]), np.array([50.0, 150.0]), grid)
    table = P.spot_tile_table(["S/a", "S/b"], t, grid, "S")
    assert len(table["spot_id"]) == 4 + 9  # corner spot: itself + 3; centre spot: 9
    first = [i for i, r in enumerate(table["rank"]) if r == 0]
    assert [table["tile_id"][i] for i in first] == ["S/region/r000c000", "S/region/r001c001"]
    assert set(table["level"]) == {"region"}


def test_spot_patch_box_is_centred():
    box = P.spot_patch_box(np.array([100.0, 100.4, 100.6]), np.array([50.0, 50.0, 50.0]), 162)
    assert box.tolist() == [[19, -31], [19, -31], [20, -31]]
    assert np.all(np.abs(box[:, 0] + 81 - np.array([100.0, 100.4, 100.6])) <= 0.5)


def test_patch_codecs_round_trip():
    rng = np.random.default_rng(0)
    smooth = np.clip(np.cumsum(rng.integers(-3, 4, (64, 64, 3)), axis=1) + 128, 0, 255).astype(
        np.uint8
    )
    png = encode_patch(smooth, "png")
    assert png == encode_patch(smooth, "png")  # deterministic bytes
    assert np.array_equal(decode_patch(png), smooth)  # lossless
    jpg = encode_patch(smooth, "jpeg")
    assert jpg == encode_patch(smooth, "jpeg")
    back = decode_patch(jpg)
    assert back.shape == smooth.shape and len(jpg) < len(png)
    assert np.abs(back.astype(int) - smooth).mean() < 4
    with pytest.raises(ConfigError):
        encode_patch(smooth, "webp")
    with pytest.raises(ConfigError):
        encode_patch(smooth.astype(np.float32), "png")
    with pytest.raises(ImageError):
        decode_patch(b"not an image")


def _c3():
    image = next((DATA / "ST-imgs" / "C" / "C3").glob("*.jpg"), None)
    if image is None:
        pytest.skip("her2st C3 image not available")
    import pandas as pd

    spots = pd.read_csv(DATA / "ST-spotfiles" / "C3_selection.tsv", sep="\t")
    return image, spots


def test_real_spot_crop_from_c3_has_tissue():
    image, spots = _c3()
    size = P.equivalent_px(224, 0.69)
    ((x0, y0),) = P.spot_patch_box(spots.pixel_x.values[:1], spots.pixel_y.values[:1], size)
    patch = P.crop(image, x0, y0, size, 224)
    assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    assert patch.std() > 10  # not blank
    assert patch.mean() < 235  # not white background: spots lie on tissue
    # A crop far outside the image is background, not an error.
    outside = P.crop(image, -5000, -5000, size, 224)
    assert outside.shape == (224, 224, 3) and outside.min() == 255


def test_direct_crop_of_a_plain_rgb_image_equals_the_openslide_route(tmp_path):
    """Inside an 8-bit RGB JPEG, read_region crops the decoded image directly; the pixels
    are those of OpenSlide's RGBA tile pasted on white (the route used at the edges)."""
    from PIL import Image

    from asign.ingest import images

    rng = np.random.default_rng(0)
    path = tmp_path / "slide.jpg"
    Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(path, quality=90)
    slide = images.open_slide(path)
    assert slide.plain_rgb is not None

    def via_openslide(x: int, y: int, size: int, out: int) -> np.ndarray:
        region = slide.read_region((x, y), 0, (size, size))
        bg = Image.new("RGB", region.size, (255, 255, 255))
        bg.paste(region, mask=region.getchannel("A"))
        return np.asarray(bg.resize((out, out), Image.Resampling.BILINEAR) if size != out else bg)

    for x, y, size, out in [(0, 0, 163, 224), (37, 11, 371, 224), (200, 100, 500, 224),
                            (899 - 64, 699 - 64, 64, 64), (900 - 64, 700 - 64, 64, 64),
                            (-3, 5, 100, 224), (850, 650, 100, 224)]:
        np.testing.assert_array_equal(images.read_region(path, x, y, size, out),
                                      via_openslide(x, y, size, out))
