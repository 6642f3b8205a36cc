"""Weights published on the Hugging Face Hub: found in the local Hugging Face cache without
any network access, or downloaded into it (``--download``) with the user's own token.

The cache is the one ``huggingface_hub`` writes (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), read when asked rather than when imported, so a cache
moved by the environment is honoured."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from asign.encoders.spec import EncoderSpec
from asign.errors import WeightsError

log = logging.getLogger(__name__)


def hf_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_cached(spec: EncoderSpec) -> tuple[Path, str] | None:
    """(file, where, in words) of the spec's checkpoint in the Hugging Face cache: the
    ``main`` revision first, else any cached snapshot holding it. Reads only the disk."""
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    if not cache.is_dir():
        return None
    for filename in spec.hf_files:
        found = try_to_load_from_cache(spec.hf_repo, filename, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found), f"Hugging Face cache: {found}"
    snapshots = cache / f"models--{spec.hf_repo.replace('/', '--')}" / "snapshots"
    for filename in spec.hf_files:
        for path in sorted(snapshots.glob(f"*/{filename}")):
            if path.is_file():
                return path, f"Hugging Face cache (snapshot {path.parent.name}): {path}"
    return None


def how_to_get(spec: EncoderSpec) -> str:
    """The fix when the weights are not here: how a user gets them, in one line."""
    repo, first = spec.hf_repo, spec.hf_files[0]
    return (f"accept the terms at https://huggingface.co/{repo}, log in once (`hf auth login` "
            f"or HF_TOKEN), then rerun with --download (into {hf_cache_dir()}) or run "
            f"`hf download {repo} {first}`; or pass --weights PATH to {first}")


def download(spec: EncoderSpec) -> tuple[Path, str]:
    """Fetch the first published file that exists into the cache, with the user's token."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
    )

    for filename in spec.hf_files:
        try:
            path = hf_hub_download(spec.hf_repo, filename, cache_dir=str(hf_cache_dir()))
        except RemoteEntryNotFoundError:  # the repository publishes the next format
            continue
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise WeightsError(f"cannot download {spec.name} weights from {spec.hf_repo} "
                               f"({type(err).__name__}: {reason})", fix=how_to_get(spec)) from err
        log.info("downloaded %s weights: %s", spec.name, path)
        return Path(path), f"downloaded from https://huggingface.co/{spec.hf_repo}: {path}"
    raise WeightsError(f"{spec.hf_repo} has none of {list(spec.hf_files)}", fix=how_to_get(spec))
