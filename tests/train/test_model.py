"""model: MSAGNet uses its token sets, keeps node identity, and the variants differ as designed."""

from __future__ import annotations

import pytest
import torch

from asign.errors import AsignError, ConfigError
from asign.train.model import (
    EDGE_KINDS,
    GraphInputs,
    TokenSet,
    build_model,
    drop_edges,
    model_config,
    scale_edge_weights,
)

D, G = 24, 6
SMALL = dict(in_dim=D, n_genes=G, hidden_dim=16, n_heads=2)


def _inputs(n: int = 30, e: int = 150, seed: int = 0, r: int = 4) -> GraphInputs:
    gen = torch.Generator().manual_seed(seed)
    spot = torch.randn(n, D, generator=gen)
    region_tokens = torch.randn(n, r, D, generator=gen)
    region_mask = torch.rand(n, r, generator=gen) > 0.4
    region_mask[:, 0] = True
    region_mask[0, 1] = True  # node 0 has a real second token (tested below)
    glob = TokenSet(torch.randn(5, D, generator=gen), torch.randint(-1, 5, (n, 3), generator=gen))
    glob.index[:, 0] = torch.randint(0, 5, (n,), generator=gen)
    src = torch.randint(0, n, (e,), generator=gen)
    dst = torch.randint(0, n, (e,), generator=gen)
    weight = torch.rand(e, generator=gen)
    kind = torch.randint(0, 2, (e,), generator=gen)
    return GraphInputs(
        spot, TokenSet.from_dense(region_tokens, region_mask), glob, src, dst, weight, kind
    )


def _eval_model(variant: str = "asign2d", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(variant, **{**SMALL, **kw}).eval()


def test_output_shapes_and_cli_fields():
    inputs = _inputs()
    model = _eval_model("asign3d")
    known = torch.zeros(30, dtype=torch.bool)
    known[:10] = True
    out = model(inputs, torch.randn(30, G), known)
    for t in (out.spot, out.region, out.global_, out.spot_model):
        assert t.shape == (30, G) and torch.isfinite(t).all()
    assert out.embedding.shape == (30, 16)
    assert out.reached is not None and out.reached[:10].all()
    torch.testing.assert_close(out.spot[known], out.spot_model[known])
    no_cli = model(inputs)
    assert no_cli.reached is None
    torch.testing.assert_close(no_cli.spot, out.spot_model)


def test_non_first_region_token_changes_output():
    inputs = _inputs()
    model = _eval_model()
    base = model(inputs).spot
    # Token (0, 1) is a real token that only spot 0 uses.
    changed = _inputs()
    changed.region.emb[1] += 3.0
    out = model(changed).spot
    assert not torch.allclose(out[0], base[0], atol=1e-4)
    # A padded token is never read.
    padded = int(torch.nonzero(~inputs.region.mask.flatten())[0])
    changed = _inputs()
    changed.region.emb[padded] += 3.0
    torch.testing.assert_close(model(changed).spot, base)


def _permute(inputs: GraphInputs, perm: torch.Tensor) -> GraphInputs:
    inv = torch.argsort(perm)  # new position of old node i is inv[i]
    return GraphInputs(
        inputs.spot[perm],
        TokenSet(inputs.region.emb, inputs.region.index[perm]),
        TokenSet(inputs.global_.emb, inputs.global_.index[perm]),
        inv[inputs.src],
        inv[inputs.dst],
        inputs.edge_weight,
        inputs.edge_kind,
    )


@pytest.mark.parametrize("variant", ["asign2d", "asign3d"])
def test_relabelling_nodes_permutes_outputs(variant):
    inputs = _inputs()
    model = _eval_model(variant)
    known = torch.arange(30) < 8
    y_known = torch.randn(30, G)
    base = model(inputs, y_known, known)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(5))
    out = model(_permute(inputs, perm), y_known[perm], known[perm])
    for name in ("spot", "region", "global_", "embedding"):
        torch.testing.assert_close(
            getattr(out, name), getattr(base, name)[perm], atol=1e-5, rtol=1e-5, msg=name
        )


def test_swapping_two_isolated_nodes_swaps_outputs():
    inputs = _inputs(e=0)
    model = _eval_model()
    base = model(inputs).spot
    perm = torch.arange(30)
    perm[[3, 17]] = perm[[17, 3]]
    out = model(_permute(inputs, perm)).spot
    torch.testing.assert_close(out[3], base[17])
    torch.testing.assert_close(out[17], base[3])
    torch.testing.assert_close(out[5], base[5])


def test_asign2d_ignores_cross_layer_edges():
    inputs = _inputs()
    moved = _inputs()
    cross = moved.edge_kind == EDGE_KINDS["cross_layer"]
    moved.edge_weight[cross] = torch.rand(int(cross.sum()))
    moved.dst[cross] = torch.randint(0, 30, (int(cross.sum()),))
    model2d = _eval_model("asign2d")
    torch.testing.assert_close(model2d(moved).spot, model2d(inputs).spot)
    model3d = _eval_model("asign3d")
    assert not torch.allclose(model3d(moved).spot, model3d(inputs).spot, atol=1e-4)


def test_seeded_training_step_is_deterministic():
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model("asign3d", **SMALL).train()
        inputs = _inputs()
        known = torch.arange(30) < 8
        y = torch.randn(30, G)
        out = model(inputs, y, known)
        loss = (
            (out.spot[~known] - y[~known]).square().mean()
            + out.region.square().mean()
            + out.global_.square().mean()
        )
        loss.backward()
        results.append((out.spot.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    for g1, g2 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g1, g2, atol=0, rtol=0)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model("asign3d", **SMALL, cli_per_node_gate=True).train()
    inputs = _inputs()
    known = torch.arange(30) < 8
    y = torch.randn(30, G)
    out = model(inputs, y, known)
    hidden = out.reached & ~known
    loss = (
        (out.spot - y)[hidden].square().mean()
        + out.region.square().mean()
        + out.global_.square().mean()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_engines_give_the_same_model():
    inputs = _inputs()
    dgl_model = _eval_model("asign3d", engine="dgl")
    pyg_model = _eval_model("asign3d", engine="pyg")
    pyg_model.load_state_dict(dgl_model.state_dict(), strict=True)
    known = torch.arange(30) < 8
    y = torch.randn(30, G)
    torch.testing.assert_close(
        pyg_model(inputs, y, known).spot, dgl_model(inputs, y, known).spot, atol=1e-5, rtol=1e-5
    )


def test_edge_helpers():
    inputs = _inputs()
    two_d = drop_edges(inputs, "cross_layer")
    assert (two_d.edge_kind == EDGE_KINDS["same_layer"]).all()
    assert two_d.src.shape[0] == int((inputs.edge_kind == 0).sum())
    w = torch.tensor([0.005, 0.0025, 0.5, 0.25])
    kind = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(scale_edge_weights(w, kind), torch.tensor([1.0, 0.5, 1.0, 0.5]))
    inputs.edge_kind = None
    with pytest.raises(AsignError, match="edge_kind is missing"):
        drop_edges(inputs, "cross_layer")


def test_invalid_inputs_and_configs():
    inputs = _inputs()
    inputs.region.index[4] = -1
    inputs.dst[0] = 99
    with pytest.raises(AsignError, match="1 spots have no region token.*outside 0..29"):
        _eval_model()(inputs)
    with pytest.raises(ConfigError, match="not divisible"):
        model_config("asign3d", hidden_dim=30, n_heads=4)
    with pytest.raises(ConfigError, match="asign2d fixes"):
        model_config("asign2d", use_cli=True)
    with pytest.raises(ConfigError, match="unknown model variant"):
        model_config("asign4d")
    with pytest.raises(ConfigError, match="unknown model options"):
        model_config("asign3d", hiden_dim=8)


def test_runs_under_bfloat16_autocast():
    """GAT and propagation drop to float32 inside; the rest may run in bfloat16."""
    inputs = _inputs()
    model = _eval_model("asign3d")
    known = torch.arange(30) < 8
    y = torch.randn(30, G)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs, y, known)
    assert torch.isfinite(out.spot.float()).all()
    ref = model(inputs, y, known)
    torch.testing.assert_close(out.spot.float(), ref.spot, atol=0.1, rtol=0.1)


def test_every_registered_network_implements_the_loop_interface():
    from asign.train.config import MODELS
    from asign.train.network import Network

    networks = [name for name, spec in MODELS.items() if spec.neural]
    assert networks  # asign3d, asign2d
    for name in networks:
        assert isinstance(build_model(name, **SMALL), Network), name
    assert not isinstance(torch.nn.Linear(2, 2), Network)  # the check can fail
