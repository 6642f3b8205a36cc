"""The interface a network model implements for the training loop (train/loop.py),
block-wise training (train/batching.py), gate calibration and fine-tuning.

``ASIGNNet`` (train/model.py) implements it, and so does the fine-tuning wrapper
(train/finetune.py). A new network implements :class:`Network`, and is registered as a
``ModelSpec(network=...)`` in train/config.py; the loop never asks which network it runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn

    from asign.train.gnn import EdgeGraph
    from asign.train.model import GraphInputs, ModelConfig, ModelOutput


@runtime_checkable
class Network(Protocol):
    cfg: ModelConfig
    #: the per-spot body: GAT layers in ``gats`` (one message hop each: a block's halo) and
    #: regression heads ``head_spot``/``head_region``/``head_global`` (their last bias
    #: starts at the training mean profile)
    net: nn.Module
    cli: nn.Module | None  # cross-layer imputation; its parameters learn at cli_lr_scale × lr

    def __call__(self, inputs: GraphInputs, y_known: Tensor | None = None,
                 known_mask: Tensor | None = None, *, graph: EdgeGraph | None = None,
                 net_out: ModelOutput | None = None) -> ModelOutput:
        """Predict every spot; the CLI reads ``y_known`` on ``known_mask`` rows only."""
        ...

    def edge_graph(self, inputs: GraphInputs) -> EdgeGraph: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any: ...
