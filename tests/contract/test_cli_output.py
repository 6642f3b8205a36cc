"""What scripts and people read from the CLI: strict JSON (null, never NaN) from every
--json and `query --format json`, LF line ends from `query --format csv`, the metric table
at the end of `asign train`, and help text on every option with flags shown as flags."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from asign.cli import app
from asign.train.metrics import METRICS as METRIC_NAMES

runner = CliRunner()


def _strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as jq and JavaScript's JSON.parse do."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_train_json_is_strict_and_the_table_ends_a_run(toy_store):
    # the mean profile is constant per gene: its pcc_gene is undefined (NaN) → null
    result = runner.invoke(app, ["-q", "train", "--store", str(toy_store), "--model", "mean",
                                 "--run", "r", "--json"])
    assert result.exit_code == 0, result.output
    assert "NaN" not in result.stdout
    summary = _strict_loads(result.stdout)
    assert summary["metrics"]["pcc_gene"] is None
    assert summary["metrics"]["pcc_spot"] > 0

    result = runner.invoke(app, ["-q", "train", "--store", str(toy_store), "--model", "idw",
                                 "--run", "r"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("S1_L2", "S1_L3", "S1_L4", "mean", "pcc_gene", "pcc_spot (mean)", "mse (mean)",
                 "coverage", "width (mean)"):
        assert word in out, out
    assert "S1_L1" not in out  # the known layer is not scored
    # the idw row of a section shows its own number and the mean run's beside it, for each
    # metric (the four accuracy metrics and the intervals' coverage and width)
    row = next(line for line in out.splitlines() if "S1_L2" in line)
    assert len(METRIC_NAMES) == 6
    assert len([c for c in row.split("│") if c.strip()]) == 3 + 2 * len(METRIC_NAMES)


def test_query_json_is_strict_and_csv_ends_lines_with_lf(toy_store):
    sql = "select 1 as one, cast('nan' as double) as nothing, 'a,b' as text"
    result = runner.invoke(app, ["query", "--store", str(toy_store), sql, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert _strict_loads(result.stdout) == [{"one": 1, "nothing": None, "text": "a,b"}]

    result = runner.invoke(app, ["query", "--store", str(toy_store), sql, "--format", "csv"])
    assert result.exit_code == 0, result.output
    raw = result.stdout_bytes
    assert b"\r" not in raw
    assert raw.decode().split("\n") == ["one,nothing,text", '1,nan,"a,b"', ""]


def test_check_json_is_strict(toy_store):
    result = runner.invoke(app, ["check", "--store", str(toy_store), "--json"])
    _strict_loads(result.stdout)


def _commands() -> list[tuple[str, object]]:
    group = typer.main.get_command(app)
    return [("", group)] + sorted(group.commands.items())


@pytest.mark.parametrize(("name", "command"), _commands(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_flags_read_as_flags(name, command):
    import click

    ctx = click.Context(command)
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"asign {name} {param.opts[0]}: no help text"
        elif isinstance(param, click.Argument):
            assert (getattr(param, "help", "") or "").strip(), f"asign {name} {param.name}: no help"
    result = runner.invoke(app, [*([name] if name else []), "--help"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output


def test_export_needs_a_target(toy_store):
    result = runner.invoke(app, ["export", "--store", str(toy_store), "--run", "r"])
    assert result.exit_code == 1
    assert "nothing to export" in result.output and "Traceback" not in result.output
