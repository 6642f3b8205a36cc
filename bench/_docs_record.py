"""Results records: a bench run with ``--write-docs`` keeps the markdown tables it printed
as ``docs/data/<bench>.json``, with what produced them (command line, git commit, date,
machine, seeds, protocol). The docs build renders the tables from that file
(``docs/hooks/results_tables.py``), so no measured number is typed into a page.

A bench adds the flag with :func:`add_flag` and runs its ``main`` through :func:`run`:
the tables are read back from its own standard output (every ``### title`` followed by a
markdown table), so a new table in a bench is recorded without more code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data"
FLAG = "--write-docs"
_HEADING = re.compile(r"^#{2,4}\s+(.+?)\s*$")


def add_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(FLAG, action="store_true",
                    help="also record the printed tables in docs/data/<bench>.json, which the "
                         "docs build renders (and refresh the README's table from it)")


def slug(title: str) -> str:
    """``Per section, MSE / … (mean ± sd)`` → ``per-section``: the words before the first
    comma or parenthesis, lower case, joined by dashes."""
    head = re.split(r"[,(:]", title, maxsplit=1)[0]
    return "-".join(re.findall(r"[a-z0-9+]+", head.lower().replace("+", "-plus-"))) or "table"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_tables(text: str) -> dict[str, dict[str, Any]]:
    """``{slug: {"title", "columns", "rows"}}`` of every markdown table under a heading;
    a second table under the same slug gets ``-2``, ``-3``, …"""
    tables: dict[str, dict[str, Any]] = {}
    title: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HEADING.match(lines[i])
        if m:
            title = m.group(1)
        elif (title is not None and lines[i].startswith("|") and i + 1 < len(lines)
              and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            columns, rows = _cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            key, n = slug(title), 2
            while key in tables:
                key, n = f"{slug(title)}-{n}", n + 1
            tables[key] = {"title": title, "columns": columns, "rows": rows}
            title = None
            continue
        i += 1
    return tables


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_info

    info = machine_info(torch_info=False)
    info.pop("isa_bf16", None)
    return info


def provenance(argv: list[str], first_json: dict[str, Any]) -> dict[str, Any]:
    """What produced a record: the command, the commit (and whether the tree differed from
    it), the date, the machine, and the seeds/protocol the bench printed as its first line."""
    cmd = " ".join(["python", str(Path(argv[0]).resolve().relative_to(ROOT))
                    if Path(argv[0]).resolve().is_relative_to(ROOT) else argv[0], *argv[1:]])
    # local changes to the code (not to the docs or tests) make the commit an approximation
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs",
                      ":!README.md", ":!mkdocs.yml", ":!tests"))
    return {
        "command": cmd,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "seeds": first_json.get("seeds"),
        "protocol": first_json.get("protocol"),
    }


def _first_json(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict):
                    return data
    return {}


class _Tee(io.TextIOBase):
    def __init__(self, out: Any) -> None:
        self.out, self.buf = out, io.StringIO()

    def write(self, s: str) -> int:
        self.buf.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


def write(bench: str, text: str, argv: list[str],
          derive: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]] | None = None,
          data_dir: Path = DATA, started: dict[str, Any] | None = None) -> Path:
    """Record the tables in ``text`` (a bench's output) as ``data_dir/<bench>.json``;
    ``derive`` may add tables computed from them (a summary view, for instance);
    ``started``: the provenance taken when the run began (the commit may move meanwhile)."""
    tables = parse_tables(text)
    if not tables:
        raise SystemExit(f"{bench}: printed no markdown table under a heading; nothing recorded")
    if derive is not None:
        tables.update(derive(tables))
    record = {"bench": bench, **provenance(argv, _first_json(text)), "tables": tables}
    if started is not None:
        record.update(commit=started["commit"], dirty=started["dirty"], date=started["date"])
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{bench}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(tables)} tables in {path}", file=sys.stderr)
    return path


def refresh_readme() -> None:
    """Rewrite the README's generated blocks from the records (the docs hook owns how)."""
    spec = importlib.util.spec_from_file_location(
        "results_tables", ROOT / "docs" / "hooks" / "results_tables.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook.write_readme()


def run(main: Callable[[], Any], bench: str,
        derive: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]] | None = None
        ) -> Any:
    """Run a bench's ``main``; with ``--write-docs`` on the command line, record its tables
    and refresh the README from them."""
    if FLAG not in sys.argv[1:]:
        return main()
    started = provenance(sys.argv, {})
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        result = main()
    write(bench, tee.buf.getvalue(), sys.argv, derive, started=started)
    refresh_readme()
    return result
