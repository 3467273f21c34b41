"""closerlook.autoneb: the NEB force, pivot insertion, a known saddle on a toy 2-D loss, and a real network."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from closerlook import autoneb as N
from closerlook import landscape as L
from closerlook.curves import Layout
from closerlook.io import ConfigError


def toy_loss(v, _batch):
    """Minima at (-1, 0) and (1, 0); a curved valley y = (1 - x^2) / 2 whose saddle (0, 0.5) has loss 1.
    The straight line y = 0 peaks at 2.25 at the origin."""
    x, y = v[0], v[1]
    return (x * x - 1) ** 2 + 5 * (y - 0.5 * (1 - x * x)) ** 2


A = torch.tensor([-1.0, 0.0], dtype=torch.float64)
B = torch.tensor([1.0, 0.0], dtype=torch.float64)


def _max_along(pivots, n=50):
    return max(float(toy_loss(torch.lerp(p, q, k / n), None)) for p, q in zip(pivots, pivots[1:]) for k in range(n + 1))


@pytest.mark.parametrize("init_pivots", [0, 3])
def test_toy_path_goes_through_the_saddle(init_pivots):
    settings = {"cycles": 4, "steps": 300, "lr": 0.01, "lr_decay": 1.0, "init_pivots": init_pivots, "spring": 1.0}
    pivots, rows = N.relax_path(A, B, toy_loss, itertools.repeat(None), [None], settings)
    assert torch.equal(pivots[0], A) and torch.equal(pivots[-1], B)  # exact: endpoints are never moved
    # the straight line peaks at 2.25; the minimum-energy path at the saddle's 1.0. Pivots are joined by
    # straight chords of a curved valley, so the chain may rise a little above 1 between them.
    assert _max_along(pivots) < 1.1
    closest = min(pivots, key=lambda p: float((p - torch.tensor([0.0, 0.5], dtype=torch.float64)).norm()))
    assert float((closest - torch.tensor([0.0, 0.5], dtype=torch.float64)).norm()) < 0.05
    if init_pivots == 0:
        assert rows["inserted"].iloc[0] == 1  # the bare line's peak at the origin got a pivot
    assert (rows["pivots"].diff().dropna() >= 0).all()


def test_neb_force_has_no_gradient_along_the_path():
    prev, cur, nxt = (torch.tensor(v, dtype=torch.float64) for v in ([0.0, 0.0], [1.0, 0.2], [2.0, 0.0]))
    g = torch.tensor([3.0, -1.0], dtype=torch.float64)
    tau = (cur - prev) / (cur - prev).norm() + (nxt - cur) / (nxt - cur).norm()
    tau = tau / tau.norm()
    f = N.neb_force(prev, cur, nxt, g, spring=0.0)
    assert abs(float(torch.dot(f, tau))) < 1e-12  # float64, O(1) values
    # equal spacing: the spring adds nothing; unequal: it pulls toward the longer side
    torch.testing.assert_close(N.neb_force(prev, cur, nxt, g, spring=5.0), f, rtol=0, atol=1e-12)
    far = torch.tensor([4.0, 0.0], dtype=torch.float64)
    assert float(torch.dot(N.neb_force(prev, cur, far, g, spring=5.0) - f, tau)) > 0


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"autoneb.cycles"):
        N.check_settings({"cycles": 0})
    with pytest.raises(ConfigError, match=r"curves.x.autoneb.lr"):
        N.check_settings({"lr": -1}, key="curves.x.autoneb")


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3))


def test_network_path_evaluates_like_a_curve():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    module = _net(0)
    a, b = _net(0).state_dict(), _net(1).state_dict()
    settings = {"cycles": 2, "steps": 3, "init_pivots": 2, "eval_batches": 2, "insert_points": 3}
    path, rows = N.autoneb(module, a, b, data, settings)
    lay = Layout(module)
    torch.testing.assert_close(lay.flat_params(path.weights_at(0.0)), lay.flat_params(a), rtol=0, atol=0)
    torch.testing.assert_close(lay.flat_params(path.weights_at(1.0)), lay.flat_params(b), rtol=0, atol=0)
    # gradient evaluations: steps x interior pivots in each cycle, plus the final relaxation
    interior = [2] + [p - 2 for p in rows["pivots"]]
    assert rows["grad_evals"].iloc[-1] == sum(3 * n for n in interior)
    table = L.evaluate_path(path, data, data, ts=4)
    assert list(table["path"].unique()) == ["autoneb"]
    assert table["train_loss"].notna().all()
    # t is normalised arc length: t = (length of the first segment) / (total length) is the second pivot
    walked = sum(float((q - p).double().norm()) for p, q in zip(path.pivots, path.pivots[1:]))
    assert path.length == pytest.approx(walked, rel=1e-9)  # float64 sums of the same norms
    t1 = float((path.pivots[1] - path.pivots[0]).double().norm()) / walked
    # float32 weights O(1): lerp at a position ~1e-7 off a knot moves them by ~1e-7
    torch.testing.assert_close(path.flat_params_at(t1), path.pivots[1], rtol=0, atol=1e-5)
    assert not torch.allclose(path.flat_params_at(t1 / 2), path.pivots[1])


def test_saved_path_must_join_its_checkpoints(tmp_path):
    module = _net(0)
    a, b, c = _net(0).state_dict(), _net(1).state_dict(), _net(2).state_dict()
    data = [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    path, _ = N.autoneb(module, a, b, data, {"cycles": 1, "steps": 1, "eval_batches": 1, "insert_points": 2})
    N.save_path(str(tmp_path / "autoneb.pt"), path, {"run": "x"})
    back = N.load_path(str(tmp_path / "autoneb.pt"), module, a, b)
    assert all(torch.equal(p, q) for p, q in zip(back.pivots, path.pivots))  # exact: saved tensors reloaded
    with pytest.raises(Exception, match="end pivot differs"):
        N.load_path(str(tmp_path / "autoneb.pt"), module, a, c)
