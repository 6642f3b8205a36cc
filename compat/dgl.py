"""Import DGL 2.1 next to a newer torch.

PyPI's newest DGL wheel (2.1.0) ships its graphbolt C++ library only for torch ≤ 2.2, and
``import dgl`` imports ``dgl.graphbolt``, which refuses to load without that library. asign
never uses graphbolt (only ``dgl.graph`` and ``GATConv``), so when — and only when — the
library for the running torch is absent, an empty ``dgl.graphbolt`` module is registered
before the import. Nothing happens when this module is imported; call :func:`import_dgl`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

from asign.errors import AsignError

log = logging.getLogger(__name__)

_FIX = "install it with `pip install dgl==2.1.0 -c constraints.txt` (keeps the CPU torch)"


def graphbolt_library_path(dgl_dir: Path, torch_version: str, platform: str) -> Path:
    """Where DGL looks for its graphbolt library for ``torch_version`` (e.g. ``2.13.0+cpu``)."""
    version = torch_version.split("+", maxsplit=1)[0]
    if platform.startswith("darwin"):
        name = f"libgraphbolt_pytorch_{version}.dylib"
    elif platform.startswith("win"):
        name = f"graphbolt_pytorch_{version}.dll"
    else:
        name = f"libgraphbolt_pytorch_{version}.so"
    return dgl_dir / "graphbolt" / name


def import_dgl() -> types.ModuleType:
    """Return the ``dgl`` module, importable with the installed torch.

    Sets ``DGLBACKEND=pytorch`` unless the user chose a backend. Raises :class:`AsignError`
    with an install hint when DGL is not installed.
    """
    if "dgl" in sys.modules:
        return sys.modules["dgl"]
    os.environ.setdefault("DGLBACKEND", "pytorch")
    spec = importlib.util.find_spec("dgl")
    if spec is None or spec.origin is None:
        raise AsignError("DGL is not installed (needed by the 'dgl' GAT engine)", fix=_FIX)

    import torch  # after find_spec: a missing DGL should not cost the torch import

    lib = graphbolt_library_path(Path(spec.origin).parent, torch.__version__, sys.platform)
    if not lib.exists() and "dgl.graphbolt" not in sys.modules:
        log.debug("no graphbolt library at %s; registering an empty dgl.graphbolt", lib)
        sys.modules["dgl.graphbolt"] = types.ModuleType("dgl.graphbolt")
    try:
        dgl = importlib.import_module("dgl")
    except ImportError as err:
        raise AsignError(f"DGL failed to import: {err}", fix=_FIX) from err
    # DGL's kernels run on the system OpenMP, which torch.set_num_threads does not reach:
    # they follow torch's intra-op thread count (``--threads``), not every core
    dgl.utils.set_num_threads(torch.get_num_threads())
    return dgl
