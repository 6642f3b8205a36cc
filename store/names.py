"""User strings that become file names: one mapping, one collision check.

Sample ids, section ids and run ids name files in a store (``tables/spots/<sample>.parquet``,
``qc/thumbnails/<section>.png``, ``results/runs/<run>.parquet``). Two different ids that
map to one file would silently overwrite each other, so every id that will name a file is
checked here, as a set, before anything is written:

- ``file_name`` maps an id to its file name (characters other than letters, digits,
  ``-``, ``_`` and ``.`` become ``_``); it is the only such mapping (layout.py calls it);
- ``check_names`` refuses a set in which two ids share a file name, also when the file
  system ignores case or Unicode normalisation (macOS, Windows), and any id that no
  portable file system can hold (empty, ``.``/``..``, a leading dot, which would hide the
  file, a Windows device name such as ``CON`` or ``com1``, a trailing dot or space, or
  longer than ``MAX_CHARS``).

The message is one line and names both ids."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from asign.errors import InputError

MAX_CHARS = 120  # file names carry suffixes such as "_fine.png"; 255 bytes is the usual limit
_WINDOWS_DEVICES = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$",
                              re.IGNORECASE)


def file_name(key: str) -> str:
    """The file-system-safe form of an id (the stem of its files)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def collision_key(key: str) -> str:
    """Two ids with one collision key name one file on some file system: case-insensitive
    (APFS, NTFS) and normalisation-insensitive (APFS stores é and e + ◌́ as one name)."""
    return unicodedata.normalize("NFC", file_name(key)).casefold()


def name_problem(key: str) -> str | None:
    """Why ``key`` cannot name a file on every common file system (None: it can)."""
    name = file_name(key)
    if not key.strip():
        return "is empty"
    if len(name) > MAX_CHARS:
        return f"is longer than {MAX_CHARS} characters"
    if name.startswith("."):
        return "starts with a dot (its files would be hidden and skipped)"
    if _WINDOWS_DEVICES.match(name):
        return "is a reserved device name on Windows"
    if key != key.strip() or name.endswith("."):
        return "ends or starts with a space, or ends with a dot (not kept by Windows)"
    return None


def check_names(kind: str, keys: Iterable[str], *, where: str | Path | None = None,
                existing: Iterable[str] = (), fix: str | None = None,
                portable: bool = True) -> None:
    """Refuse ``keys`` (``kind``: "sample id", "section id", "run name" …) unless each can
    name a file and no two of them, nor one of them and an ``existing`` id (already in the
    store), share a file. Raises one InputError naming the ids; ``where`` is the file or
    store they come from. ``portable=False`` checks collisions only (ids already stored)."""
    seen: dict[str, str] = {}
    for key in existing:
        seen.setdefault(collision_key(key), key)
    mine: set[str] = set()
    for key in keys:
        if key in mine:
            raise InputError(f"{kind} {key!r} is given twice", path=where,
                             fix=fix or f"give every {kind} once (they must be unique in a store)")
        mine.add(key)
        problem = name_problem(key) if portable else None
        if problem is not None:
            raise InputError(f"{kind} {key!r} {problem}", path=where,
                             fix=fix or f"rename it: a {kind} names files in the store")
        ck = collision_key(key)
        other = seen.get(ck)
        if other is not None and other != key:
            raise InputError(
                f"{kind}s {other!r} and {key!r} would share the file name {file_name(key)!r} "
                "(ids are stored as file names: characters other than letters, digits, - _ . "
                "become _, and case is ignored)", path=where,
                fix=fix or f"rename one of them so that the {kind}s differ in letters or digits")
        seen.setdefault(ck, key)
