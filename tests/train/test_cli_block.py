"""cli_block: propagation equals the harmonic solution, flags unreached spots, and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asign.errors import AsignError
from asign.train.cli_block import CLIBlock, PropagationOperator, propagate
from asign.train.gnn import EdgeGraph


def _chain(n: int, seed: int = 0):
    """Undirected chain 0-1-…-(n-1) as directed edges both ways, random positive weights."""
    rng = np.random.default_rng(seed)
    left = np.arange(n - 1)
    src = np.concatenate([left, left + 1])
    dst = np.concatenate([left + 1, left])
    a = np.tile(rng.uniform(0.2, 2.0, n - 1), 2)
    return torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(a).float()


def _dense_in(src, dst, a, n) -> np.ndarray:
    """A[i, j] = a_ji (in-edge weights of i)."""
    mat = np.zeros((n, n))
    np.add.at(mat, (dst.numpy(), src.numpy()), a.numpy().astype(np.float64))
    return mat


def test_converges_to_harmonic_solution():
    n, g = 7, 3
    src, dst, a = _chain(n)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 2.0, n)
    y = rng.normal(size=(n, g))
    known = np.zeros(n, bool)
    known[[0, 6]] = True

    # Harmonic: for unknown i, Σ_j A_ij w_j (y_i − y_j) = 0 with known y clamped.
    coef = _dense_in(src, dst, a, n) * w[None, :]
    unk = ~known
    lhs = np.diag(coef[unk].sum(1)) - coef[np.ix_(unk, unk)]
    rhs = coef[np.ix_(unk, known)] @ y[known]
    expected = y.copy()
    expected[unk] = np.linalg.solve(lhs, rhs)

    y_t = torch.from_numpy(y).double()
    y_t[unk] = 123.0  # unknown labels must never be read
    out, reached = propagate(
        src, dst, a.double(), torch.from_numpy(w), y_t, torch.from_numpy(known), n_iter=500
    )
    assert reached.all()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-8)


def test_ten_steps_match_explicit_iteration():
    n, g = 15, 4
    src, dst, a = _chain(n, seed=3)
    # a few extra directed edges that do not shorten the way from the known spots
    src = torch.cat([src, torch.tensor([5, 13, 8])])
    dst = torch.cat([dst, torch.tensor([3, 9, 6])])
    a = torch.cat([a, torch.tensor([0.7, 1.3, 0.4])])
    rng = np.random.default_rng(2)
    w = rng.uniform(0.5, 2.0, n)
    y = rng.normal(size=(n, g))
    known = np.zeros(n, bool)
    known[[0, 1]] = True

    coef = _dense_in(src, dst, a, n) * w[None, :]
    cur = np.where(known[:, None], y, 0.0)
    reached = known.copy()
    for _ in range(10):
        masked = coef * reached[None, :]
        num, den = masked @ cur, masked.sum(1)
        got = den > 0
        new = np.where(got[:, None], num / np.where(got, den, 1.0)[:, None], 0.0)
        cur = np.where(known[:, None], y, new)
        reached = known | got

    out, got_reached = propagate(
        src,
        dst,
        a.double(),
        torch.from_numpy(w),
        torch.from_numpy(y),
        torch.from_numpy(known),
        n_iter=10,
    )
    np.testing.assert_array_equal(got_reached.numpy(), reached)
    np.testing.assert_allclose(out.numpy(), cur, atol=1e-10)
    # a prebuilt operator gives the same result; src/dst/a are then not read
    op = PropagationOperator.build(src, dst, a.double(), n)
    again, _ = propagate(src[:0], dst[:0], a[:0], torch.from_numpy(w), torch.from_numpy(y),
                         torch.from_numpy(known), n_iter=10, operator=op)
    torch.testing.assert_close(again, out)
    assert not reached.all()  # the chain is longer than 10 hops from the known spots


def test_unreached_spots_are_flagged_and_zero():
    src, dst, a = _chain(14)  # 0..13, known at 0: nodes ≥ 11 are more than 10 hops away
    # plus a separate two-node component 14-15 with no known spot
    src = torch.cat([src, torch.tensor([14, 15])])
    dst = torch.cat([dst, torch.tensor([15, 14])])
    a = torch.cat([a, torch.tensor([1.0, 1.0])])
    n = 16
    y = torch.ones(n, 2)
    known = torch.zeros(n, dtype=torch.bool)
    known[0] = True
    out, reached = propagate(src, dst, a, torch.ones(n), y, known, n_iter=10)
    assert reached[:11].all() and not reached[11:].any()
    torch.testing.assert_close(out[:11], torch.ones(11, 2))  # constant labels propagate exactly
    assert (out[11:] == 0).all()


def test_direction_is_src_to_dst():
    known = torch.tensor([True, False])
    y = torch.tensor([[2.0], [0.0]])
    out, reached = propagate(
        torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]), torch.ones(2), y, known
    )
    assert not reached[1]  # edge 1 → 0 cannot carry the label of 0 to 1
    out, reached = propagate(
        torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), torch.ones(2), y, known
    )
    assert reached[1] and out[1, 0] == 2.0


def test_bad_inputs_raise():
    with pytest.raises(AsignError, match="negative edge weights"):
        propagate(
            torch.tensor([0]),
            torch.tensor([1]),
            torch.tensor([-1.0]),
            torch.ones(2),
            torch.zeros(2, 1),
            torch.tensor([True, False]),
        )
    with pytest.raises(AsignError, match="same 2 nodes"):
        propagate(
            torch.tensor([0]),
            torch.tensor([1]),
            torch.tensor([1.0]),
            torch.ones(3),
            torch.zeros(2, 1),
            torch.tensor([True, False]),
        )


@pytest.mark.parametrize("per_node_gate", [False, True])
def test_cli_block_blends_and_has_gradients(per_node_gate):
    torch.manual_seed(0)
    src, dst, a = _chain(14)
    n, g, f = 14, 5, 8
    feats = torch.randn(n, f)
    y_model = torch.randn(n, g, requires_grad=True)
    y_true = torch.randn(n, g)
    known = torch.zeros(n, dtype=torch.bool)
    known[:2] = True
    block = CLIBlock(f, g, hidden=16, per_node_gate=per_node_gate)
    out = block(feats, y_model, y_true, known, EdgeGraph(src, dst, a, n))

    assert out.gate.shape == ((n, g) if per_node_gate else (g,))
    hidden_reached = out.reached & ~known
    assert hidden_reached.any() and not out.reached.all()
    # known and unreached spots keep the model output; reached hidden spots blend
    keep = ~hidden_reached
    torch.testing.assert_close(out.spot[keep], y_model[keep])
    expected = out.gate * out.y_prop + (1 - out.gate) * y_model
    torch.testing.assert_close(out.spot[hidden_reached], expected[hidden_reached])
    assert (out.node_weight > 0).all()

    loss = (out.spot[~known] - y_true[~known]).square().mean()
    loss.backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert y_model.grad[hidden_reached].abs().sum() > 0


def test_gradient_to_w_matches_finite_difference():
    src, dst, a = _chain(6)
    n = 6
    y = torch.randn(n, 2, dtype=torch.double)
    known = torch.tensor([True, False, False, False, False, True])
    w = torch.rand(n, dtype=torch.double) + 0.5
    w.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda w_: propagate(src, dst, a.double(), w_, y, known, n_iter=10)[0], (w,)
    )


def test_spatial_prior_is_the_idw_baseline_of_the_known_rows():
    from asign.train.baselines import idw
    from asign.train.cli_block import spatial_prior

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1000, size=(40, 2))
    y = rng.normal(size=(40, 4))
    known = np.zeros(40, bool)
    known[:15] = True
    y_masked = np.where(known[:, None], y, 99.0)  # unknown rows must never be read
    prior = spatial_prior(torch.as_tensor(xy), torch.as_tensor(y_masked).float(),
                          torch.as_tensor(known), k=5)
    np.testing.assert_allclose(prior.numpy(), idw(xy[known], y[known], xy, k=5), atol=1e-5)


@pytest.mark.parametrize("per_node_gate", [False, True])
def test_three_source_blend(per_node_gate):
    torch.manual_seed(1)
    src, dst, a = _chain(14)
    n, g, f = 14, 5, 8
    feats = torch.randn(n, f)
    y_model = torch.randn(n, g, requires_grad=True)
    y_true, prior = torch.randn(n, g), torch.randn(n, g)
    known = torch.zeros(n, dtype=torch.bool)
    known[:2] = True
    block = CLIBlock(f, g, hidden=16, per_node_gate=per_node_gate, spatial_prior=True)
    with pytest.raises(AsignError, match="prior"):
        block(feats, y_model, y_true, known, EdgeGraph(src, dst, a, n))
    out = block(feats, y_model, y_true, known, EdgeGraph(src, dst, a, n), prior)

    assert out.gate.shape == ((3, n, g) if per_node_gate else (3, g))
    torch.testing.assert_close(out.gate.sum(0), torch.ones_like(out.gate[0]))
    if not per_node_gate:
        torch.testing.assert_close(out.gate, torch.full_like(out.gate, 1 / 3))  # starts even
    reached = out.reached & ~known
    unreached = ~out.reached
    assert reached.any() and unreached.any()
    torch.testing.assert_close(out.spot[known], y_model[known])
    expected = out.gate[0] * out.y_prop + out.gate[1] * prior + out.gate[2] * y_model
    torch.testing.assert_close(out.spot[reached], expected[reached])
    # unreached spots: prior and model, at their weights renormalised without propagation
    g_prior = out.gate[1] / (out.gate[1] + out.gate[2])
    expected = g_prior * prior + (1 - g_prior) * y_model
    torch.testing.assert_close(out.spot[unreached], expected[unreached])

    (out.spot[~known] - y_true[~known]).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("per_node_gate", [False, True])
@pytest.mark.parametrize("with_prior", [False, True])
def test_inference_without_autograd_equals_the_autograd_forward(monkeypatch, per_node_gate,
                                                                with_prior):
    """Without autograd, propagation runs a few genes at a time and the blend a block of
    rows at a time (a Visium HD stack's (N, G) temporaries were GBs): the same output, exactly with
    one gate per gene; per-node gates' softmax may differ in the last bit between block
    sizes (vectorised tails), never more."""
    from asign.train import cli_block

    torch.manual_seed(2)
    src, dst, a = _chain(40)
    n, g, f = 40, 5, 8
    feats, y_model, y_true = torch.randn(n, f), torch.randn(n, g), torch.randn(n, g)
    prior = torch.randn(n, g) if with_prior else None
    known = torch.zeros(n, dtype=torch.bool)
    known[[0, 17, 18]] = True
    block = CLIBlock(f, g, hidden=16, per_node_gate=per_node_gate, spatial_prior=with_prior)
    with torch.no_grad():  # trained-looking gates, not the even start
        block.gate_logit.normal_()
    graph = EdgeGraph(src, dst, a, n)
    ref = block(feats, y_model, y_true, known, graph, prior)  # autograd: the whole graph
    assert ref.spot.requires_grad
    monkeypatch.setattr(cli_block, "BLEND_ROWS", 7)
    monkeypatch.setattr(cli_block, "PROPAGATE_GENES", 2)  # 5 genes: passes of 2, 2 and 1
    with torch.no_grad():
        out = block(feats, y_model, y_true, known, graph, prior)
    tol = 1e-6 if per_node_gate else 0.0
    for name in ("spot", "y_prop", "reached", "gate"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name).detach(),
                                   rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")
