"""MkDocs hook: results tables are rendered from the records the benches write
(``docs/data/<bench>.json``, see ``bench/_docs_record.py``), never typed into a page.

A page asks for a table with ``<!-- table: BENCH/TABLE -->``; the build replaces the
marker by the table and a line saying which command, commit, date and machine produced it.
A marker naming no record or no table fails the build. The README cannot run a hook, so
its tables sit between ``<!-- table: BENCH/TABLE -->`` and ``<!-- /table -->`` as
generated text: ``python docs/hooks/results_tables.py`` rewrites them (a bench's
``--write-docs`` does it too), and a test fails when they differ from the records.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "data"
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- table: ([\w.-]+)/([\w.+-]+) -->")
END = "<!-- /table -->"
README_BLOCK = re.compile(r"(<!-- table: ([\w.-]+)/([\w.+-]+) -->\n)(.*?)(" + re.escape(END) + ")",
                          re.DOTALL)


class MissingTable(LookupError):
    """A marker names a record or a table that does not exist."""


def load(bench: str, data_dir: Path = DATA) -> dict[str, Any]:
    path = data_dir / f"{bench}.json"
    if not path.is_file():
        raise MissingTable(f"no results record {path} (run the bench with --write-docs)")
    return json.loads(path.read_text())


def provenance(record: dict[str, Any]) -> str:
    m = record.get("machine", {})
    machine = ", ".join(str(x) for x in (m.get("cpu"), m.get("cores") and f"{m['cores']} cores",
                                         m.get("ram_gib") and f"{m['ram_gib']} GiB") if x)
    load_avg = m.get("loadavg")
    if load_avg:
        machine += f", load {load_avg[0]}"
    commit = (record.get("commit") or "unknown")[:10] + (" with local changes"
                                                         if record.get("dirty") else "")
    return (f"*Produced by `{record['command']}` at commit `{commit}`, {record['date']} "
            f"({machine}).*")


def table_markdown(bench: str, name: str, data_dir: Path = DATA) -> str:
    record = load(bench, data_dir)
    table = record.get("tables", {}).get(name)
    if table is None:
        raise MissingTable(f"record {bench} has no table {name!r} "
                           f"(it has: {', '.join(record.get('tables', {}))})")
    lines = ["| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n\n" + provenance(record) + "\n"


def markers(text: str) -> list[tuple[str, str]]:
    return MARKER.findall(text)


def render(text: str, data_dir: Path = DATA) -> str:
    return MARKER.sub(lambda m: table_markdown(m.group(1), m.group(2), data_dir), text)


def readme_text(text: str, data_dir: Path = DATA) -> str:
    """The README with every generated block rewritten from the records."""
    return README_BLOCK.sub(lambda m: m.group(1) + "\n" + table_markdown(m.group(2), m.group(3),
                                                                          data_dir)
                            + "\n" + m.group(5), text)


def write_readme() -> None:
    text = README.read_text()
    new = readme_text(text)
    if new != text:
        README.write_text(new)
        sys.stderr.write(f"rewrote the generated tables of {README}\n")


def on_page_markdown(markdown: str, page: Any = None, **_: Any) -> str:
    return render(markdown)


if __name__ == "__main__":
    write_readme()
