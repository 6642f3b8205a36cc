"""User docs: the README's links resolve, user-facing text names no internal issue, and the
generated CLI reference holds every command and option (the site itself is built with
``mkdocs build --strict`` by ``make test``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _user_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_links_resolve_and_it_stays_short():
    readme = (ROOT / "README.md").read_text()
    local = [t for t in LINK.findall(readme) if not t.startswith(("http://", "https://"))]
    assert local and [t for t in local if not (ROOT / t).exists()] == []
    assert len(readme.splitlines()) < 120


def test_no_internal_issue_numbers_in_user_docs():
    bad = [f"{p.name}: {m.group(0)}" for p in _user_pages()
           for m in re.finditer(r"\b(issue|brief)s? \d+", p.read_text(), re.IGNORECASE)]
    assert bad == []


def test_the_cli_reference_is_generated_with_every_option():
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "docs/hooks/cli_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown((ROOT / "docs/cli.md").read_text(), page=None)
    assert hook.MARKER not in page
    from asign.cli import app

    group = typer.main.get_command(app)
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        assert f"`asign {name}`" in page, name
        for p in group.get_command(ctx, name).params:
            for flag in getattr(p, "opts", []):
                if flag.startswith("--") and not getattr(p, "hidden", False):
                    assert f"`{flag}" in page or f" {flag}" in page, (name, flag)
