"""Data flows one way (raw → ingest → store → train → results): parsed imports and calls of
every module, so a shortcut across the layers fails here rather than in review."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_PACKAGE = ("tests", "bench", "tools", "docs", "build")  # hidden folders (.venv, .git) too
PARQUET_WRITES = {"write_table", "ParquetWriter", "to_parquet", "write_dataset"}


def _modules() -> list[Path]:
    """Every module of the package, found on disk (a new sub-package is checked too)."""
    found = list(ROOT.glob("*.py"))
    for d in ROOT.iterdir():  # the venv is not walked: only the package's own folders
        if (d.is_dir() and d.name not in NOT_PACKAGE and not d.name.startswith(".")
                and not d.name.endswith(".egg-info")):
            found += d.rglob("*.py")
    return sorted(found)


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _called_attributes(tree: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


def _parsed() -> dict[str, ast.AST]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), filename=str(p)) for p in _modules()}


def test_the_modules_are_found():
    mods = _parsed()
    assert "train/__init__.py" in mods and "store/parquet.py" in mods and len(mods) > 60


def test_train_never_imports_ingest():
    bad = [path for path, tree in _parsed().items() if path.startswith("train/")
           and any(n == "asign.ingest" or n.startswith("asign.ingest.") for n in _imports(tree))]
    assert bad == []


def test_only_store_touches_lmdb():
    # the doctor only reports the installed lmdb version
    bad = [path for path, tree in _parsed().items()
           if not path.startswith("store/") and path != "commands/doctor.py"
           and any(n == "lmdb" or n.startswith("lmdb.") for n in _imports(tree))]
    assert bad == []


def test_only_store_writes_parquet():
    bad = [path for path, tree in _parsed().items()
           if not path.startswith("store/") and _called_attributes(tree) & PARQUET_WRITES]
    assert bad == []


def _private_store_names(tree: ast.AST) -> set[str]:
    """Private names imported from the store package (``from asign.store.x import _y``)."""
    return {f"{n.module}.{a.name}" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("asign.store")
            for a in n.names if a.name.startswith("_")}


def _private_names_defined(tree: ast.AST) -> set[str]:
    """Private functions, classes, methods and fields a module defines (``_x``, not dunders)."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            out.add(n.target.id)
        elif isinstance(n, ast.Assign):
            out |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    return {x for x in out if x.startswith("_") and not x.startswith("__")}


def _private_store_uses(tree: ast.AST, store_private: set[str]) -> set[str]:
    """Private names of the store reached as attributes (``vec._get(key)``, ``vectors._env``),
    other than the module's own private names of the same spelling."""
    mine = _private_names_defined(tree)
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in store_private - mine}


def test_only_store_composes_lmdb_keys():
    # keys, raw values and value codecs are the store's: everyone else uses the typed
    # methods (Vectors.put, embeddings, is_done with a Done marker, Store.step_record ...);
    # a private store name is neither imported nor called from outside store/
    parsed = _parsed()
    store_private = set().union(*(_private_names_defined(tree) for path, tree in parsed.items()
                                  if path.startswith("store/")))
    assert {"_get", "_put_many", "_env", "_done_key"} <= store_private
    bad = {path: sorted(names) for path, tree in parsed.items() if not path.startswith("store/")
           and (names := _private_store_names(tree) | _private_store_uses(tree, store_private) | {
               n for n in _imports(tree)
               if n.rsplit(".", 1)[-1] in ("emb_key", "patch_key", "done_key", "meta_key")})}
    assert bad == {}


def test_the_checks_can_fail():
    planted_key = ast.parse("from asign.store.vectors import _emb_key\n"
                            "from asign.store.vectors import done_key\n")
    assert _private_store_names(planted_key) == {"asign.store.vectors._emb_key"}
    assert "asign.store.vectors.done_key" in _imports(planted_key)
    planted_call = ast.parse("with store.vectors() as vec:\n    vec._put_many([(b'k', b'v')])\n"
                             "    n = vec._env.stat()\n"
                             "def _grow(self):\n    self._grow()\n")
    assert _private_store_uses(planted_call, {"_put_many", "_env", "_grow"}) == {"_put_many",
                                                                                 "_env"}
    planted = ast.parse("import lmdb\nfrom asign.ingest.graph import build_graph\n"
                        "table.to_parquet('x')\n")
    assert "lmdb" in _imports(planted) and "asign.ingest.graph" in _imports(planted)
    assert "to_parquet" in _called_attributes(planted)


# Layers, lowest first: a module may import its own package and any lower layer, never a
# higher one or a sibling of its layer (ingest and train know nothing of each other). A new
# top-level module or package fails test_every_module_has_a_layer until it is placed here.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(x.split()) for x in (
    "__init__ errors hashing jsonable schemas options",
    "store numeric cluster progress compat nets",
    "encoders",
    "ingest train",
    "report",
    "commands",
    "cli",
))
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# above ingest but still not allowed to read it: the report reads the store, not the inputs
FORBIDDEN = {("report", "ingest")}


def _package_of(path: str) -> str:
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def _asign_targets(tree: ast.AST) -> set[str]:
    """The top-level asign packages/modules a module imports (``from asign import x`` too)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "asign":
            names = [f"asign.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        out |= {n.split(".")[1] for n in names if n.startswith("asign.")}
    return out


def _layer_violations(parsed: dict[str, ast.AST]) -> list[str]:
    bad = []
    for path, tree in parsed.items():
        own = _package_of(path)
        for target in _asign_targets(tree) - {own, "__version__"}:
            if target not in RANK or RANK[target] >= RANK[own] or (own, target) in FORBIDDEN:
                bad.append(f"{path} imports asign.{target}")
    return sorted(bad)


def test_every_module_has_a_layer():
    assert sorted({_package_of(p) for p in _parsed()} - set(RANK)) == []


def test_layers_are_kept_in_every_direction():
    # ingest ↛ train and train ↛ ingest, store/schemas ↛ anything above them,
    # report ↛ ingest, nothing below the CLI imports it
    assert _layer_violations(_parsed()) == []


def test_the_layer_check_can_fail():
    planted = {
        "ingest/x.py": ast.parse("from asign.train.metrics import pcc_gene\n"),
        "store/x.py": ast.parse("from asign import train\n"),
        "report/x.py": ast.parse("import asign.ingest.referee\n"),
        "schemas/x.py": ast.parse("from asign.store.manifest import jsonable\n"),
        "train/x.py": ast.parse("from asign.numeric import idw\nfrom asign import __version__\n"),
    }
    assert _layer_violations(planted) == [
        "ingest/x.py imports asign.train", "report/x.py imports asign.ingest",
        "schemas/x.py imports asign.store", "store/x.py imports asign.train"]


def _private_imports(path: str, tree: ast.AST) -> list[str]:
    """Private names imported from another top-level package (``from asign.train import _x``
    in train/on_cluster.py counts: the orchestration's helpers it needs are public)."""
    own = _package_of(path)
    return [f"{path}: {n.module}.{a.name}" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("asign")
            for a in n.names if a.name.startswith("_") and not a.name.startswith("__")
            and (n.module.split(".")[1:2] != [own] or n.module.count(".") == 1)]


def test_no_private_imports_across_modules():
    bad = [line for path, tree in _parsed().items() for line in _private_imports(path, tree)
           if not path.startswith("store/")]  # the store's own modules share its key codecs
    assert bad == []
    planted = ast.parse("from asign.train import _one_fold\n")
    assert _private_imports("train/on_cluster.py", planted) == [
        "train/on_cluster.py: asign.train._one_fold"]


def test_test_modules_have_unique_basenames() -> None:
    """pytest imports test modules by basename (rootdir-relative, no packages below tests/):
    two files of one name in different folders fail the whole collection."""
    from collections import Counter

    names = Counter(p.name for p in Path(__file__).resolve().parents[1].rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
