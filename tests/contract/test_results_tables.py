"""Results tables come from the records the benches write (docs/data/*.json): every marker
names a record and a table, every record is shown somewhere, the README's generated table
equals its record, and a record says what produced it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE = ("command", "commit", "dirty", "date", "machine", "seeds", "protocol")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _load("results_tables", ROOT / "docs" / "hooks" / "results_tables.py")


def _pages() -> dict[Path, str]:
    return {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def test_every_marker_names_a_recorded_table():
    used = [(p.name, bench, table) for p, text in _pages().items()
            for bench, table in hook.markers(text)]
    assert used, "no page shows a recorded table"
    for page, bench, table in used:
        assert hook.table_markdown(bench, table).startswith("| "), (page, bench, table)


def test_every_record_is_shown_and_says_what_produced_it():
    shown = {bench for text in _pages().values() for bench, _ in hook.markers(text)}
    records = sorted(hook.DATA.glob("*.json"))
    assert records
    for path in records:
        record = json.loads(path.read_text())
        assert path.stem in shown, f"{path.name} is never shown in README.md or docs/"
        assert record["bench"] == path.stem
        assert [k for k in PROVENANCE if k not in record] == [], path.name
        assert len(record["commit"]) == 40 and record["command"].startswith("python bench/")
        for name, table in record["tables"].items():
            assert all(len(row) == len(table["columns"]) for row in table["rows"]), name


def test_readme_table_equals_its_record():
    text = (ROOT / "README.md").read_text()
    assert hook.END in text and hook.markers(text)
    assert hook.readme_text(text) == text, ("README.md's generated table differs from "
                                            "docs/data: run python docs/hooks/results_tables.py")


def test_a_marker_without_a_record_or_table_fails_the_build(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({
        "bench": "b", "command": "python bench/b.py", "commit": "0" * 40, "dirty": False,
        "date": "2026-01-01 00:00 UTC", "machine": {"cpu": "x", "cores": 2}, "seeds": [0],
        "protocol": "p", "tables": {"t": {"title": "T", "columns": ["a", "b"],
                                          "rows": [["1", "2"]]}}}))
    page = hook.render("x\n\n<!-- table: b/t -->\n", tmp_path)
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in page and "`python bench/b.py`" in page
    with pytest.raises(hook.MissingTable, match="no table 'u'"):
        hook.render("<!-- table: b/u -->", tmp_path)
    with pytest.raises(hook.MissingTable, match="no results record"):
        hook.render("<!-- table: nope/t -->", tmp_path)
    stale = "<!-- table: b/t -->\n| a | b |\n|---|---|\n| 9 | 9 |\n<!-- /table -->\n"
    assert "| 1 | 2 |" in hook.readme_text(stale, tmp_path)


def test_a_bench_output_becomes_a_record(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        record_mod = _load("_docs_record", ROOT / "bench" / "_docs_record.py")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = ('{"seeds": [0, 1], "protocol": "known C2"}\nnoise\n\n### Per section, MSE (sd)\n\n'
           "| model | C3 |\n|---|---|\n| idw | 0.1 |\n\n### Per section, again\n\n"
           "| model | C3 |\n|---|---|\n| mean | 0.2 |\n")
    path = record_mod.write("demo", out, [str(ROOT / "bench" / "demo.py"), "--x", "1"],
                            data_dir=tmp_path)
    record = json.loads(path.read_text())
    assert record["seeds"] == [0, 1] and record["protocol"] == "known C2"
    assert record["command"] == "python bench/demo.py --x 1"
    assert record["tables"]["per-section"]["rows"] == [["idw", "0.1"]]
    assert record["tables"]["per-section-2"]["rows"] == [["mean", "0.2"]]
    assert record["machine"]["cores"] >= 1
