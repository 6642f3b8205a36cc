"""compat.dgl: DGL imports next to torch 2.13, the graphbolt stub appears only when needed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asign.compat import dgl as dgl_compat
from asign.errors import AsignError


def _run(code: str, extra_path: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DGLBACKEND"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_module_import_has_no_side_effects():
    out = _run(
        """
        import os, sys
        import asign.compat.dgl
        print("dgl" in sys.modules, "dgl.graphbolt" in sys.modules, "DGLBACKEND" in os.environ)
        """
    )
    assert out == "False False False"


def test_import_dgl_real_package():
    out = _run(
        """
        import os, sys, torch
        from asign.compat.dgl import import_dgl, graphbolt_library_path
        from pathlib import Path
        dgl = import_dgl()
        from dgl.nn.pytorch import GATConv
        lib = graphbolt_library_path(Path(dgl.__file__).parent, torch.__version__, sys.platform)
        stub = getattr(sys.modules["dgl.graphbolt"], "__file__", None) is None
        print(os.environ["DGLBACKEND"], lib.exists(), stub, dgl.graph(([0], [1])).num_edges())
        """
    )
    backend, lib_exists, stub, n_edges = out.split()
    assert backend == "pytorch"
    assert n_edges == "1"
    # The stub is registered exactly when the library for this torch is missing.
    assert stub == str(lib_exists == "False")


def test_dgl_threads_follow_asign_threads():
    """DGL's kernels run on the system OpenMP, which torch.set_num_threads does not reach:
    a `--threads 1` run used every core in DGL (and a one-thread bench was not one)."""
    out = _run(
        """
        import torch
        from asign.cluster import torch_threads
        from asign.compat.dgl import import_dgl
        torch.set_num_threads(2)
        with torch_threads(1):
            dgl = import_dgl()
            inside = dgl.utils.get_num_threads()
        after = dgl.utils.get_num_threads()
        with torch_threads(1):
            again = dgl.utils.get_num_threads()
        print(inside, after, again, dgl.utils.get_num_threads())
        """
    )
    assert out == "1 2 1 2"


def _fake_dgl(root: Path, with_library: bool) -> None:
    import torch

    pkg = root / "dgl"
    (pkg / "graphbolt").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import sys, types\nSTUBBED = 'dgl.graphbolt' in sys.modules\n"
                                     "utils = types.SimpleNamespace(set_num_threads=abs)\n")
    (pkg / "graphbolt" / "__init__.py").write_text("")
    if with_library:
        lib = dgl_compat.graphbolt_library_path(pkg, torch.__version__, sys.platform)
        lib.write_bytes(b"")


@pytest.mark.parametrize("with_library", [True, False])
def test_stub_only_when_library_missing(tmp_path, with_library):
    _fake_dgl(tmp_path, with_library)
    out = _run(
        """
        from asign.compat.dgl import import_dgl
        print(import_dgl().STUBBED)
        """,
        extra_path=tmp_path,
    )
    assert out == str(not with_library)


def test_missing_dgl_raises_asign_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "dgl", raising=False)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "dgl" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(AsignError, match="DGL is not installed.*Fix: install"):
        dgl_compat.import_dgl()


def test_library_name_follows_torch_version():
    path = dgl_compat.graphbolt_library_path(Path("/x/dgl"), "2.1.2+cu121", "linux")
    assert path == Path("/x/dgl/graphbolt/libgraphbolt_pytorch_2.1.2.so")
