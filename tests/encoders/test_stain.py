"""Stain normalisation and test-time augmentation: real her2st pixels through torchstain's
Macenko, a blank image kept and counted, a blank reference refused in one line, TTA
features that do not depend on the image's orientation, and both options entering the
embed step's fingerprint only when set."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from her2st_small import HER2ST as DATA

from asign import encoders as E
from asign.encoders.stain import (
    StainError,
    dihedral_views,
    fit_reference,
    recorded_reference,
    with_sample,
)
from asign.errors import ConfigError, ConfigErrors
from asign.ingest import embed as M
from asign.ingest import patches as P
from asign.ingest.config import IngestConfig, validate
from asign.ingest.steps import STEP


def _real_patches(section: str, n: int = 12) -> list[np.ndarray]:
    image = next((DATA / "ST-imgs" / "C" / section).glob("*.jpg"), None)
    if image is None:
        pytest.skip(f"her2st {section} image not available")
    spots = pd.read_csv(DATA / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t").head(n)
    size = P.equivalent_px(224, 0.69)
    corners = P.spot_patch_box(spots.pixel_x.values, spots.pixel_y.values, size)
    return [P.crop(image, int(x), int(y), size, 224) for x, y in corners]


def test_macenko_maps_another_section_toward_the_reference_stain():
    ref_patches, other = _real_patches("C2"), _real_patches("C5")
    ref = fit_reference("macenko", "C2", ref_patches)
    assert ref.stain_matrix.shape == (3, 2) and (ref.max_concentration > 0).all()
    normalised = [ref.normalise(p) for p in other]
    assert all(n.dtype == np.uint8 and n.shape == p.shape
               for n, p in zip(normalised, other, strict=True))
    assert not np.array_equal(normalised[0], other[0])
    # the stain C5 shows is nearer the reference after normalisation than before
    before = fit_reference("macenko", "C5", other)
    after = fit_reference("macenko", "C5", normalised)

    def gap(fit):
        return (np.abs(fit.stain_matrix - ref.stain_matrix).sum()
                + np.abs(fit.max_concentration - ref.max_concentration).sum())

    assert gap(after) < gap(before) / 2
    assert ref.kept == 0 and ref.seen == len(other)
    record = ref.record()
    assert record["reference_section"] == "C2" and len(record["sha256"]) == 64
    # a Dask worker gets the same fit, without the lock
    clone = pickle.loads(pickle.dumps(ref))
    assert np.array_equal(clone.normalise(other[0]), normalised[0])


def test_each_samples_reference_is_recorded_and_rebuilt_exactly():
    patches = _real_patches("C2")
    fits = {"C": fit_reference("macenko", "C2", patches),
            "D": fit_reference("macenko", "C5", _real_patches("C5"))}
    record = None
    for sample, fit in fits.items():
        record = json.loads(json.dumps(with_sample(record, sample, fit)))  # via the manifest
    assert record["method"] == "macenko" and set(record["samples"]) == {"C", "D"}
    for sample, fit in fits.items():
        again = recorded_reference(record, sample)
        assert again.section == fit.section
        assert all(np.array_equal(again.normalise(p), fit.normalise(p)) for p in patches)
    assert recorded_reference(record, "E") is None
    # another method starts the record afresh
    other = dataclasses.replace(fits["C"], method="other")
    assert set(with_sample(record, "E", other)["samples"]) == {"E"}


def test_blank_image_is_kept_and_counted_and_a_blank_reference_is_one_line():
    ref = fit_reference("macenko", "C2", _real_patches("C2", 4))
    blank = np.full((224, 224, 3), 250, np.uint8)
    assert np.array_equal(ref.normalise(blank), blank)
    assert (ref.kept, ref.seen) == (1, 1)
    with pytest.raises(StainError) as err:
        fit_reference("macenko", "C9", [blank, blank])
    assert "C9" in str(err.value) and "\n" not in str(err.value)
    assert "--stain-norm none" in str(err.value)
    with pytest.raises(StainError, match="no spot patches"):
        fit_reference("macenko", "C9", [])


def test_dihedral_views_are_the_eight_symmetries():
    batch = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = list(dihedral_views(batch, 8))
    assert len({v.tobytes() for v in views}) == 8
    assert all(v.flags.c_contiguous for v in views)
    # the set of views of a rotated or transposed batch is the same set
    for turned in (np.rot90(batch, 1, axes=(1, 2)), batch.transpose(0, 2, 1, 3)):
        assert {v.tobytes() for v in dihedral_views(turned, 8)} == {v.tobytes() for v in views}


@pytest.mark.slow
def test_tta_features_do_not_depend_on_orientation():
    from PIL import Image

    enc = E.load_encoder("resnet18-l3-64", "random", seed=0)  # 64-px input: a fast test
    images = np.stack([np.asarray(Image.fromarray(p).resize((64, 64), Image.Resampling.BOX))
                       for p in _real_patches("C3", 2)])
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    plain = M.embed_arrays(enc, images, batch_size=2, precision="fp32", runtime="eager")
    plain_t = M.embed_arrays(enc, turned, batch_size=2, precision="fp32", runtime="eager")
    tta = M.embed_arrays(enc, images, batch_size=2, precision="fp32", runtime="eager", tta=8)
    tta_t = M.embed_arrays(enc, turned, batch_size=2, precision="fp32", runtime="eager", tta=8)
    gap = np.abs(plain.astype(float) - plain_t).max()
    assert gap > 1e-2  # without TTA the orientation changes the vector
    np.testing.assert_allclose(tta.astype(float), tta_t.astype(float), atol=gap / 20)


def test_options_enter_the_embed_fingerprint_only_when_they_change_the_images(tmp_path):
    params = STEP["embed"].params
    plain = IngestConfig(sources=(tmp_path,), store=tmp_path / "s", stain_norm="none")
    assert "stain_norm" not in params(plain) and "tta" not in params(plain)
    default = IngestConfig(sources=(tmp_path,), store=tmp_path / "s")
    assert params(default)["stain_norm"] == "macenko" and "tta" not in params(default)
    stained = IngestConfig(sources=(tmp_path,), store=tmp_path / "s", tta=8)
    assert params(stained)["stain_norm"] == "macenko" and params(stained)["tta"] == 8
    with pytest.raises(ConfigErrors, match="--tta must be one of 1, 2, 4, 8"):
        validate(IngestConfig(sources=(tmp_path,), store=tmp_path / "s", tta=3))
    with pytest.raises(ConfigErrors, match="--stain-norm 'vahadane' is not one of"):
        validate(IngestConfig(sources=(tmp_path,), store=tmp_path / "s", stain_norm="vahadane"))


@pytest.mark.parametrize(("record", "says"), [
    ({"tta": 8}, "average --tta views"),
    # one reference for the whole store, as recorded before they were kept per sample
    ({"stain_norm": {"method": "macenko", "reference_section": "C2"}}, "predates them")])
def test_finetuning_refuses_vectors_its_patches_cannot_give(tmp_path, record, says):
    from asign.store import EmbeddingInfo
    from asign.train.finetune import EncoderRecipe

    info = EmbeddingInfo.from_dict({"encoder": "effnet-lite0", "dim": 1904,
                                    "weights_kind": "file", **record})
    with pytest.raises(ConfigError, match=says):
        EncoderRecipe.from_manifest(info, None, tmp_path / "manifest.json")
    plain = EmbeddingInfo.from_dict({"encoder": "effnet-lite0", "dim": 1904,
                                     "weights_kind": "file"})
    assert EncoderRecipe.from_manifest(plain, None, tmp_path / "manifest.json").name == \
        "effnet-lite0"
