"""Concatenated encoders (``--encoder a+b``): each part sees the patch normalised its own
way, and the vectors are joined. The embedding engine runs each part in its own runtime and
precision (``ingest/embed.py``: a CNN fused in bf16, numpy features eagerly). The parts'
features live on different scales (a CNN's pooled activations beside stain fractions and GLCM
contrast), so the spec asks ingest to z-score every feature (``standardise``; how and with
which statistics: ``ingest/standardise.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

SEPARATOR = "+"


class Concat(nn.Module):
    """(B, 3, px, px) pixels in 0..255 → [part_1(norm_1(x)), part_2(norm_2(x)), ...]."""

    def __init__(self, parts: Sequence[nn.Module], means: Sequence[Sequence[float]],
                 stds: Sequence[Sequence[float]]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        shape = (1, 3, 1, 1)
        # x / 255 then (· − mean) / std, as the engine does for a single encoder.
        for i, (mean, std) in enumerate(zip(means, stds, strict=True)):
            std_t = torch.tensor(std, dtype=torch.float32).view(shape)
            mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
            self.register_buffer(f"scale{i}", 1.0 / (255.0 * std_t), persistent=False)
            self.register_buffer(f"shift{i}", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, part in enumerate(self.parts):
            xi = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
            outs.append(part(xi).float())
        return torch.cat(outs, dim=1)


def concat_spec(name: str, get_spec: Callable[[str], Any], spec_type: type) -> Any:
    """The EncoderSpec of ``a+b+...``: parts must share one input size; ``--weights`` goes
    to the part that has weights (at most one), weight-free parts ignore it."""
    from asign.errors import ConfigError

    names = name.split(SEPARATOR)
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"bad encoder combination {name!r}",
                          fix="join distinct registry names with '+', e.g. "
                              "effnet-lite0+histo-classic")
    specs = [get_spec(n) for n in names]
    sizes = {s.input_px for s in specs}
    if len(sizes) != 1:
        raise ConfigError(f"encoders in {name!r} take different input sizes {sorted(sizes)}",
                          fix="combine encoders with the same input_px")
    weighted = [s for s in specs if not s.weight_free]
    if len(weighted) > 1:
        raise ConfigError(f"{name!r} combines {len(weighted)} encoders with weights",
                          fix="combine at most one network with weight-free encoders")

    def build(weights: Any, seed: int) -> Concat:
        parts = [s.build(weights, seed) for s in specs]
        return Concat(parts, [s.mean for s in specs], [s.std for s in specs])

    return spec_type(
        name=name,
        dim=sum(s.dim for s in specs),
        input_px=specs[0].input_px,
        mean=(0.0, 0.0, 0.0),
        std=(1 / 255, 1 / 255, 1 / 255),
        build=build,
        hub_files=weighted[0].hub_files if weighted else (),
        bundled=weighted[0].bundled if weighted else None,
        bundled_package=weighted[0].bundled_package if weighted else "",
        weight_free=not weighted,
        standardise=True,
        description=" + ".join(f"[{s.name}: {s.description}]" for s in specs)
        + "; every feature z-scored",
        extra={"parts": [{"name": s.name, "dim": s.dim} for s in specs]},
    )
