"""What every benchmark prints about the machine, and the limits it reports ratios against.

Shared by ``bench/embed.py``, ``bench/train.py``, ``bench/graph.py`` and ``bench/scale.py``
(imported as ``_machine``: the scripts run with ``bench/`` on ``sys.path``).

- :func:`machine_info`: CPU model, cores available to this process, RAM, library
  versions, native bf16, load average (timings on a shared machine mean little without it).
- :func:`matmul_peak`: best-of GFLOP/s of an n×n×n matmul — the compute yardstick.
- :func:`copy_bandwidth`: large-array copy GB/s (read + write) — the memory yardstick.
- :func:`peak_rss_mib`: this process's own peak RSS;
- :func:`timed_command`: a command's wall time and peak RSS (``/usr/bin/time``), one thread.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return (model if model not in ("", "x86_64") else "unknown"), flags


def machine_info(torch_info: bool = True) -> dict[str, Any]:
    """A JSON-able description of the machine and of the load on it right now."""
    import scipy

    model, flags = _cpuinfo()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "isa_bf16": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if torch_info:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        info["native_bf16"] = bool(torch.backends.mkldnn.is_available()
                                   and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return info


def matmul_peak(dtype: Any = None, n: int = 4096, repeats: int = 5) -> float:
    """Best-of GFLOP/s of an n×n×n ``torch.mm`` (fp32 unless ``dtype`` is given)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def copy_bandwidth(nbytes: int = 2**28, repeats: int = 3) -> float:
    """Best-of GB/s (bytes read + written) of one large single-thread ``np.copyto``."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``): unlike ``ru_maxrss`` it does not inherit the
    parent's high-water mark across fork + exec."""
    path = Path("/proc/self/status")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def timed_command(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS GB, standard output) of one command run with one thread; its
    standard error (progress bars, logs) kept in ``log``."""
    import subprocess

    t0 = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], stdout=subprocess.PIPE,
                              stderr=err, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed ({done.returncode}); see {log}")
    kb = int(log.read_text().rsplit("MAXRSS", 1)[1].split()[0])
    return seconds, kb / 2**20, done.stdout
