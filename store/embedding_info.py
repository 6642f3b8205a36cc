"""What ingest recorded about a store's embeddings (the manifest's ``params.embed``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asign.store.manifest_records import ManifestRecord


@dataclass(frozen=True)
class EmbeddingInfo(ManifestRecord):
    """The encoder and everything that decided the bits of the stored vectors.

    ``extra`` keeps every other recorded field (provenance such as ``torch``,
    ``params_sha256``, ``preprocessing``), so a manifest round-trips unchanged."""

    encoder: str
    dim: int
    precision: str | None = None
    runtime: str | None = None
    batch_size: int | None = None
    weights_kind: str | None = None  # "random" | "file" | "none" (weight-free)
    weights_sha256: str | None = None
    weights_path: str | None = None
    seed: int = 0
    spot_px: int | None = None  # nominal patch sides at the reference scale
    stored_px: int | None = None  # side of the stored spot patches (the encoder's input)
    region_px: int | None = None
    global_px: int | None = None
    standardisation: str | None = None  # how features were z-scored at ingest, if they were
    # per sample: reference section, stats hash
    standardised: dict[str, dict[str, Any]] | None = None
    parts: list[dict[str, Any]] | None = None  # a concatenated encoder's parts

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EmbeddingInfo:
        return super().from_dict({**record, "encoder": str(record["encoder"]),
                                  "dim": int(record["dim"])})

    @property
    def is_network(self) -> bool:
        """A single network encoder with weights, vectors not z-scored at ingest: one that
        train can rebuild and fine-tune."""
        return not self.standardisation and self.weights_kind != "none"


def embedding_info(manifest: dict[str, Any]) -> EmbeddingInfo | None:
    """The manifest's embedding record; None before the embed step recorded one."""
    record = manifest.get("params", {}).get("embed") or {}
    if not record.get("encoder") or not record.get("dim"):
        return None
    return EmbeddingInfo.from_dict(record)


def record_embedding_info(manifest: dict[str, Any], info: EmbeddingInfo) -> None:
    """Set the record in ``manifest`` (the caller saves it)."""
    manifest.setdefault("params", {})["embed"] = info.to_dict()
