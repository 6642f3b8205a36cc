"""Encoder throughput against this machine's own matmul peak, and end-to-end spots/s.

    .venv/bin/python bench/embed.py [--encoder effnet-lite0] [--batch-size 32] [--repeats 3] \\
        [--json out.json]

1. Machine: CPU model, cores, torch, native bf16.
2. Encoder (--encoder, default resnet50-l3 with random weights: same FLOPs as ImageNet
   weights; effnet-lite0/-lite2 with their bundled weights) at the encoder's input size:
   eager fp32, fp32 channels-last and bf16 autocast channels-last, and the fused runtimes
   of ``ingest.embed`` (jit = the CPU default; inductor with --inductor). FLOPs per image
   from torch's FlopCounterMode; achieved GFLOP/s and the ratio to the matmul peak of the
   same precision. Peak = best-of 4096² matmuls in fp32 and bf16, sampled round-robin with
   the encoder batches, so both see the same background load; best-of on both sides.
4. End to end on her2st C3: cold start (the JPEG is decoded inside the timing), a
   224-equivalent patch per spot cropped (resized to the encoder's input), PNG-compressed and
   encoded through ``embed_batches``; then the section's region and global tiles as well.
5. Ingest end to end on patient C (--ingest): the real ``patches`` and ``embed`` steps into
   a store (register and align done once beforehand, untimed), cold (slides decoded, encoder
   loaded and traced inside the timing), by two routes: both steps in one run (the spot
   level streams: crop → encoder, PNG stored by a loader thread, ingest/spot_stream.py) and
   the two steps in separate runs (crop → PNG → LMDB, then LMDB → PNG decode → encoder).
   Both stores must be identical entry for entry; spots/s and items/s (spots + tiles) are
   given beside the engine's img/s: its best-of rate (2.), its sustained rate on as many
   images right after the routes, and (``*_vs_engine_in_run``) the time spent in the
   encoder's own calls during the route over the route's wall time: the end-to-end rate as a
   fraction of the engine's rate in the same run, under the same load (the fairest ratio on
   a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info, matmul_peak

from asign import encoders as E
from asign.ingest import embed as M
from asign.ingest import images
from asign.ingest import patches as P
from asign.store.codecs import encode_patch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"
HER2ST_PITCH_UM = 200.0


def flops_per_image(module: torch.nn.Module, px: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(torch.zeros(1, 3, px, px))
    return int(counter.get_total_flops())


def encoder_variants(
    enc: E.LoadedEncoder, batch_size: int, repeats: int, inductor: bool, only: str | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Best-of images/s per variant and best-of matmul GFLOP/s, sampled round-robin so
    that every number sees the same background load."""
    import copy

    rng = np.random.default_rng(0)
    px = enc.spec.input_px
    u8 = rng.integers(0, 256, (batch_size, px, px, 3), dtype=np.uint8)
    x = torch.randn(batch_size, 3, px, px, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(enc.module).to(memory_format=torch.contiguous_format)

    def eager(module, inp, dtype=None):
        def fn():
            with torch.inference_mode():
                if dtype is None:
                    return module(inp)
                with torch.autocast("cpu", dtype=dtype):
                    return module(inp)

        return fn

    def fused(precision, runtime):
        def build():
            t = time.perf_counter()
            fn = partial(M._Forward(enc, precision, batch_size, runtime), u8)
            print(
                f"  {precision} {runtime}: trace/compile + warm-up {time.perf_counter() - t:.1f} s"
            )
            return fn

        return build

    factories = {
        "fp32_eager": lambda: eager(nchw, x),
        "fp32_eager_channels_last": lambda: eager(enc.module, x_cl),
        "fp32_jit_channels_last": fused("fp32", "jit"),
    }
    if M.cpu_has_bf16():
        factories["bf16_autocast_channels_last"] = lambda: eager(enc.module, x_cl, torch.bfloat16)
        factories["bf16_jit_channels_last"] = fused("bf16", "jit")
        if inductor:
            factories["bf16_inductor_channels_last"] = fused("bf16", "inductor")
    if only:
        wanted = only.split(",")
        factories = {k: v for k, v in factories.items() if any(w in k for w in wanted)}
    fns = {name: build() for name, build in factories.items()}
    production = M.embedding_config(enc, batch_size)
    print(f"  production path: {production['precision']} / {production['runtime']}")
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, 0.0)
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(repeats):
        peaks["fp32"] = max(peaks["fp32"], matmul_peak(torch.float32, repeats=1))
        if M.cpu_has_bf16():
            peaks["bf16"] = max(peaks["bf16"], matmul_peak(torch.bfloat16, repeats=1))
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], batch_size / (time.perf_counter() - t))
    return best, peaks


def her2st_c3(n_spots: int | None):
    import pandas as pd

    image = next((DATA / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    spots = pd.read_csv(DATA / "ST-spotfiles" / "C3_selection.tsv", sep="\t")
    # µm/px from the array pitch: 200 µm per array step on the legacy ST slide.
    slope = np.polyfit(spots.x.values, spots.pixel_x.values, 1)[0]
    um_per_px = HER2ST_PITCH_UM / abs(slope)
    if n_spots:
        spots = spots.head(n_spots)
    return image, spots, um_per_px


def end_to_end(enc: E.LoadedEncoder, batch_size: int, n_spots: int | None) -> dict:
    image, spots, um_per_px = her2st_c3(n_spots)
    px, py = spots.pixel_x.values, spots.pixel_y.values
    keys = [f"C3/{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)]
    spot_px = P.equivalent_px(224, um_per_px)
    out_px = enc.spec.input_px

    def cold():
        images.open_slide.cache_clear()
        P._warm_paths.clear()

    def run_spots(workers: int) -> tuple[float, int]:
        cold()
        items = M.crop_items(image, keys, P.spot_patch_box(px, py, spot_px), spot_px, out_px)
        t = time.perf_counter()
        nbytes = 0
        for batch in M.embed_batches(
            enc, items, batch_size=batch_size, workers=workers, patch_codec="png"
        ):
            nbytes += sum(len(b) for b in batch.patches)
        return time.perf_counter() - t, nbytes

    # Loading alone (decode + crop + PNG), sequential, to show how much the overlap hides.
    cold()
    t = time.perf_counter()
    for x0, y0 in P.spot_patch_box(px, py, spot_px):
        encode_patch(P.crop(image, x0, y0, spot_px, out_px))
    load_s = time.perf_counter() - t

    spots_s, nbytes = run_spots(workers=1)

    # The whole section: spots plus every region/global tile any spot refers to.
    width, height = images.image_size(image)
    tiles = []
    for level in P.TILE_LEVELS:
        size = P.equivalent_px(P.LEVEL_SIZES_REF[level], um_per_px)
        bbox = P.points_bbox(px, py, size, width, height)
        grid = P.tile_grid(width, height, size, bbox=bbox, level=level)
        used = P.used_tiles(P.spot_to_tiles(px, py, grid))
        ids = grid.tile_ids("C3", used)
        tiles += M.crop_items(image, ids, grid.corners()[used], size, out_px)
    cold()
    t = time.perf_counter()
    spot_items = M.crop_items(image, keys, P.spot_patch_box(px, py, spot_px), spot_px, out_px)
    for _ in M.embed_batches(enc, spot_items, batch_size=batch_size, patch_codec="png"):
        pass
    for _ in M.embed_batches(enc, tiles, batch_size=batch_size):
        pass
    section_s = time.perf_counter() - t
    n = len(keys)
    return {
        "section": "C3",
        "um_per_px": round(um_per_px, 4),
        "spot_px": spot_px,
        "spots": n,
        "tiles": len(tiles),
        "load_only_s": round(load_s, 2),
        "spots_e2e_s": round(spots_s, 2),
        "spots_per_s": round(n / spots_s, 1),
        "png_kib_per_patch": round(nbytes / n / 1024, 1),
        "section_e2e_s": round(section_s, 2),
        "section_spots_per_s": round(n / section_s, 1),
    }


def png_costs(n: int = 64) -> dict:
    """ms per her2st spot patch of the stored codec against Pillow's PNG (adaptive filters,
    zlib level 1: the codec before), timed alternately so both see the same load."""
    import io

    from PIL import Image

    image, spots, um_per_px = her2st_c3(n)
    spot_px = P.equivalent_px(224, um_per_px)
    arrs = [P.crop(image, x, y, spot_px, 224)
            for x, y in P.spot_patch_box(spots.pixel_x.values, spots.pixel_y.values, spot_px)]

    def pillow(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    best = {"pillow_png1": (1e9, 0), "stored_png": (1e9, 0)}
    for _ in range(3):
        for name, fn in (("pillow_png1", pillow), ("stored_png", encode_patch)):
            t = time.perf_counter()
            size = sum(len(fn(a)) for a in arrs)
            best[name] = (min(best[name][0], (time.perf_counter() - t) / len(arrs) * 1e3), size)
    return {f"{k}_ms": round(v[0], 2) for k, v in best.items()} | {
        f"{k}_kib": round(v[1] / len(arrs) / 1024, 1) for k, v in best.items()}


def ingest_end_to_end(encoder: str, batch_size: int, work: Path, threads: int) -> dict:
    """Patient C's patches + embed steps, streamed vs separate (module docstring, 5.), with
    the engine's sustained rate measured before and after the routes at the same threads."""
    import shutil

    from asign.ingest import run as ingest_run
    from asign.ingest.config import IngestConfig
    from asign.store import open_store

    base = work / "base"
    if not (base / "manifest.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        ingest_run(IngestConfig(sources=(DATA,), store=base, samples="C",
                                steps=("register", "align")))

    # Time the encoder's own calls inside the routes: their sum over the route's wall time
    # is the fraction of the route during which the encoder is busy (not the throughput
    # ratio: the encoder itself runs slower beside the loader threads).
    in_engine = [0.0, 0]
    call = M._Forward.__call__

    def timed(self, batch):
        in_engine[1] += 1
        t = time.perf_counter()
        try:
            return call(self, batch)
        finally:
            in_engine[1] -= 1
            if in_engine[1] == 0:  # a concatenated encoder's parts are inside its own call
                in_engine[0] += time.perf_counter() - t

    def route(name: str, runs: list[tuple[str, ...]]) -> tuple[float, Path, float, float]:
        store = work / name
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base, store)
        cold()
        in_engine[0] = 0.0
        M._Forward.__call__ = timed
        t = time.perf_counter()
        try:
            for steps in runs:
                ingest_run(IngestConfig(sources=(DATA,), store=store, samples="C", steps=steps,
                                        encoder=encoder, weights=weights, batch_size=batch_size,
                                        threads=threads))
        finally:
            M._Forward.__call__ = call
        return time.perf_counter() - t, store, in_engine[0], os.getloadavg()[0]

    def cold() -> None:
        images.open_slide.cache_clear()
        P._warm_paths.clear()

    def entries(root: Path) -> dict[bytes, bytes]:
        with open_store(root).vectors() as vec:
            return vec.entries()

    # Random weights where none are bundled: the same FLOPs, and no download needed.
    weights = "imagenet" if E.get_encoder_spec(encoder).bundled else "random"
    enc = E.load_encoder(encoder, weights, seed=0)

    def sustained(n_items: int) -> tuple[float, float]:
        """The engine alone on as many (random) images as the ingest embeds, in its batches
        and at its threads: its sustained img/s at this moment's load, and that load."""
        px = enc.spec.input_px
        images_ = np.random.default_rng(0).integers(0, 256, (batch_size, px, px, 3), np.uint8)
        torch.set_num_threads(threads)
        forward = M._Forward(enc, "auto", batch_size, "auto")
        forward(images_)
        t = time.perf_counter()
        for _ in range(-(-n_items // batch_size)):
            forward(images_)
        return n_items / (time.perf_counter() - t), os.getloadavg()[0]

    engine_before = sustained(3000)  # about patient C's item count
    streamed_s, a, streamed_engine, streamed_load = route("streamed", [("patches", "embed")])
    separate_s, b, separate_engine, separate_load = route("separate", [("patches",), ("embed",)])
    levels = open_store(a).read("embeddings", key="C",
                                columns=["level"]).column("level").to_pylist()
    n_spots = levels.count("spot")
    n_items = len(levels)
    same = entries(a) == entries(b)
    engine_after = sustained(n_items)
    # THE ratio: items/s over the engine's sustained img/s, the better of the two
    # measurements beside the routes (a slow engine sample cannot flatter the ratio).
    engine = max(engine_before[0], engine_after[0])
    return {
        "threads": threads,
        "streamed_items_vs_engine": round(n_items / streamed_s / engine, 3),
        "separate_items_vs_engine": round(n_items / separate_s / engine, 3),
        "engine_sustained_img_per_s": round(engine, 1),
        "engine_before": {"img_per_s": round(engine_before[0], 1),
                          "loadavg_1min": round(engine_before[1], 2)},
        "engine_after": {"img_per_s": round(engine_after[0], 1),
                         "loadavg_1min": round(engine_after[1], 2)},
        "streamed_items_per_s": round(n_items / streamed_s, 1),
        "streamed_loadavg_1min": round(streamed_load, 2),
        "separate_items_per_s": round(n_items / separate_s, 1),
        "separate_loadavg_1min": round(separate_load, 2),
        "sample": "C", "spots": n_spots, "tiles": n_items - n_spots, "identical_lmdb": same,
        "streamed_s": round(streamed_s, 2), "separate_s": round(separate_s, 2),
        "streamed_encoder_busy_fraction": round(streamed_engine / streamed_s, 3),
        "separate_encoder_busy_fraction": round(separate_engine / separate_s, 3),
        "patch_codec": png_costs(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet50-l3")
    ap.add_argument("--batch-size", type=int, default=M.DEFAULT_BATCH_SIZE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated substrings of variant names")
    ap.add_argument("--no-e2e", action="store_true", help="skip the her2st end-to-end run")
    ap.add_argument("--spots", type=int, default=None, help="limit the end-to-end spots")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--inductor", action="store_true", help="also time torch.compile (~40 s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of --ingest and its engine (default: ingest's own)")
    ap.add_argument("--models", default=None, metavar="A,B",
                    help="the foundation-model table of bench/encoders.py instead (e.g. 'all')")
    ap.add_argument("--ingest", type=Path, default=None, metavar="DIR",
                    help="also time patient C's patches+embed steps, stores under DIR (~1 min)")
    args = ap.parse_args()

    report: dict = {"machine": machine_info()}
    print("machine:", json.dumps(report["machine"]))
    if args.models:
        from encoders import FOUNDATION_MODELS
        from encoders import run as models_table

        names = list(FOUNDATION_MODELS) if args.models == "all" else args.models.split(",")
        report["models"] = models_table(names, batch=8, repeats=args.repeats)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    weights = "imagenet" if E.get_encoder_spec(args.encoder).bundled else "random"
    enc = E.load_encoder(args.encoder, weights, seed=0)
    report["encoder_name"] = args.encoder
    px = enc.spec.input_px
    flops = flops_per_image(enc.module, px)
    print(f"{args.encoder} ({weights}): {flops / 1e9:.2f} GFLOP per {px}-px image, batch "
          f"{args.batch_size}")
    variants, peaks = encoder_variants(enc, args.batch_size, args.repeats, args.inductor, args.only)
    report["matmul_peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    print(f"matmul peak 4096²: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    report["gflop_per_image"] = round(flops / 1e9, 3)
    report["batch_size"] = args.batch_size
    report["encoder"] = {}
    for name, ips in variants.items():
        kind = "bf16" if name.startswith("bf16") else "fp32"
        gflops = ips * flops / 1e9
        ratio = gflops / peaks[kind] if peaks[kind] else float("nan")
        report["encoder"][name] = {
            "img_per_s": round(ips, 1),
            "gflops": round(gflops, 1),
            "ratio_to_peak": round(ratio, 3),
        }
        print(f"  {name:30s} {ips:6.1f} img/s  {gflops:6.1f} GFLOP/s  {ratio:.2f} of {kind} peak")

    if not args.no_e2e and (DATA / "ST-imgs" / "C" / "C3").is_dir():
        e2e = end_to_end(enc, args.batch_size, args.spots)
        # End to end against the engine alone, in the precision/runtime ingest uses.
        prod = M.embedding_config(enc, args.batch_size)
        engine = report["encoder"].get(f"{prod['precision']}_{prod['runtime']}_channels_last", {})
        if engine:
            e2e["engine_img_per_s"] = engine["img_per_s"]
            e2e["spots_e2e_vs_engine"] = round(e2e["spots_per_s"] / engine["img_per_s"], 3)
        report["end_to_end"] = e2e
        print("end to end (her2st C3, cold start, PNG patches):", json.dumps(e2e))
    if args.ingest and (DATA / "ST-imgs" / "C").is_dir():
        from asign.cluster import idle_cores

        threads = args.threads or idle_cores()
        ing = ingest_end_to_end(args.encoder, args.batch_size, args.ingest, threads)
        report["ingest"] = ing
        print("ingest end to end (patient C, patches+embed, cold):", json.dumps(ing))
    report["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
