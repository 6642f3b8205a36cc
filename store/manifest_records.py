"""Typed records of the manifest: what register recorded about the labels
(``params.labels``) and what a finished step recorded for a sample (``steps[S][step]``, its
done marker). Read and written through ``Store`` methods only, so the manifest's layout is
spelled here once.

Every record round-trips unchanged: fields it does not name stay in ``extra``, and a field
recorded as null stays null (``nulls``), so an old store reads and saves the same JSON."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="ManifestRecord")


@dataclass(frozen=True)
class ManifestRecord:
    """The round trip of a typed manifest record (the subclasses name the fields)."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    nulls: frozenset[str] = field(default=frozenset(), repr=False, kw_only=True)

    @classmethod
    def from_dict(cls: type[R], record: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "nulls"}
        known = {k: v for k, v in record.items() if k in names}
        extra = {k: v for k, v in record.items() if k not in names}
        return cls(**known, extra=extra, nulls=frozenset(k for k, v in known.items() if v is None))

    def recorded(self, name: str) -> bool:
        """Whether the field was recorded (a recorded null counts)."""
        return getattr(self, name) is not None or name in self.nulls

    def updated(self: R, **values: Any) -> R:
        """A copy with ``values`` set (a None among them recorded as null; a name the record
        does not type goes to ``extra``)."""
        names = {f.name for f in dataclasses.fields(self)} - {"extra", "nulls"}
        typed = {k: v for k, v in values.items() if k in names}
        extra = {**self.extra, **{k: v for k, v in values.items() if k not in names}}
        return dataclasses.replace(self, **typed, extra=extra, nulls=self.nulls | {
            k for k, v in typed.items() if v is None})

    def to_dict(self) -> dict[str, Any]:
        """The manifest record: unset (None) fields are left out unless recorded as null."""
        out = {**self.extra}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("extra", "nulls") and (value is not None or f.name in self.nulls):
                out[f.name] = value
        return out


@dataclass(frozen=True)
class LabelsInfo(ManifestRecord):
    """How register made the labels of the store's samples (one panel for all of them)."""

    normalisation: str | None = None
    n_genes: int | None = None
    panel_sections: list[str] | None = None  # the sections the panel was chosen on
    absent_genes: dict[str, list[str]] | None = None  # per section: panel genes it lacks
    section_um: dict[str, dict[str, Any]] | None = None  # per sample: spacing and its source


@dataclass(frozen=True)
class StepRecord(ManifestRecord):
    """A step finished for a sample under ``fingerprint``; ``extra`` holds what the step
    itself reported (e.g. align's scores)."""

    fingerprint: str | None = None
    done_at: str | None = None
    config: dict[str, Any] | None = None  # the options it ran with (what repair redoes)
    entries_sha256: str | None = None  # digest of its LMDB entries (patches, embed)

    @classmethod
    def now(cls, fingerprint: str, info: dict[str, Any] | None = None,
            config: dict[str, Any] | None = None) -> StepRecord:
        """The record of a step finishing now: its fingerprint, the time, what it reported."""
        record: dict[str, Any] = {
            "fingerprint": fingerprint,
            "done_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(info or {}),
        }
        if config is not None:
            record["config"] = config
        return cls.from_dict(record)


def labels_info(manifest: dict[str, Any]) -> LabelsInfo | None:
    """The manifest's labels record; None before register recorded one."""
    record = (manifest.get("params") or {}).get("labels")
    return None if not isinstance(record, dict) else LabelsInfo.from_dict(record)


def record_labels_info(manifest: dict[str, Any], info: LabelsInfo) -> None:
    manifest.setdefault("params", {})["labels"] = info.to_dict()


def step_record(manifest: dict[str, Any], sample_id: str, step: str) -> StepRecord | None:
    record = ((manifest.get("steps") or {}).get(sample_id) or {}).get(step)
    return None if not isinstance(record, dict) else StepRecord.from_dict(record)


def step_records(manifest: dict[str, Any]) -> dict[str, dict[str, StepRecord]]:
    """``{sample: {step: record}}`` of every finished step."""
    return {sample: {step: StepRecord.from_dict(r) for step, r in steps.items()}
            for sample, steps in (manifest.get("steps") or {}).items()}


def record_step(manifest: dict[str, Any], sample_id: str, step: str, record: StepRecord) -> None:
    manifest.setdefault("steps", {}).setdefault(sample_id, {})[step] = record.to_dict()


def forget_steps(manifest: dict[str, Any], sample_id: str, steps: Any) -> None:
    """The records of ``steps`` of a sample are dropped (those steps must run again)."""
    for step in steps:
        (manifest.get("steps") or {}).get(sample_id, {}).pop(step, None)
