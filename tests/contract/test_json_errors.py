"""Every AsignError also reaches scripts: with --json, {"error", "file", "fix"} on stdout,
the one-line message on stderr, and the same exit code as without --json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from asign.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [
    ["train", "--store", "{missing}", "--model", "idw"],
    ["query", "--store", "{missing}", "select 1"],
    ["check", "--store", "{missing}"],
    ["ingest", "{missing}", "--store", "{store}"],
    ["export", "--store", "{missing}", "--run", "r", "--h5ad", "{store}/x.h5ad"],
])
def test_errors_as_json_with_the_same_exit_code(tmp_path, cmd):
    args = [a.format(missing=tmp_path / "nope", store=tmp_path / "s") for a in cmd]
    plain = runner.invoke(app, args)
    js = runner.invoke(app, [*args, "--json"])
    assert plain.exit_code == js.exit_code == 1
    assert plain.stdout == ""
    err = json.loads(js.stdout)
    assert set(err) == {"error", "file", "fix"} and err["error"] and err["fix"]
    assert str(tmp_path / "nope") in err["file"]
    assert js.stderr.startswith("error: ") and len(js.stderr.strip().splitlines()) == 1


def test_config_error_without_a_file_is_null(tmp_path):
    res = runner.invoke(app, ["train", "--store", str(tmp_path), "--model", "nope", "--json"])
    assert res.exit_code == 1
    err = json.loads(res.stdout)
    assert err["file"] is None and "--model" in err["error"]
