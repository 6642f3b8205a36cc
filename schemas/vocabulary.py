"""The values a store column may hold, where more than one module reads or writes them.

Writers (ingest/), readers (train/, report/) and ``asign check`` all take these tuples from
here, so a new edge kind or metric is added in one place."""

from __future__ import annotations

#: edges.kind, indexed by the uint8 code the graph builder and the model use
EDGE_KINDS = ("same_layer", "cross_layer")
#: tiles.level: the context tiles around a spot
TILE_LEVELS = ("region", "global")
#: embeddings.level: the spot patch and its context tiles
LEVELS = ("spot", *TILE_LEVELS)
#: metrics.metric: the metric records are train/metrics.py's METRICS
#: labels.value: how counts become the trained-on value (ingest/labels.py)
NORMALISATIONS = ("log_ratio", "log1p_cp10k")
