"""Which image feature predicts expression best? A linear probe on patient C's spot patches.

    PYTHONPATH=... python bench/features.py --store STORE [--encoders a,b,...] [--json out.json]

STORE: any store of her2st patient C with the patches step done (e.g.
``asign ingest ../shared/data/her2st --samples C --store S --steps register,align,patches``).
For each encoder, every stored spot patch of C2–C6 is embedded through the product's
engine (``ingest.embed.embed_arrays``, default precision/runtime), then a ridge regression
maps features → the 200 genes of the store's panel that vary most *on C2* (the known
layer; no hidden-layer label picks a gene), leave-one-section-out (train on 4 sections,
predict the 5th). Features are z-scored and the ridge penalty chosen by generalised
cross-validation on the training sections only. Reported: mean per-gene Pearson r over the
held-out sections (the field's per-gene PCC), per held-out section and averaged.

This decided the product's feature: ``effnet-lite0`` (multi-scale GAP, r 0.304) over
``effnet-lite0-head`` (head GAP, 0.266), measured on 2026-11-30 when these were named
``effnet-lite0-ms`` and ``effnet-lite0``;
it is a probe of the features, not a result of asign's models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asign import encoders as E
from asign.ingest.embed import embed_arrays, embedding_config
from asign.store import open_store
from asign.train.data import _labels, gene_panel

DEFAULT = ("effnet-lite0-head,effnet-lite0,effnet-lite0-head:random,histo-classic,"
           "effnet-lite0+histo-classic")


def load_c(store_path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(spot ids, section index per spot, (N, px, px, 3) patches, (N, G) labels)."""
    store = open_store(store_path)
    sections = store.read("sections").to_pandas()
    sections = sections[(sections.sample_id == "C") & sections.has_image].sort_values("z")
    spots = store.read("spots", key="C").to_pandas()
    spots = spots[spots.section_id.isin(sections.section_id) & spots.px.notna()]
    ids = spots.spot_id.astype(str).tolist()
    index = {s: i for i, s in enumerate(ids)}
    sec_codes = {s: i for i, s in enumerate(sections.section_id)}
    sec = spots.section_id.map(sec_codes).to_numpy()
    labels, has = _labels(store, "C", index, len(gene_panel(store)), tuple(sec_codes), sec)
    with store.vectors(readonly=True) as vec:
        patches = vec.get_patches(ids)
    keep = np.flatnonzero(has)
    return [ids[i] for i in keep], sec[keep], patches[keep], labels[keep]


def probe(feats: np.ndarray, y: np.ndarray, sec: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import RidgeCV

    out: dict[str, float] = {}
    alphas = np.logspace(-1, 5, 13)
    for s in np.unique(sec):
        tr, te = sec != s, sec == s
        mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
        ridge = RidgeCV(alphas=alphas).fit((feats[tr] - mu) / sd, y[tr])
        pred = ridge.predict((feats[te] - mu) / sd)
        r = [np.corrcoef(pred[:, g], y[te, g])[0, 1] for g in range(y.shape[1])
             if y[te, g].std() > 0 and pred[:, g].std() > 0]
        out[f"C{s + 2}"] = float(np.mean(r))
    out["mean"] = float(np.mean(list(out.values())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--encoders", default=DEFAULT,
                    help="comma-separated; NAME:random for random weights")
    ap.add_argument("--n-genes", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    ids, sec, patches, labels = load_c(args.store)
    known = sec == 0
    top = np.argsort(-labels[known].var(0), kind="stable")[: args.n_genes]
    y = labels[:, top]
    print(f"patient C: {len(ids)} labelled spots in {len(np.unique(sec))} sections, "
          f"{patches.shape[1]}-px patches, {len(top)} genes (most variable on C2); "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr)
    rows = []
    for item in args.encoders.split(","):
        name, _, weights = item.partition(":")
        enc = E.load_encoder(name, weights or "imagenet")
        t0 = time.perf_counter()
        feats = embed_arrays(enc, patches).astype(np.float32)
        secs = time.perf_counter() - t0
        cfg = embedding_config(enc, 32)
        res = probe(feats, y, sec)
        row = {"encoder": item, "dim": enc.spec.dim, "precision": cfg["precision"],
               "runtime": cfg["runtime"], "img_per_s": round(len(ids) / secs, 1),
               **{k: round(v, 4) for k, v in res.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
