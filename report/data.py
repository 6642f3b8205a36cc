"""Store → in-memory frames for ``asign report`` and ``asign export``.

Everything is read through :mod:`asign.store`; raw slides are never opened (the H&E
comes from the thumbnails the align step wrote).

How the pieces of a run name are resolved:

- **runs**: every row of ``runs`` with ``name = NAME``, one per model; when a model was
  run more than once under the name, its latest finished (``status = 'done'``) run wins.
- **test samples**: the samples that have predictions or metrics in any of those runs.
- **known layer** of a test sample: its imaged, labelled sections that have neither
  predictions nor metrics in the run (train predicts every other section of a test
  sample). When that does not single out one section (e.g. a run saved no predictions),
  the run's ``config.known`` (first | middle | Z) is resolved the way train resolves it.
- **hidden sections**: the predicted sections of a test sample; the *scored* ones are those
  with metrics rows (hidden and labelled), the others carry virtual spots only.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from asign.errors import InputError, StoreError
from asign.report.dense import Predicted, codes, dense_run, predicted
from asign.store import Store
from asign.store.binding import STALE, require_current
from asign.store.labels import dense_rows
from asign.store.thumbnails import Thumbnail
from asign.train.config import BASELINE_MODELS, MEAN_MODEL, MODELS, ModelSpec
from asign.train.metrics import accuracy_metrics

log = logging.getLogger(__name__)

# Which run draws the maps when --model is not given: the registry's display order, the
# full method first.
MAP_PREFERENCE = tuple(MODELS)
COMPUTED_MEAN = "mean (computed)"
# the mean profile first: summaries compare against it before any other baseline
BASELINES = (MEAN_MODEL, COMPUTED_MEAN, *(m for m in BASELINE_MODELS if m != MEAN_MODEL))


def _spec(model: str) -> ModelSpec | None:
    return MODELS.get(MEAN_MODEL if model == COMPUTED_MEAN else model)


def display_rank(model: str) -> int:
    spec = _spec(model)
    return spec.rank if spec else ModelSpec.rank


def display_colour(model: str) -> str:
    spec = _spec(model)
    return spec.colour if spec else ModelSpec.colour


def is_mean_profile(model: str) -> bool:
    """The mean-profile baseline: its own run, or computed for this report."""
    return model in (MEAN_MODEL, COMPUTED_MEAN)


def is_network(model: str) -> bool:
    spec = _spec(model)
    return bool(spec and spec.neural)

UNITS = {
    "log_ratio": "ln((c+1) / Σ_panel(c+1))",
    "log1p_cp10k": "ln(1 + 10⁴·c / Σc)",
}


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    model: str
    setting: str
    status: str
    created_at: Any
    config: dict[str, Any]
    provenance: dict[str, str] = field(default_factory=dict)  # version, commit, store hash


@dataclass
class RunData:
    """One run name, resolved: its runs, the test samples' spots, labels and predictions.

    ``labels`` and every array in ``predictions`` are (len(spots), len(genes)) float32,
    row-aligned with ``spots``, NaN where a spot has no label / no prediction."""

    name: str
    runs: dict[str, RunInfo]  # model -> run
    map_model: str
    genes: list[str]
    normalisation: str
    sections: pd.DataFrame  # sections of the test samples, z order
    spots: pd.DataFrame  # spots of the test samples' imaged sections (+ role, fold)
    known: dict[str, str]  # sample -> known section
    hidden: dict[str, list[str]]  # sample -> predicted sections, z order
    scored: dict[str, list[str]]  # sample -> hidden sections with metrics
    labels: np.ndarray
    predictions: dict[str, np.ndarray]  # model -> (spots, genes)
    metrics: pd.DataFrame  # model, run_id, fold, sample_id, section_id, setting, metric, value
    thumbs: dict[str, Thumbnail] = field(default_factory=dict)
    # raw panel counts, row-aligned with ``spots``; NaN where a spot was not measured
    counts: np.ndarray | None = None
    embed: dict[str, Any] = field(default_factory=dict)  # manifest params.embed
    transforms: pd.DataFrame | None = None  # the test samples' alignment transforms
    # model -> (lower, upper)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        return self.runs[self.map_model].setting

    @property
    def unit(self) -> str:
        return UNITS.get(self.normalisation, self.normalisation)



def load_runs(store: Store, name: str) -> dict[str, RunInfo]:
    """The finished runs called ``name``, one per model (the latest when repeated)."""
    runs = store.read("runs").to_pandas()
    if runs.empty or not (runs["name"] == name).any():
        names = sorted(set(runs["name"])) if not runs.empty else []
        raise InputError(f"no run named {name!r} in the store", path=store.root,
                         fix=f"pick one of: {', '.join(names)}" if names
                         else "run `asign train --store DIR --run NAME` first")
    mine = runs[runs["name"] == name]
    # a stale run (trained before a re-ingest changed the store) competes, to be refused
    done = mine[mine.status.isin(["done", STALE])].sort_values("created_at")
    skipped = sorted(set(mine.model) - set(done.model))
    if skipped:
        log.warning("run %s: no finished run for model(s) %s; left out", name, ", ".join(skipped))
    if done.empty:
        raise InputError(f"run {name!r} has no finished model run (status: "
                         f"{', '.join(sorted(set(mine.status)))})", path=store.root,
                         fix="finish it with `asign train ... --resume`, then report again")
    out: dict[str, RunInfo] = {}
    for row in done.itertuples():  # sorted by time: a later run of a model replaces it
        prov = {k: str(getattr(row, k)) for k in ("asign_version", "git_commit", "store_hash")
                if pd.notna(getattr(row, k, None))}
        out[str(row.model)] = RunInfo(str(row.run_id), str(row.name), str(row.model),
                                      str(row.setting), str(row.status), row.created_at,
                                      _config(row.config), prov)
    require_current(store, out.values())  # store/binding.py: by name, with the reason
    return out


def _config(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def choose_map_model(runs: dict[str, RunInfo], model: str | None) -> str:
    if model is not None:
        if model not in runs:
            raise InputError(f"run {next(iter(runs.values())).name!r} has no {model!r} model",
                             fix=f"use --model with one of: {', '.join(sorted(runs))}")
        return model
    return next(m for m in (*MAP_PREFERENCE, *sorted(runs)) if m in runs)


def derive_known(imaged_labelled: list[str], predicted: set[str], scored: set[str]) -> str | None:
    """The one imaged, labelled section with neither predictions nor metrics, else None."""
    left = [s for s in imaged_labelled if s not in predicted and s not in scored]
    return left[0] if len(left) == 1 else None


def load_run_data(store: Store, name: str, model: str | None = None, *,
                  compare: bool = True) -> RunData:
    """``compare``: also the other models' predictions under the run name and the computed
    mean profile (what the report sets side by side); an export needs the map model's
    alone, and each is a (spots, genes) array."""
    runs = load_runs(store, name)
    map_model = choose_map_model(runs, model)
    genes_t = store.read("genes").to_pandas().sort_values("rank")
    genes = genes_t.gene.astype(str).tolist()

    metrics = _metrics(store, runs)
    where = {m: predicted(store, r.run_id) for m, r in runs.items()}
    if not where[map_model].sections:
        raise InputError(f"run {runs[map_model].run_id} saved no predictions, so there is "
                         "nothing to draw", path=store.root,
                         fix="re-run `asign train` without --no-save-predictions, or pick "
                             "another --model")

    samples = sorted(set(metrics.sample_id) | {s for w in where.values() for s in w.sections})
    sections = store.read("sections").to_pandas()
    sections = sections[sections.sample_id.isin(samples)].sort_values(["sample_id", "z"])
    spots = pd.concat([store.read("spots", key=s).to_pandas() for s in samples],
                      ignore_index=True)
    from asign.store.sections import placed

    # placed sections: imaged ones and those placed by given coordinates (no image)
    imaged = set(sections.section_id[placed(sections)])
    spots = spots[spots.section_id.isin(imaged)].reset_index(drop=True)
    spot_index = pd.Index(spots.spot_id)
    if not spot_index.is_unique:
        raise StoreError("spot ids repeat across the test samples", path=store.root,
                         fix="re-ingest: spot ids must be unique within a store")

    labels = np.full((len(spots), len(genes)), np.nan, dtype=np.float32)
    counts = np.full((len(spots), len(genes)), np.nan, dtype=np.float32)
    for s in samples:
        if not store.has("labels", key=s):
            continue
        # in pieces: a whole Visium HD stack's label lists take several times their size
        # to decode at once
        for lab in store.iter_table("labels", s, ["spot_id", "counts", "value"],
                                    dictionary=["spot_id"]):
            rows = codes(lab.column("spot_id"), spot_index)
            ok = rows >= 0
            if ok.any():
                path = store.layout.table("labels", s)
                labels[rows[ok]] = dense_rows(lab.column("value"), len(genes), path)[ok]
                counts[rows[ok]] = dense_rows(lab.column("counts"), len(genes), path)[ok]

    predictions, bounds = {}, {}
    for m, r in runs.items():
        if where[m].sections and (compare or m == map_model):
            predictions[m], b = dense_run(store, r.run_id, spot_index, genes)
            if b is not None:
                bounds[m] = b
    known, hidden, scored = _layers(sections, runs[map_model], where[map_model],
                                    metrics[metrics.model == map_model], labels, spots)
    spots = _annotate(spots, known, hidden, where[map_model])

    if compare and "mean" not in runs:
        metrics, predictions = _computed_mean(metrics, predictions, labels, spots, known,
                                              runs[map_model])

    manifest = store.manifest()
    recorded = store.labels_info(manifest)
    normalisation = str(recorded.normalisation if recorded and recorded.recorded("normalisation")
                        else "unknown scale")
    thumbs = _thumbs(store, manifest, sections)
    transforms = pd.concat([store.read("transforms", key=s).to_pandas() for s in samples
                            if store.has("transforms", key=s)] or [pd.DataFrame()],
                           ignore_index=True)
    return RunData(name=name, runs=runs, map_model=map_model, genes=genes,
                   normalisation=normalisation, sections=sections.reset_index(drop=True),
                   spots=spots, known=known, hidden=hidden, scored=scored, labels=labels,
                   predictions=predictions, metrics=metrics, thumbs=thumbs, counts=counts,
                   embed=_embed_record(store, manifest),
                   transforms=transforms, bounds=bounds)


def _embed_record(store: Store, manifest: dict[str, Any]) -> dict[str, Any]:
    info = store.embedding_info(manifest)
    return {} if info is None else info.to_dict()


def _metrics(store: Store, runs: dict[str, RunInfo]) -> pd.DataFrame:
    parts = []
    for m, r in runs.items():
        if store.has("metrics", key=r.run_id):
            df = store.read("metrics", key=r.run_id).to_pandas()
            df.insert(0, "model", m)
            parts.append(df)
    cols = ["model", "run_id", "fold", "sample_id", "section_id", "setting", "metric", "value"]
    if not parts:
        return pd.DataFrame(columns=cols)
    df = pd.concat(parts, ignore_index=True)
    # train also records counts (n_spots, n_genes_valid, ...) as metric rows
    return df[df.metric.isin(accuracy_metrics())][cols].reset_index(drop=True)


def _layers(sections: pd.DataFrame, run: RunInfo, where: Predicted, metrics: pd.DataFrame,
            labels: np.ndarray, spots: pd.DataFrame
            ) -> tuple[dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
    from asign.store.sections import has_coords, placed
    from asign.train.protocol import SectionInfo, resolve_known

    labelled_secs = set(spots.section_id[~np.isnan(labels).all(axis=1)])
    known: dict[str, str] = {}
    hidden: dict[str, list[str]] = {}
    scored: dict[str, list[str]] = {}
    for sample, secs in sections.groupby("sample_id", sort=True):
        secs = secs.sort_values("z")
        predicted = where.sections.get(str(sample), set())
        with_metrics = set(metrics.section_id[metrics.sample_id == sample])
        candidates = [s for s in secs.section_id[placed(secs)] if s in labelled_secs]
        k = derive_known(candidates, predicted, with_metrics)
        if k is None:
            rows = zip(secs.itertuples(), has_coords(secs), strict=True)
            infos = [SectionInfo(str(r.sample_id), str(r.section_id), int(r.z),
                                 bool(r.has_counts), bool(r.has_image), bool(c)) for r, c in rows]
            k = resolve_known(infos, run.config.get("known", "first"))
            log.info("sample %s: known layer %s from the run config (known=%s)", sample, k,
                     run.config.get("known", "first"))
        known[str(sample)] = k
        order = [str(s) for s in secs.section_id]
        hidden[str(sample)] = [s for s in order if s in predicted or s in with_metrics]
        scored[str(sample)] = [s for s in order if s in with_metrics]
    return known, hidden, scored


def _annotate(spots: pd.DataFrame, known: dict[str, str], hidden: dict[str, list[str]],
              where: Predicted) -> pd.DataFrame:
    spots = spots.copy()
    known_secs = set(known.values())
    hidden_secs = {s for v in hidden.values() for s in v}
    spots["role"] = np.where(spots.section_id.isin(known_secs), "known",
                             np.where(spots.section_id.isin(hidden_secs), "hidden", "other"))
    spots["fold"] = spots.sample_id.map(where.fold).fillna(-1).astype(np.int32)
    return spots


def _computed_mean(metrics: pd.DataFrame, predictions: dict[str, np.ndarray], labels: np.ndarray,
                   spots: pd.DataFrame, known: dict[str, str], run: RunInfo
                   ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The known-layer mean-profile baseline, computed here because the run name has no
    ``mean`` run; scored on the same sections as the map run."""
    from asign.train.metrics import evaluate

    pred = np.full_like(labels, np.nan)
    rows = []
    ref = metrics[metrics.run_id == run.run_id][["fold", "sample_id", "section_id", "setting"]]
    for sample, k in known.items():
        in_sample = (spots.sample_id == sample).to_numpy()
        kn = in_sample & (spots.section_id == k).to_numpy() & ~np.isnan(labels).any(axis=1)
        if not kn.any():
            continue
        mu = labels[kn].astype(np.float64).mean(axis=0)
        others = in_sample & ~(spots.section_id == k).to_numpy()
        pred[others] = mu
        for r in ref[ref.sample_id == sample].drop_duplicates().itertuples():
            idx = (spots.section_id == r.section_id).to_numpy() & ~np.isnan(labels).any(axis=1)
            values = evaluate(pred[idx], labels[idx])
            rows += [{"model": COMPUTED_MEAN, "run_id": "", "fold": r.fold,
                      "sample_id": sample, "section_id": r.section_id, "setting": r.setting,
                      "metric": m, "value": values[m]} for m in accuracy_metrics()]
    log.info("run %s has no `mean` run: the mean-profile baseline is computed from the known "
             "layer(s) for the report", run.name)
    if rows:
        metrics = pd.concat([metrics, pd.DataFrame(rows)], ignore_index=True)
    return metrics, {**predictions, COMPUTED_MEAN: pred}


def _thumbs(store: Store, manifest: dict[str, Any], sections: pd.DataFrame) -> dict[str, Thumbnail]:
    out: dict[str, Thumbnail] = {}
    for r in sections.itertuples():
        thumb = store.thumbnail(manifest, str(r.sample_id), str(r.section_id))
        if thumb is not None:
            out[str(r.section_id)] = thumb
        elif r.has_image:
            log.info("section %s: no H&E thumbnail in the store; maps drawn without it",
                     r.section_id)
    return out


def per_gene_pcc(pred: np.ndarray, truth: np.ndarray, section: np.ndarray) -> np.ndarray:
    """(G,) per-gene PCC across spots, computed per section and averaged over sections
    (so its mean over genes matches the ``pcc_gene`` metric when nothing is undefined).
    Rows with any NaN in ``pred`` or ``truth`` are left out."""
    from asign.train.metrics import pcc_per_gene

    ok = ~(np.isnan(pred).any(axis=1) | np.isnan(truth).any(axis=1))
    per = [pcc_per_gene(pred[ok & (section == s)], truth[ok & (section == s)])
           for s in np.unique(section[ok])]
    if not per:
        return np.full(pred.shape[1], np.nan)
    stack = np.vstack(per)
    with warnings.catch_warnings():
        # all-NaN columns (a gene constant in every section) stay NaN without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stack, axis=0)


def gene_pcc_table(data: RunData) -> pd.DataFrame:
    """Per-gene PCC on the scored hidden sections, one column per model with predictions."""
    scored = {s for v in data.scored.values() for s in v}
    rows = data.spots.section_id.isin(scored).to_numpy()
    section = data.spots.section_id.to_numpy()[rows]
    out = {m: per_gene_pcc(p[rows], data.labels[rows], section)
           for m, p in data.predictions.items()}
    return pd.DataFrame(out, index=pd.Index(data.genes, name="gene"))


def metrics_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """model × metric: mean and standard deviation over scored sections, and the count."""
    if metrics.empty:
        return pd.DataFrame(columns=["model", "metric", "mean", "sd", "n"])
    g = metrics.dropna(subset=["value"]).groupby(["model", "metric"]).value
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=0), "n": g.size()}).reset_index()
    # keep models whose metric is undefined everywhere (e.g. pcc_gene of the mean profile)
    full = metrics[["model", "metric"]].drop_duplicates()
    return full.merge(out, on=["model", "metric"], how="left").fillna({"n": 0})
