"""Each pathology foundation model's CPU cost on this machine: img/s and the fraction of the
matmul peak it reaches, at one torch thread and at torch's default.

    .venv/bin/python bench/encoders.py [--models uni,virchow2] [--batch-size 8] [--json out.json]

(``bench/embed.py --models`` runs the same table.) Random weights, same FLOPs: each model is
built on the meta device in its published architecture (``asign.encoders.foundation``),
its FLOPs per image counted there by torch's FlopCounterMode (attention included), then
materialised with random bf16 weights (fp32 where the CPU has no native bf16) — the dtype
asign's bf16 autocast computes in — and run eagerly under inference mode on a fixed batch.
The peak is the best-of n×n×n matmul of the same dtype at the same thread count, sampled
between the model's batches so both see the same background load; the load average is
printed beside every number. Needs ~2.3 GB of RAM for the ViT-g models (1.1 B parameters)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _machine import machine_info, matmul_peak

from asign import encoders as E
from asign.encoders.builders import _create_vit
from asign.encoders.foundation import FOUNDATION_MODELS
from asign.nets.vit_tokens import PooledViT


def _flops(net: torch.nn.Module, px: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.empty(1, 3, px, px, device="meta"))
    return int(counter.get_total_flops())


def _random(name: str, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    model = FOUNDATION_MODELS[name]
    with torch.device("meta"):
        net = PooledViT(_create_vit(model), model.pooling).eval()
    flops = _flops(net, model.input_px)
    net = net.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return net.requires_grad_(False), flops


def bench_model(name: str, batch: int, repeats: int, threads: list[int]) -> dict:
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    net, flops = _random(name, dtype)
    px = FOUNDATION_MODELS[name].input_px
    x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(1)).to(dtype)
    row: dict = {"gflop_per_image": round(flops / 1e9, 1), "dtype": str(dtype).split(".")[-1],
                 "dim": E.get_encoder_spec(name).dim, "batch": batch}
    for n in threads:
        torch.set_num_threads(n)
        with torch.inference_mode():
            net(x)  # warm-up: oneDNN picks and caches its kernels
            best, peak = 0.0, 0.0
            for _ in range(repeats):
                peak = max(peak, matmul_peak(dtype, n=2048, repeats=2))
                t = time.perf_counter()
                net(x)
                best = max(best, batch / (time.perf_counter() - t))
        row[f"threads_{n}"] = {
            "img_per_s": round(best, 2), "matmul_peak_gflops": round(peak, 1),
            "ratio_to_peak": round(best * flops / 1e9 / peak, 3),
            "loadavg_1min": round(os.getloadavg()[0], 2)}
    del net
    return row


def run(models: list[str], batch: int, repeats: int) -> dict:
    E.ensure_torchvision()
    default = torch.get_num_threads()
    threads = sorted({1, default})
    out = {}
    for name in models:
        out[name] = bench_model(name, batch, repeats, threads)
        print(name, json.dumps(out[name]), flush=True)
    torch.set_num_threads(default)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(FOUNDATION_MODELS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report = {"machine": machine_info()}
    print("machine:", json.dumps(report["machine"]))
    report["models"] = run(args.models.split(","), args.batch_size, args.repeats)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
