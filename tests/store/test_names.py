"""Ids that become file names (store/names.py): one mapping, and no two ids of a store on
one file on any common file system. Generated id sets, then the user's case through the
CLI (`pt 1` and `pt_1` in one manifest; a second ingest adding `c` beside `C`)."""

from __future__ import annotations

import unicodedata

import pytest
from cli_errors import one_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from manifest_gen import ManifestSpec, simple, write_manifest
from typer.testing import CliRunner

from asign.cli import app
from asign.errors import InputError
from asign.store import open_store
from asign.store.layout import StoreLayout
from asign.store.names import check_names, collision_key, file_name, name_problem

runner = CliRunner()
FAST = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# ids users type: letters of several scripts and cases, digits, spaces, punctuation, and
# the combining accent that makes NFC and NFD spellings of one name
ID_CHARS = st.sampled_from(list("aAbBzZ01 _-.é/\\:*?") + ["e\u0301", "É", "ß", "ss", "İ", "i"])
IDS = st.lists(ID_CHARS, min_size=0, max_size=6).map("".join)


def _disk_names(ids: list[str]) -> set[str]:
    """The names a case- and normalisation-insensitive file system would store."""
    return {unicodedata.normalize("NFC", file_name(i)).casefold() for i in ids}


@FAST
@given(st.lists(IDS, min_size=1, max_size=6))
def test_accepted_ids_never_share_a_file(ids):
    """Either one InputError naming an offending id, or every distinct id has a file of its
    own, even where the file system ignores case and Unicode normalisation."""
    distinct = list(dict.fromkeys(ids))
    try:
        check_names("sample id", distinct)
    except InputError as err:
        assert "\n" not in str(err) and "Fix:" in str(err)
        assert any(repr(i) in str(err) for i in distinct)
        bad = [i for i in distinct if name_problem(i)]
        assert bad or len(_disk_names(distinct)) < len(distinct)
        return
    assert len(_disk_names(distinct)) == len(distinct)
    for i in distinct:
        name = file_name(i)
        assert name and not name.startswith(".") and "/" not in name and "\\" not in name
        path = StoreLayout(__import__("pathlib").Path("/s")).table("spots", i)
        assert path.parent.as_posix() == "/s/tables/spots"  # never a folder of its own


@pytest.mark.parametrize("ids", [["pt 1", "pt_1"], ["C", "c"], ["\u00c5", "\u212b"],
                                 ["a:b", "a?b"]])
def test_collisions_name_both_ids(ids):
    with pytest.raises(InputError) as err:
        check_names("sample id", ids, where="m.toml")
    assert repr(ids[0]) in str(err.value) and repr(ids[1]) in str(err.value)
    assert collision_key(ids[0]) == collision_key(ids[1])


@pytest.mark.parametrize("bad", ["", " ", ".hidden", "..", "CON", "com1.txt", "nul", "x.", "x ",
                                 "a" * 200])
def test_names_no_file_system_holds_are_refused(bad):
    assert name_problem(bad) is not None
    with pytest.raises(InputError):
        check_names("section id", [bad])


def test_existing_ids_collide_with_new_ones_but_not_with_themselves():
    check_names("sample id", ["C"], existing=["C", "D"])  # re-ingest of C
    with pytest.raises(InputError, match="'C' and 'c'"):
        check_names("sample id", ["c"], existing=["C"])


def test_duplicate_section_ids_across_samples_are_refused():
    with pytest.raises(InputError, match="given twice"):
        check_names("section id", ["L1", "L1"])


def _ingest(manifest, store, *extra):
    result = runner.invoke(app, ["ingest", str(manifest), "--store", str(store), *extra])
    return result.exit_code, result.stderr


def test_pt1_and_pt_1_in_one_manifest_refused_before_anything_is_written(tmp_path):
    a, b = simple("pt 1", seed=1), simple("pt_1", seed=2)
    manifest = write_manifest(tmp_path / "src", ManifestSpec(a.sections + b.sections))
    code, err = _ingest(manifest, tmp_path / "store")
    line = one_error(code, err)
    assert "'pt 1' and 'pt_1' would share the file name 'pt_1'" in line
    assert not (tmp_path / "store" / "tables").exists()


def test_a_second_ingest_cannot_shadow_a_stored_sample(tmp_path):
    store = tmp_path / "store"
    code, err = _ingest(write_manifest(tmp_path / "a", simple("C", seed=1)), store)
    assert code == 0, err
    before = open_store(store).query("select count(*) n from spots").column("n")[0].as_py()
    code, err = _ingest(write_manifest(tmp_path / "b", simple("c", seed=2)), store)
    assert "sample ids 'C' and 'c'" in one_error(code, err)
    rows = open_store(store).query("select sample_id, count(*) n from spots group by 1").to_pylist()
    assert rows == [{"sample_id": "C", "n": before}]


def test_run_names_that_cannot_name_a_file_are_refused(tmp_path):
    code, err = (lambda r: (r.exit_code, r.stderr))(runner.invoke(
        app, ["train", "--store", str(tmp_path), "--model", "mean", "--run", ".x"]))
    assert "--run '.x' starts with a dot" in one_error(code, err)


def test_train_on_a_store_already_holding_a_collision_refuses_in_one_line(tmp_path, monkeypatch):
    """A store written before ids were vetted (here: the check switched off) holds `pt 1` and
    `pt_1` in one file; train refuses it by name instead of an IndexError."""
    import asign.ingest.step_register as step_register

    a, b = simple("pt 1", seed=1), simple("pt_1", seed=2)
    manifest = write_manifest(tmp_path / "src", ManifestSpec(a.sections + b.sections))
    monkeypatch.setattr(step_register, "check_ids", lambda *args: None)
    code, err = _ingest(manifest, tmp_path / "store")
    assert code == 0, err
    monkeypatch.undo()
    result = runner.invoke(app, ["train", "--store", str(tmp_path / "store"), "--model", "mean",
                                 "--samples", "pt 1"])
    line = one_error(result.exit_code, result.stderr)
    assert "'pt 1' and 'pt_1' would share" in line and "new --store" in line
