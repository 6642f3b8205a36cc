"""MkDocs hook: the CLI reference page is generated from the typer app at every build, so
it cannot go stale; a build that cannot import the app fails (``mkdocs build --strict``)."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- generated: asign CLI reference -->"


def cli_markdown() -> str:
    import click
    import typer
    from typer.cli import get_docs_for_click

    from asign.cli import app

    command = typer.main.get_command(app)
    ctx = click.Context(command)
    return get_docs_for_click(obj=command, ctx=ctx, name="asign", title=None)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    body = cli_markdown().replace("\n# `asign`", "\n## `asign`", 1)
    # each command one heading level below the page title
    body = body.replace("\n## `asign ", "\n### `asign ")
    return markdown.replace(MARKER, body.replace("# `asign`", "## `asign`", 1))
