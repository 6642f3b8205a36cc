"""One error hierarchy: every user-facing failure is an AsignError with a one-line
message that names the file (or section) and the fix. The CLI turns these into exit 1."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class AsignError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts).replace("\n", " "))
        self.message = message
        self.path = None if path is None else str(path)
        self.fix = fix


class InputError(AsignError):
    """Raw input (images, counts, spot tables, manifests) is missing or malformed."""


class ImageError(InputError):
    """An image is missing, unreadable, corrupt or inconsistent with its spots."""


class CountsError(InputError):
    """A counts table is malformed: NaN/negative/non-integer values, duplicate or unknown spot
    ids."""


class AlignmentError(AsignError):
    """Registration failed or produced an implausible transform."""


class StoreError(AsignError):
    """The feature store is unreadable, unwritable, inconsistent or of an unknown version."""


class SchemaVersionError(StoreError):
    """A store artefact was written by a newer (or unknown) schema version."""


class WeightsError(AsignError):
    """Encoder weights are unavailable or do not match the architecture."""


class ConfigError(AsignError):
    """An option or a combination of options is invalid."""


class ClusterError(AsignError):
    """Units of work failed on Dask workers (each named with its own error); the others' work is
    kept."""


class NumericError(AsignError):
    """A computation produced non-finite numbers (NaN/inf) where results must be finite."""


class ValidationErrors(AsignError):
    """Several problems found together, before any work starts; each is listed
    (spatialdata-style collection). Manifests raise it as it is, configs as ConfigErrors."""

    def __init__(self, problems: list[str], *, what: str = "validation", fix: str | None = None):
        self.problems = list(problems)
        head = f"{what} found {len(problems)} problem(s): " + "; ".join(problems[:5])
        if len(problems) > 5:
            head += f"; … and {len(problems) - 5} more"
        super().__init__(head, fix=fix)


class ConfigErrors(ValidationErrors, ConfigError):
    """Every invalid option of one command, collected (TrainConfig and IngestConfig)."""


def not_one_of(value: str, allowed: Iterable[str], flag: str) -> list[str]:
    """No problem when ``value`` is allowed, else the line a ConfigErrors lists for it."""
    allowed = tuple(allowed)
    return [] if value in allowed else [f"{flag} {value!r} is not one of {', '.join(allowed)}"]


class ResourceError(AsignError):
    """The host refused a resource: memory or address space (``ulimit -v``)."""


def out_of_memory(err: BaseException) -> ResourceError | None:
    """The one-line error for a failed allocation (MemoryError, or the RuntimeError torch
    raises), naming the limit that caused it; None for any other exception."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not isinstance(err, MemoryError) and not any(
            s in text for s in ("allocate memory", "Cannot allocate", "out of memory")):
        return None
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    cause = (f"the process's address-space limit (ulimit -v) is {limit >> 20} MiB"
             if limit != resource.RLIM_INFINITY else "the host is out of memory")
    return ResourceError(f"out of memory: {cause} ({text[:160]})",
                         fix="raise the limit (ulimit -v) or free memory; --threads 1 and a "
                             "smaller --batch-size need less")
