"""Where an `asign` command's memory goes: its RSS sampled with the asign function running.

    .venv/bin/python bench/memtrace.py --trace a3d.trace [--every 1] -- \\
        train --store S --model asign3d --epochs 3 --memory-gb 4 --threads 1
    .venv/bin/python bench/memtrace.py --summary a3d.trace      # an earlier trace, again

The command runs in this process (``asign.cli.app``); a daemon thread writes, every
``--every`` seconds, the seconds since start, the RSS (anonymous and file-backed, GiB) and
the innermost asign frames of the main thread. At the end (or with ``--summary``) it prints
the peak RSS and, per asign function, the highest RSS seen while it ran: the phases to look
at first. A sample is taken only when the main thread lets go of the GIL, so a long native
call shows as one late sample: the peak of a phase is a lower bound, `/usr/bin/time`'s the
true one.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from _machine import machine_info


def _rss_gib() -> tuple[float, float, float]:
    """(VmRSS, RssAnon, RssFile) of this process in GiB."""
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            got[key] = int(value.split()[0]) / 2**20
    return got.get("VmRSS", 0.0), got.get("RssAnon", 0.0), got.get("RssFile", 0.0)


def _frames(main_id: int, root: str) -> str:
    """The main thread's innermost asign frames, 'file:function:line < ...'."""
    frame, out = sys._current_frames().get(main_id), []
    while frame is not None and len(out) < 4:
        name = frame.f_code.co_filename
        if name.startswith(root) and "site-packages" not in name:
            out.append(f"{name[len(root):]}:{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(out) or "-"


def _sample(path: Path, every: float, main_id: int, root: str) -> None:
    t0 = time.perf_counter()
    with path.open("w", buffering=1) as out:
        while True:
            rss, anon, file = _rss_gib()
            out.write(f"{time.perf_counter() - t0:9.1f} {rss:7.2f} {anon:7.2f} {file:7.2f} "
                      f"{_frames(main_id, root)}\n")
            time.sleep(every)


def summary(path: Path, top: int = 15) -> str:
    """The peak RSS of a trace, and the highest RSS per innermost asign function."""
    peak: dict[str, tuple[float, float]] = {}
    best = (0.0, 0.0, "-")
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=4)
        if len(parts) < 5:
            continue
        t, rss, where = float(parts[0]), float(parts[1]), parts[4]
        func = where.split(" < ")[0].rsplit(":", 1)[0]
        if rss > peak.get(func, (-1.0, 0.0))[0]:
            peak[func] = (rss, t)
        if rss > best[1]:
            best = (t, rss, where)
    rows = sorted(peak.items(), key=lambda kv: -kv[1][0])[:top]
    lines = [f"peak RSS {best[1]:.2f} GiB at {best[0]:.0f} s in {best[2]}",
             "highest RSS per asign function (GiB, at s):"]
    lines += [f"  {rss:6.2f} {t:8.0f}  {func}" for func, (rss, t) in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, help="the trace file to write")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--summary", type=Path, help="summarise this trace and exit")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then asign's arguments")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.trace is None or not command:
        ap.error("give --trace FILE -- and an asign command, or --summary FILE")
    import asign

    print(machine_info(torch_info=False), file=sys.stderr)
    root = str(Path(asign.__file__).parent) + os.sep
    threading.Thread(target=_sample, args=(args.trace, args.every, threading.get_ident(),
                                           root), daemon=True).start()
    from asign.cli import app

    try:
        app(command, prog_name="asign")
    finally:
        print(summary(args.trace), file=sys.stderr)


if __name__ == "__main__":
    main()
