"""Alignment accuracy against the authors' independent alignment (DESIGN §3.3).

    .venv/bin/python bench/alignment.py                    # patient C of ../shared/data/her2st
    .venv/bin/python bench/alignment.py --check            # exit 1 when a goal is missed
    .venv/bin/python bench/alignment.py --overlay /tmp/c.png --transform affine
    .venv/bin/python bench/alignment.py --syn              # rigid + SyN, spots through the fields

asign aligns the H&E thumbnails of C2–C6 (``align_sample``). The authors' rigid warp of
every section into the frame of their first section (``ST-aligned/*-cluster-annotation``,
columns ``warped_x/warped_y``) is read *here only*, to measure: it is fitted per section
by least squares from pixel to warped coordinates. For each adjacent pair (A, B) every
spot of A is mapped into B's pixel frame once through asign's transforms and once
through the authors' warps; the error is the distance between the two, in µm.

µm/px is estimated per section from the spot table by regressing pixel coordinates on
array coordinates (200 µm per array step). Goals per pair: median ≤ 30 µm, p95 ≤ 60 µm.
Extra rows (not goals) compare pairs two sections apart. Two columns judge both
alignments independently of each other: "authDice" is the tissue-mask Dice that the
authors' warp achieves (compare with "Dice", ours), and "expr ours/auth" is how well
gene expression agrees across the pair under each alignment: the per-gene Pearson
correlation, over A's spots, between A's expression and B's expression interpolated (IDW,
4 nearest spots) at the mapped position, averaged over the 300 genes of highest mean
(log1p CP10k). A better alignment gives a higher value. "referee ours/auth" is the
product's expression referee (ingest/referee.py, also in the align QC): each section of
the pair predicted from the other by IDW (4 nearest spots) in the aligned frame, per-gene
PCC over those genes, both directions averaged.

With ``--syn`` the spots go through the deformation fields too (ingest/deform.py), so the
errors are measured in the aligned frame: A's spots through asign, against A's spots taken
into B by the authors and then through asign's B. For a rigid chain this equals the
distance in B's frame. ("expr ours" keeps the affine chain alone; the referee has the fields.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docs_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "her2st"
PITCH_UM = 200.0
GOAL_MEDIAN_UM = 30.0
GOAL_P95_UM = 60.0


def spot_table(data: Path, section: str) -> pd.DataFrame:
    return pd.read_csv(data / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")


def um_per_px(spots: pd.DataFrame) -> float:
    """From the spot pitch: pixel = A·(array x, array y) + b, 200 µm per array step."""
    design = np.c_[spots.x, spots.y, np.ones(len(spots))]
    coef, *_ = np.linalg.lstsq(design, np.c_[spots.pixel_x, spots.pixel_y], rcond=None)
    step_px = np.sqrt(np.abs(np.linalg.det(coef[:2])))
    return PITCH_UM / float(step_px)


def authors_warp(data: Path, section: str) -> np.ndarray:
    """3×3 least-squares fit pixel → warped of the authors' alignment (rigid by construction)."""
    a = pd.read_csv(data / "ST-aligned" / f"{section}-cluster-annotation.tsv.gz", sep="\t")
    design = np.c_[a.pixel_x, a.pixel_y, np.ones(len(a))]
    coef, *_ = np.linalg.lstsq(design, np.c_[a.warped_x, a.warped_y], rcond=None)
    m = np.eye(3)
    m[:2] = coef.T
    return m


def pair_errors(data: Path, a: str, b: str, by_id: dict, um: dict[str, float]) -> np.ndarray:
    """µm distance, per spot of A, between where asign puts it and where asign puts the
    authors' image of it in B (aligned frame)."""
    from asign.ingest.deform import to_aligned

    s = spot_table(data, a)
    pts = np.c_[s.pixel_x, s.pixel_y, np.ones(len(s))].T
    ours = np.c_[to_aligned(by_id, um, a, pts[0], pts[1])]
    in_b = np.linalg.inv(authors_warp(data, b)) @ authors_warp(data, a) @ pts
    theirs = np.c_[to_aligned(by_id, um, b, in_b[0], in_b[1])]
    return np.linalg.norm(ours - theirs, axis=1)


def referee(expr: dict[str, pd.DataFrame], spots: dict[str, pd.DataFrame], genes: list[str], a: str,
            b: str, place: dict[str, np.ndarray]) -> float:
    """The product's expression referee on the pair, spots placed by ``place[s]`` (N, 2)."""
    from asign.ingest.referee import referee_pcc

    def xy_y(s: str) -> tuple[np.ndarray, np.ndarray]:
        ids = pd.Index([f"{x}x{y}" for x, y in zip(spots[s].x, spots[s].y, strict=True)])
        keep = ids.isin(expr[s].index)
        return place[s][keep], expr[s].loc[ids[keep], genes].to_numpy()

    return referee_pcc(*xy_y(a), *xy_y(b))


def expression(data: Path, section: str, spots: pd.DataFrame) -> pd.DataFrame:
    """log1p(1e4·c/Σc) per spot (rows: ``"{x}x{y}"`` ids that have a pixel position)."""
    counts = pd.read_csv(data / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    ids = pd.Index([f"{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)])
    counts = counts.loc[counts.index.intersection(ids)]
    return np.log1p(1e4 * counts.div(counts.sum(axis=1), axis=0))


def expression_agreement(expr: dict[str, pd.DataFrame], spots: dict[str, pd.DataFrame],
                         genes: list[str],
                         a: str, b: str, a_to_b_px: np.ndarray, pitch_px: float) -> float:
    from scipy.spatial import cKDTree

    def xy(s: str) -> np.ndarray:
        ids = [f"{x}x{y}" for x, y in zip(spots[s].x, spots[s].y, strict=True)]
        t = spots[s].set_index(pd.Index(ids))
        t = t.loc[expr[s].index]
        return np.c_[t.pixel_x, t.pixel_y]

    pa = xy(a)
    mapped = (a_to_b_px @ np.c_[pa, np.ones(len(pa))].T)[:2].T
    dist, idx = cKDTree(xy(b)).query(mapped, k=4)
    w = 1.0 / np.maximum(dist, 1.0)
    w /= w.sum(axis=1, keepdims=True)
    eb = expr[b][genes].to_numpy()
    pred = (eb[idx] * w[..., None]).sum(axis=1)
    ea = expr[a][genes].to_numpy()
    near = dist[:, 0] < 1.5 * pitch_px
    pcc = [np.corrcoef(pred[near, g], ea[near, g])[0, 1] for g in range(len(genes))
           if ea[near, g].std() > 0 and pred[near, g].std() > 0]
    return float(np.mean(pcc))


def authors_dice(thumbs: dict[str, np.ndarray], ds: dict[str, float], data: Path, a: str,
                 b: str) -> float:
    import cv2

    from asign.ingest.align import dice
    from asign.ingest.tissue import tissue_mask

    px = np.linalg.inv(authors_warp(data, b)) @ authors_warp(data, a)
    s_a, s_b = np.diag([ds[a], ds[a], 1.0]), np.diag([1 / ds[b], 1 / ds[b], 1.0])
    pix = s_b @ px @ s_a
    ma, mb = tissue_mask(thumbs[a]), tissue_mask(thumbs[b])
    warped = cv2.warpAffine(ma.astype(np.uint8), pix[:2], (mb.shape[1], mb.shape[0]),
                            flags=cv2.INTER_NEAREST)
    return dice(warped.astype(bool), mb)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {cores} usable cores, load {load:.1f}, {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    from asign.ingest.align import align_sample
    from asign.ingest.images import read_thumbnail
    from asign.ingest.overlay import render_overlay

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sections", default="C2,C3,C4,C5,C6")
    ap.add_argument("--thumb-um", type=float, default=11.0,
                    help="thumbnail resolution, µm per pixel")
    ap.add_argument("--transform", default="rigid", choices=["rigid", "affine"])
    ap.add_argument("--syn", action="store_true",
                    help="refine every pair with ANTs SyN (as ingest --syn)")
    ap.add_argument("--reference", default=None)
    ap.add_argument("--overlay", type=Path, default=None, help="write the aligned-outline PNG here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a pair misses a goal")
    ap.add_argument("--no-expression", action="store_true",
                    help="skip the expression-agreement column")
    _docs_record.add_flag(ap)
    args = ap.parse_args(argv)

    sections = args.sections.split(",")
    um = {s: um_per_px(spot_table(args.data, s)) for s in sections}
    ds, thumbs = {}, {}
    t0 = time.perf_counter()
    for s in sections:
        image = next((args.data / "ST-imgs" / s[0] / s).glob("*.jpg"))
        ds[s] = args.thumb_um / um[s]
        thumbs[s] = read_thumbnail(image, ds[s])
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    transforms = align_sample(thumbs, ds, um, reference=args.reference, transform=args.transform,
                              syn=args.syn)
    t_align = time.perf_counter() - t0
    matrix = {t.section_id: t.matrix for t in transforms}
    by_id = {t.section_id: t for t in transforms}
    qc = {t.section_id: t.qc for t in transforms}

    print(json.dumps({"seeds": [0], "protocol": f"her2st {','.join(sections)}, thumbnails "
                      f"{args.thumb_um:g} µm/px, {args.transform}{'+syn' if args.syn else ''}; "
                      "errors against the authors' warps"}))
    print(f"machine: {machine()}")
    print(f"data: {args.data}  sections: {','.join(sections)}  thumbnails {args.thumb_um:g} µm/px "
          f"(read {t_read:.1f} s)  transform: {args.transform}{'+syn' if args.syn else ''}  "
          f"reference: {transforms[0].reference_id}")
    print("µm/px from spot pitch: " + ", ".join(f"{s} {um[s]:.4f}" for s in sections))
    print(f"align_sample: {t_align:.1f} s wall for {len(sections)} sections")
    spots = {s: spot_table(args.data, s) for s in sections}
    expr, genes = {}, []
    if not args.no_expression:
        expr = {s: expression(args.data, s, spots[s]) for s in sections}
        shared = set.intersection(*(set(e.columns) for e in expr.values()))
        means = pd.concat([e[sorted(shared)] for e in expr.values()]).mean()
        genes = list(means.sort_values(ascending=False).index[:300])
    from asign.ingest.deform import to_aligned

    ours_xy = {s: np.c_[to_aligned(by_id, um, s, spots[s].pixel_x.to_numpy(),
                                   spots[s].pixel_y.to_numpy())]
               for s in sections}
    auth_xy = {s: (authors_warp(args.data, s) @ np.c_[spots[s].pixel_x, spots[s].pixel_y,
                                                      np.ones(len(spots[s]))].T)[:2].T
               for s in sections}
    head = (f"{'pair':8} {'n':>4} {'median':>7} {'p95':>6} {'max':>6}  {'goal':4}  {'rot°':>6} "
            f"{'flip':>5} {'inl':>4} {'Dice0':>6} {'Dice':>6} {'authDice':>8}  "
            f"{'expr ours/auth':>14}  {'referee ours/auth':>17}")
    print(head)
    print("-" * len(head))
    failed, rows = [], []
    pairs = list(zip(sections, sections[1:], strict=False))
    extra = list(zip(sections, sections[2:], strict=False))
    for a, b in pairs + extra:
        err = pair_errors(args.data, a, b, by_id, um)
        med, p95 = float(np.median(err)), float(np.percentile(err, 95))
        is_goal = (a, b) in pairs
        ok = med <= GOAL_MEDIAN_UM and p95 <= GOAL_P95_UM
        if is_goal and not ok:
            failed.append(f"{a}-{b}")
        # the QC of the registered pair that links these two, whichever way it was run
        q = (qc[a] if qc[a] is not None and qc[a].fixed == b
             else qc[b] if qc[b] is not None and qc[b].fixed == a else None)
        qtxt = (f"{q.rotation_deg:6.2f} {str(q.flipped):>5} {q.ransac_inliers:4d} "
                f"{q.overlap_before:6.3f} {q.overlap_after:6.3f}" if q
                else f"{'':6} {'':5} {'':4} {'':6} {'':6}")
        goal = ("ok" if ok else "MISS") if is_goal else "(x)"
        etxt = ""
        if expr:
            pitch_px = PITCH_UM / um[b]
            ours = expression_agreement(expr, spots, genes, a, b,
                                        np.linalg.inv(matrix[b]) @ matrix[a], pitch_px)
            theirs = expression_agreement(expr, spots, genes, a, b,
                                          np.linalg.inv(authors_warp(args.data, b))
                                          @ authors_warp(args.data, a), pitch_px)
            etxt = f"  {ours:.3f}/{theirs:.3f}"
            etxt += (f"      {referee(expr, spots, genes, a, b, ours_xy):.3f}/"
                     f"{referee(expr, spots, genes, a, b, auth_xy):.3f}")
        auth_dice = authors_dice(thumbs, ds, args.data, a, b)
        print(f"{a}-{b:5} {len(err):4d} {med:7.1f} {p95:6.1f} {err.max():6.1f}  {goal:4}  {qtxt} "
              f"{auth_dice:8.3f}{etxt:>35}")
        rows.append([f"{a}–{b}" + ("" if is_goal else " (two apart)"), str(len(err)),
                     f"{med:.1f}", f"{p95:.1f}", goal if is_goal else "",
                     f"{q.rotation_deg:+.2f}°" if q else "",
                     f"{q.overlap_before:.3f} → {q.overlap_after:.3f} ({auth_dice:.3f})" if q
                     else "", etxt.split()[0] if etxt else ""])
    print(f"goal: median ≤ {GOAL_MEDIAN_UM:g} µm and p95 ≤ {GOAL_P95_UM:g} µm on every adjacent "
          "pair; (x) rows are two sections apart, for information")
    print("\n### Pairs against the authors' alignment\n\n| pair | spots | median µm | p95 µm "
          "| goal | rotation | tissue Dice before → after (authors') "
          "| expression agreement ours/authors |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.overlay:
        import cv2

        args.overlay.parent.mkdir(parents=True, exist_ok=True)
        png = render_overlay(thumbs, ds, transforms, um)
        cv2.imwrite(str(args.overlay), png[..., ::-1])
        print(f"overlay: {args.overlay}")
    if failed:
        print(f"missed goal: {', '.join(failed)}")
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(_docs_record.run(main, "alignment"))
