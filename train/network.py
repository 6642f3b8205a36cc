"""The interface a network model implements for the training loop (train/loop.py),
block-wise training (train/batching.py), gate calibration and fine-tuning.

``ASIGNNet`` (train/model.py) implements it, and so does the fine-tuning wrapper
(train/finetune.py). A new network implements :class:`Network` in a module of its own and
is registered as ``ModelSpec(builder="module:function")`` in train/config.py (the builder
takes the model name and ``loop.model_overrides``); the loop never asks which network it
runs (tests/train/test_network_registry.py trains a second network class that way)."""

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
    #: the per-spot body, called ``net(inputs, graph) -> ModelOutput`` block by block on
    #: large graphs (train/batching.py); it has ``gats`` (a sequence of message-passing
    #: layers, one hop each: a block's halo; may be empty) and ``checkpoint_activations``
    #: (bool, set while a block trains); optional regression heads ``head_spot``,
    #: ``head_region``, ``head_global`` (nn.Sequential: their last bias starts at the
    #: training mean profile)
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
