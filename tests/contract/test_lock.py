"""The dependency lock agrees with pyproject.toml, and the environment running the tests is
exactly the lock (what a fresh `make install` gives)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("asign_lock", ROOT / "tools" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_every_project_requirement_is_locked_within_its_bounds():
    pins = lock.read_lock()
    problems = []
    for text in lock.project_requirements():
        req = Requirement(text)
        name = lock.canonical(req.name)
        if name not in pins:
            problems.append(f"{text}: not in requirements.lock (run make lock)")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{text}: lock has {pins[name]}")
    assert problems == []


def test_direct_requirements_have_an_upper_bound_or_exact_pin():
    unbounded = []
    for text in lock.project_requirements():
        ops = {spec.operator for spec in Requirement(text).specifier}
        bounded = ops & {"<", "<=", "==", "~="}
        if not bounded and lock.canonical(Requirement(text).name) != "tifffile":
            unbounded.append(text)
    # tifffile versions by date (2026.3.3): a calendar version has no API major to stop at.
    assert unbounded == []


def test_environment_equals_the_lock():
    assert lock.differences(lock.read_lock(), lock.installed()) == []


def test_differences_names_each_kind_of_drift():
    found = lock.differences({"a": "1", "b": "2"}, {"a": "1.1", "c": "3"})
    assert found == ["a: lock 1, installed 1.1", "b==2: in the lock, not installed",
                     "c==3: installed, not in the lock"]


def test_local_build_labels_are_not_versions():
    assert lock.public_version("2.13.0+cpu") == "2.13.0"
