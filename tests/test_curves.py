"""Unit tests of closerlook.curves on small synthetic models and data (seconds, CPU)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from closerlook import cli
from closerlook import curves as C
from closerlook import landscape as L
from closerlook.io import ConfigError, load_checkpoint, save_checkpoint


# --------------------------------------------------------------------------- helpers


def small_net(bn: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 10)]
    return nn.Sequential(*layers)


def trained_like_state(net: nn.Module, seed: int) -> dict:
    """A state dict with random parameters AND non-trivial BN buffers."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(seed + 7)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * 0.3
    return sd


class TensorLoader:
    """Minimal loader with the DeviceLoader interface (batches(epoch, start), len)."""

    def __init__(self, x, y, batch_size, shuffle=False, seed=0, fail_after=None):
        self.x, self.y, self.bs, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.fail_after = fail_after
        self.served = 0

    def __len__(self):
        return math.ceil(len(self.x) / self.bs)

    def batches(self, epoch, start=0):
        order = (torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
                 if self.shuffle else torch.arange(len(self.x)))
        for b in range(start, len(self)):
            if self.fail_after is not None and self.served >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.served += 1
            idx = order[b * self.bs:(b + 1) * self.bs]
            yield self.x[idx], self.y[idx]

    def __iter__(self):
        return self.batches(0)


def synth_data(n=64, seed=0, size=8, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return x, y


# --------------------------------------------------------------------------- endpoints and closed forms


@pytest.mark.parametrize("kind,k", [("bezier", 3), ("bezier", 5), ("polychain", 3), ("polychain", 4), ("line", 2)])
def test_endpoints_exact_including_buffers(kind, k):
    net = small_net(bn=True)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    curve = C.Curve(net, a, b, kind=kind, num_bends=k)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))  # bends off the line: endpoints must not care
    w0, w1 = curve.weights_at(0.0), curve.weights_at(1.0)
    assert list(w0) == list(net.state_dict())
    for key in a:
        assert torch.equal(w0[key], a[key]), key  # exact: IEEE x * 1 + y * 0 == x at t = 0
        assert w0[key].dtype == a[key].dtype
        if key.endswith("num_batches_tracked"):
            assert torch.equal(w1[key], a[key]), key  # exact: integer buffers come from start
        else:
            assert torch.equal(w1[key], b[key]), key  # exact: IEEE x * 0 + y * 1 == y at t = 1
    net.load_state_dict(curve.weights_at(0.37))  # full state dict accepted


def test_gradients_reach_only_bends():
    net = small_net(bn=True)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    curve = C.Curve(net, a, b, kind="bezier", num_bends=4)
    names = [n for n, _ in curve.named_parameters()]
    assert names == ["bends"]
    assert curve.bends.shape[0] == 2
    x, _ = synth_data(8)
    curve.train()
    curve(x, 0.3).pow(2).sum().backward()
    assert curve.bends.grad is not None and curve.bends.grad.abs().sum() > 0
    for name, buf in curve.named_buffers():
        assert not buf.requires_grad, name
    assert all(p.grad is None for p in net.parameters())
    # endpoints untouched by the training-mode BN forward
    assert torch.equal(curve.start_buffers, C.Layout(net).flat_fbufs(a))  # exact: a copy
    # at t = 0 the output does not depend on anything trainable (bend coefficients are 0)
    assert not curve(x, 0.0).requires_grad


def _set_bends(curve, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        curve.bends.copy_(torch.randn(curve.bends.shape, generator=g))


def _controls(curve):
    return [L.flat_parameters(curve.module, cp, dtype=torch.float64) for cp in curve.control_points()]


@pytest.mark.parametrize("k", [3, 4, 6])
def test_bezier_closed_form(k):
    net = small_net()
    curve = C.Curve(net, trained_like_state(net, 1), trained_like_state(net, 2), kind="bezier", num_bends=k)
    _set_bends(curve, k)
    w = _controls(curve)
    n = k - 1
    for t in [0.0, 0.1, 0.25, 0.5, 0.77, 1.0]:
        got = curve.flat_params_at(t).detach().double()
        want = sum(math.comb(n, i) * t**i * (1 - t) ** (n - i) * w[i] for i in range(k))
        assert torch.allclose(got, want, atol=1e-5), (k, t)
    if k == 3:  # the paper's quadratic form
        t = 0.3
        want = (1 - t) ** 2 * w[0] + 2 * t * (1 - t) * w[1] + t**2 * w[2]
        assert torch.allclose(curve.flat_params_at(t).detach().double(), want, atol=1e-5)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_polychain_closed_form(k):
    net = small_net()
    curve = C.Curve(net, trained_like_state(net, 1), trained_like_state(net, 2), kind="polychain", num_bends=k)
    _set_bends(curve, 10 + k)
    w = _controls(curve)
    for t in [0.0, 0.05, 0.3, 0.5, 0.61, 0.9, 1.0]:
        s = t * (k - 1)
        i = min(int(math.floor(s)), k - 2)
        frac = s - i
        want = (1 - frac) * w[i] + frac * w[i + 1]
        got = curve.flat_params_at(t).detach().double()
        assert torch.allclose(got, want, atol=1e-5), (k, t)
    for i in range(k):  # passes through every control point at its knot
        assert torch.allclose(curve.flat_params_at(i / (k - 1)).detach().double(), w[i], atol=1e-6)


def test_coefficients_sum_to_one_and_line():
    for k in (2, 3, 7):
        for t in np.linspace(0, 1, 13):
            assert abs(sum(C.bezier_coefficients(t, k)) - 1) < 1e-12
            assert abs(sum(C.polychain_coefficients(t, k)) - 1) < 1e-12
    net = small_net()
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    ln = C.line(net, a, b)
    assert ln.kind == "line" and ln.path_label == "line" and ln.num_bends == 2
    assert len(list(ln.parameters())) == 1 and ln.bends.numel() == 0
    assert torch.equal(C.line(a, b, net).flat_params_at(0.3), ln.flat_params_at(0.3))  # exact: same ops, same process
    la, lb = L.flat_parameters(net, a), L.flat_parameters(net, b)
    assert torch.allclose(ln.flat_params_at(0.4).double(), 0.6 * la + 0.4 * lb, atol=1e-6)
    # a Bezier with bends left on the line is the line
    bz = C.Curve(net, a, b, kind="bezier", num_bends=3)
    assert torch.allclose(bz.flat_params_at(0.4), ln.flat_params_at(0.4), atol=1e-6)
    with pytest.raises(ValueError):
        ln.weights_at(1.5)


# --------------------------------------------------------------------------- bad endpoints


def test_bad_endpoints_name_the_key():
    net = small_net(bn=True)
    a = trained_like_state(net, 1)
    b = dict(a)
    b["9.weight"] = torch.zeros(10, 25)
    with pytest.raises(C.CurveError, match=r"'9\.weight'.*shape"):
        C.Curve(net, a, b)
    b = dict(a)
    del b["1.running_var"]
    with pytest.raises(C.CurveError, match=r"missing key '1\.running_var'"):
        C.Curve(net, a, b)
    b = dict(a)
    b["extra.weight"] = torch.zeros(3)
    with pytest.raises(C.CurveError, match=r"unexpected key 'extra\.weight'"):
        C.Curve(net, a, b)
    b = {k: v.clone() for k, v in a.items()}
    b["4.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(C.CurveError, match=r"'4\.weight'.*non-finite"):
        C.Curve(net, b, a)
    with pytest.raises(ValueError):  # CurveError is a ValueError too
        C.Curve(net, a, b)
    with pytest.raises(ValueError):
        C.Curve(net, a, a, kind="spline")


# --------------------------------------------------------------------------- BN recompute and evaluation


def test_bn_recompute_equals_update_bn():
    net = small_net(bn=True)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    curve = C.Curve(net, a, b, kind="bezier", num_bends=3)
    _set_bends(curve, 5)
    x, y = synth_data(40, seed=3)
    loader = TensorLoader(x, y, 16)  # 16 + 16 + 8: unequal batches, cumulative average matters
    with torch.no_grad():
        state = curve.weights_at(0.3)
        ref = small_net(bn=True)
        ref.load_state_dict(state)
        used = L.recompute_bn(net, state, loader)
    assert used == 3
    torch.optim.swa_utils.update_bn([(xb, yb) for xb, yb in loader.batches(0)], ref)
    for k, v in ref.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.allclose(state[k], v, atol=1e-6, rtol=1e-5), k
    assert net.training  # mode restored
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))  # exact: the saved value is put back
    # bn_batches: the first n batches only
    state2 = curve.weights_at(0.3)
    L.recompute_bn(net, state2, loader, num_batches=1)
    ref2 = small_net(bn=True)
    ref2.load_state_dict(curve.weights_at(0.3))
    torch.optim.swa_utils.update_bn([next(iter(loader.batches(0)))], ref2)
    assert torch.allclose(state2["1.running_var"], ref2.state_dict()["1.running_var"], atol=1e-6)


def test_evaluate_path_matches_plain_evaluation_at_endpoints():
    net = small_net(bn=False)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    x, y = synth_data(48, seed=4)
    xt, yt = synth_data(32, seed=5)
    tr, te = TensorLoader(x, y, 20), TensorLoader(xt, yt, 20)
    ln = C.line(net, a, b)
    df = L.evaluate_path(ln, tr, te, ts=5)
    assert list(df.columns) == L.PATH_COLUMNS
    assert df["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (df["path"] == "line").all() and (df["status"] == "ok").all()
    for row, sd in ((0, a), (4, b)):
        ref = small_net()
        ref.load_state_dict(sd)
        ref.eval()
        with torch.no_grad():
            out = ref(x)
            loss = nn.functional.cross_entropy(out, y).item()
            acc = (out.argmax(1) == y).float().mean().item()
            tloss = nn.functional.cross_entropy(ref(xt), yt).item()
        assert df.loc[row, "train_loss"] == pytest.approx(loss, rel=1e-5)
        assert df.loc[row, "train_acc"] == pytest.approx(acc)
        assert df.loc[row, "test_loss"] == pytest.approx(tloss, rel=1e-5)
    assert ((df["train_acc"] >= 0) & (df["train_acc"] <= 1)).all()


def test_evaluate_path_bn_equals_naive_update_bn():
    net = small_net(bn=True)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    curve = C.Curve(net, a, b, kind="polychain", num_bends=3)
    _set_bends(curve, 9)
    x, y = synth_data(40, seed=6)
    tr = TensorLoader(x, y, 16)
    df = L.evaluate_path(curve, tr, None, ts=[0.0, 0.6])
    assert (df["path"] == "curve").all() and df["test_loss"].isna().all()
    for i, t in enumerate([0.0, 0.6]):
        ref = small_net(bn=True)
        ref.load_state_dict(curve.weights_at(t))
        torch.optim.swa_utils.update_bn([(xb, yb) for xb, yb in tr.batches(0)], ref)
        ref.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(ref(x), y).item()
        assert df.loc[i, "train_loss"] == pytest.approx(loss, rel=1e-4), t


def test_torchvision_resnet18_unmodified():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10, weights=None)
    a = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1)
    b = torchvision.models.resnet18(num_classes=10, weights=None).state_dict()
    curve = C.Curve(net, a, b, kind="bezier", num_bends=3)
    w0 = curve.weights_at(0.0)
    assert all(torch.equal(w0[k], a[k]) for k in a)  # exact: t = 0 coefficients are 1 and 0
    x, y = synth_data(8, seed=7, size=16, channels=3)
    loader = TensorLoader(x, y, 4)
    df = L.evaluate_path(curve, loader, loader, ts=[0.0, 0.5, 1.0])
    assert df[["train_loss", "test_loss", "train_acc"]].notna().all().all()
    assert np.isfinite(df["train_loss"]).all()
    state = curve.weights_at(0.5)
    L.recompute_bn(net, state, loader)
    ref = torchvision.models.resnet18(num_classes=10, weights=None)
    ref.load_state_dict(curve.weights_at(0.5))
    torch.optim.swa_utils.update_bn([(xb, yb) for xb, yb in loader.batches(0)], ref)
    for k in ("bn1.running_mean", "layer4.1.bn2.running_var"):
        assert torch.allclose(state[k], ref.state_dict()[k], rtol=1e-4, atol=1e-5), k
    curve.train()
    curve(x[:4], 0.5).sum().backward()
    assert curve.bends.grad.abs().sum() > 0


# --------------------------------------------------------------------------- plane


def test_plane_basis_and_projections():
    net = small_net(bn=True)
    w1, w2, th = (trained_like_state(net, s) for s in (1, 2, 3))
    basis = L.plane_basis(net, w1, w2, th)
    assert abs(basis.u.norm().item() - 1) < 1e-10 and abs(basis.v.norm().item() - 1) < 1e-10
    assert abs(torch.dot(basis.u, basis.v).item()) < 1e-10
    v1, v2, v3 = (L.flat_parameters(net, s) for s in (w1, w2, th))
    pu, pv, d, rel = basis.coords(v1)
    assert (pu, pv, d, rel) == (0.0, 0.0, 0.0, 0.0)  # exact: w1 - origin is x - x == 0
    pu, pv, d, rel = basis.coords(v2)
    assert pu == pytest.approx((v2 - v1).norm().item(), rel=1e-12) and abs(pv) < 1e-9 and d < 1e-9
    pu, pv, d, _ = basis.coords(v3)
    assert d < 1e-9 and pv > 0
    assert torch.allclose(basis.point(pu, pv), v3, atol=1e-9)
    # an off-plane point: distance = norm of the residual
    off = basis.point(0.3, 0.2) + 0.5 * torch.nn.functional.normalize(torch.randn_like(v1) - 0, dim=0)
    r = off - basis.origin
    resid = r - torch.dot(r, basis.u) * basis.u - torch.dot(r, basis.v) * basis.v
    assert basis.coords(off)[2] == pytest.approx(resid.norm().item(), rel=1e-9)


def test_plane_grid_tables():
    net = small_net(bn=True)
    w1, w2, th, extra = (trained_like_state(net, s) for s in (1, 2, 3, 4))
    x, y = synth_data(24, seed=8)
    loader = TensorLoader(x, y, 12)
    grid, pts = L.plane_grid(net, w1, w2, th, loader, loader, grid_points=(3, 2), margin=0.1,
                             checkpoints={"epoch74": extra})
    assert list(grid.columns) == L.GRID_COLUMNS and len(grid) == 6
    assert list(pts.columns) == L.POINT_COLUMNS
    assert pts["label"].tolist() == ["w1", "w2", "bend", "epoch74"]
    assert (pts["distance"][:3] < 1e-8).all() and pts.loc[3, "distance"] > 0
    assert 0 < pts.loc[3, "rel_distance"] <= 1
    assert np.isfinite(grid[["train_loss", "test_loss"]].to_numpy()).all()
    # the grid spans every point, projections included, plus the margin (no projection is clamped to an edge)
    for ax in ("u", "v"):
        lo, hi = pts[ax].min(), pts[ax].max()
        assert grid[ax].min() == pytest.approx(lo - 0.1 * (hi - lo), rel=1e-12)
        assert grid[ax].max() == pytest.approx(hi + 0.1 * (hi - lo), rel=1e-12)
    # each point's own network evaluated (BN recomputed): w1's own loss is its line value at t = 0
    assert np.isfinite(pts["train_loss"]).all() and pts["train_acc"].between(0, 1).all()
    own = L.evaluate_path(C.line(net, w1, w2), loader, None, ts=[0.0, 1.0])
    # same weights and data, BN recomputed either way: float32 forward, rel 1e-5
    assert pts.loc[0, "train_loss"] == pytest.approx(own.loc[0, "train_loss"], rel=1e-5)
    assert pts.loc[1, "train_loss"] == pytest.approx(own.loc[1, "train_loss"], rel=1e-5)
    # the checkpoint's state dict is not touched by the BN recompute
    assert all(torch.equal(extra[k], v) for k, v in trained_like_state(net, 4).items())
    # anchors' coordinates are exact, not projected residuals (~1e-17 of either sign on another CPU)
    d = (L.flat_parameters(net, w2) - L.flat_parameters(net, w1)).norm().item()
    assert pts.loc[0, ["u", "v", "distance"]].tolist() == [0.0, 0.0, 0.0]  # exact: set, not computed
    assert pts.loc[1, "v"] == 0.0 and pts.loc[1, "u"] == pytest.approx(d, rel=1e-12)  # exact: set, not computed
    # the promise: with margin 0 and the bend at u >= 0, w1 is a grid point, and it reproduces
    # w1's loss on the line (BN recomputed on the same data either way)
    assert pts.loc[2, "u"] >= 0
    g2, p2 = L.plane_grid(net, w1, w2, th, loader, None, grid_points=2, margin=0.0)
    ln = L.evaluate_path(C.line(net, w1, w2), loader, None, ts=[0.0])
    row = g2[(g2["u"] == 0.0) & (g2["v"] == 0.0)]  # exact: linspace starts at exactly min(0.0, ...) = 0.0
    assert len(row) == 1
    # same weights (origin + 0 * u + 0 * v == origin exactly), same ops: float32 BN/forward, rel 1e-5
    assert row["train_loss"].item() == pytest.approx(ln.loc[0, "train_loss"], rel=1e-5)
    with pytest.raises(C.CurveError, match="identical"):
        L.plane_basis(net, w1, w1, th)


# --------------------------------------------------------------------------- fitting, resume, checkpoints


def _fit_setup(seed=0):
    net = small_net(bn=True)
    a, b = trained_like_state(net, 1), trained_like_state(net, 2)
    curve = C.Curve(net, a, b, kind="bezier", num_bends=3)
    x, y = synth_data(60, seed=11)
    return curve, x, y


def test_fit_curve_trains_bends_only_and_resumes_exactly(tmp_path):
    curve, x, y = _fit_setup()
    start_before = curve.start_params.clone()
    bends_before = curve.bends.detach().clone()
    df = C.fit_curve(curve, TensorLoader(x, y, 10, shuffle=True), epochs=3, lr=0.05, seed=3,
                     out_dir=tmp_path / "a", t_per_batch=2)
    assert len(df) == 3 and (df["status"] == "ok").all()
    assert df["lr"].tolist() == pytest.approx([0.05, 0.05, 0.05 * C.garipov_lr_factor(2, 3)])
    assert torch.equal(curve.start_params, start_before)  # exact: endpoints are never updated
    assert not torch.equal(curve.bends.detach(), bends_before)
    assert (tmp_path / "a" / "metrics.csv").exists()
    # interrupted run (simulated kill mid-epoch, resume state every 4 iterations), then restarted
    c2, _, _ = _fit_setup()
    with pytest.raises(KeyboardInterrupt):
        C.fit_curve(c2, TensorLoader(x, y, 10, shuffle=True, fail_after=10), epochs=3, lr=0.05, seed=3,
                    out_dir=tmp_path / "b", t_per_batch=2, resume_every=4)
    assert (tmp_path / "b" / "resume.pt").exists() and not (tmp_path / "b" / "curve.pt").exists()
    c3, _, _ = _fit_setup()
    df3 = C.fit_curve(c3, TensorLoader(x, y, 10, shuffle=True), epochs=3, lr=0.05, seed=3,
                      out_dir=tmp_path / "b", t_per_batch=2, resume_every=4)
    assert torch.equal(c3.bends.detach(), curve.bends.detach())  # exact: same-process resume (deterministic CPU ops)
    assert not (tmp_path / "b" / "resume.pt").exists()
    assert df3["train_loss"].tolist() == pytest.approx(df["train_loss"].tolist(), rel=1e-6)
    # the saved curve reloads onto a fresh module and gives the same points
    ck = load_checkpoint(tmp_path / "b" / "curve.pt")
    assert ck["meta"]["curve"] == {"kind": "bezier", "num_bends": 3} and ck["meta"]["status"] == "ok"
    c4 = C.load_curve(tmp_path / "b" / "curve.pt", small_net(bn=True))
    assert torch.equal(c4.flat_params_at(0.4), c3.flat_params_at(0.4))  # exact: loaded bytes, same ops
    # finished: a rerun does nothing and returns the metrics
    df5 = C.fit_curve(c2, TensorLoader(x, y, 10), epochs=3, lr=0.05, seed=3, out_dir=tmp_path / "b",
                      t_per_batch=2)
    assert len(df5) == 3 and torch.equal(c2.bends.detach(), curve.bends.detach())  # exact: loaded, not refitted
    # other settings: neither the finished curve nor a stale resume state is reused
    c6, _, _ = _fit_setup()
    df6 = C.fit_curve(c6, TensorLoader(x, y, 10), epochs=2, lr=0.05, seed=3, out_dir=tmp_path / "b")
    assert len(df6) == 2 and load_checkpoint(tmp_path / "b" / "curve.pt")["meta"]["fit_key"]["epochs"] == 2


def test_fit_lowers_loss_along_curve():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    a = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    b = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    curve = C.Curve(net, a, b, kind="bezier", num_bends=3)
    loader = TensorLoader(x, y, 20, shuffle=True)
    before = L.evaluate_path(curve, loader, None, ts=[0.5])["train_loss"].item()
    C.fit_curve(curve, loader, epochs=15, lr=0.05, wd=0.0, seed=0)
    after = L.evaluate_path(curve, loader, None, ts=[0.5])["train_loss"].item()
    assert after < before, (before, after)


# --------------------------------------------------------------------------- stopping rule


def test_stop_update_counts_checks_without_a_real_improvement():
    best, wait = math.inf, 0
    for v, expect in ((1.0, (1.0, 0)), (0.995, (1.0, 1)), (0.98, (0.98, 0)), (float("nan"), (0.98, 1))):
        best, wait = C.stop_update(best, wait, v, 0.01)
        assert (best, wait) == expect  # exact: the rule copies values, no arithmetic on them


def _monitored_fit(tmp_path, monitor, stop, epochs=8, fail_after=None, name="a"):
    curve, x, y = _fit_setup()
    df = C.fit_curve(curve, TensorLoader(x, y, 10, shuffle=True, fail_after=fail_after), epochs=epochs, lr=0.05,
                     seed=3, out_dir=tmp_path / name, resume_every=4, stop=stop, monitor=monitor)
    return curve, df


def test_stop_rule_stops_when_flat_and_logs_it(tmp_path):
    curve, df = _monitored_fit(tmp_path, lambda c: 0.7, {"min_delta": 0.01, "patience": 2})
    # check 1 sets the best, checks 2 and 3 do not improve on it: stop after epoch 3 of 8
    assert df["epoch"].tolist() == [1, 2, 3] and df["stopped"].tolist() == [False, False, True]
    assert df["stop_wait"].tolist() == [0, 1, 2]
    saved = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert saved["stopped"].tolist() == [False, False, True] and saved["stop_max_loss"].tolist() == [0.7] * 3
    assert load_checkpoint(tmp_path / "a" / "curve.pt")["meta"]["epoch"] == 3


def test_stop_rule_does_not_stop_while_improving(tmp_path):
    values = iter([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    _, df = _monitored_fit(tmp_path, lambda c: next(values), {"min_delta": 0.05, "patience": 1})
    assert len(df) == 8 and not df["stopped"].any() and (df["stop_wait"] == 0).all()


def test_stop_rule_checks_every_n_epochs(tmp_path):
    calls = []
    _, df = _monitored_fit(tmp_path, lambda c: calls.append(1) or 0.5, {"min_delta": 0.0, "patience": 1, "every": 3})
    # checks after epochs 3 and 6; the second does not improve: stopped at 6
    assert len(calls) == 2 and df["epoch"].tolist() == [1, 2, 3, 4, 5, 6] and df["stopped"].iloc[-1]
    assert np.isnan(df["stop_max_loss"].iloc[0]) and df["stop_max_loss"].iloc[2] == 0.5  # exact: copied value


def _real_monitor(x, y):
    loader = TensorLoader(x[:30], y[:30], 15)
    return lambda c: float(L.evaluate_path(c, loader, None, ts=[0.25, 0.5, 0.75])["train_loss"].max(skipna=False))


def test_stop_rule_off_by_default_and_monitor_leaves_the_fit_unchanged(tmp_path):
    curve, x, y = _fit_setup()
    df = C.fit_curve(curve, TensorLoader(x, y, 10, shuffle=True), epochs=3, lr=0.05, seed=3, out_dir=tmp_path / "off")
    assert not {"stop_max_loss", "stopped"} & set(df.columns)
    assert "stop" not in load_checkpoint(tmp_path / "off" / "curve.pt")["meta"]["fit_key"]
    # the rule on but never firing (a negative tolerance is not allowed; patience above the epochs):
    # evaluating the monitor (BN recomputed, eval mode) must not change a single bit of the fit
    on, df_on = _monitored_fit(tmp_path, _real_monitor(x, y), {"min_delta": 0.0, "patience": 5}, epochs=3, name="on")
    assert torch.equal(on.bends.detach(), curve.bends.detach())  # exact: same ops in the same order on CPU
    assert df_on["train_loss"].tolist() == df["train_loss"].tolist()  # exact: same
    assert np.isfinite(df_on["stop_max_loss"]).all()


def test_stop_rule_resumes_to_the_same_stop(tmp_path):
    curve, x, y = _fit_setup()
    stop = {"min_delta": 10.0, "patience": 2}      # no check can improve by 10 nats: stop after epoch 3
    ref, df_ref = _monitored_fit(tmp_path, _real_monitor(x, y), stop, name="ref")
    with pytest.raises(KeyboardInterrupt):        # killed in epoch 3 (6 batches per epoch)
        _monitored_fit(tmp_path, _real_monitor(x, y), stop, fail_after=15, name="b")
    assert (tmp_path / "b" / "resume.pt").exists()
    again, df_b = _monitored_fit(tmp_path, _real_monitor(x, y), stop, name="b")
    assert df_ref["epoch"].tolist() == df_b["epoch"].tolist() == [1, 2, 3]
    assert torch.equal(ref.bends.detach(), again.bends.detach())  # exact: same-process resume (deterministic CPU ops)
    pd.testing.assert_frame_equal(df_ref.drop(columns=["wall_s", "images_per_s"]),
                                  df_b.drop(columns=["wall_s", "images_per_s"]))  # exact: same values restored
    with pytest.raises(ConfigError, match="stop.min_delta"):
        C.fit_curve(curve, TensorLoader(x, y, 10), epochs=2, lr=0.05, stop={"patience": 2}, monitor=lambda c: 0.0)
    with pytest.raises(ConfigError, match="needs a monitor"):
        C.fit_curve(curve, TensorLoader(x, y, 10), epochs=2, lr=0.05, stop={"min_delta": 0.1})


def test_garipov_schedule():
    f = C.garipov_lr_factor
    assert f(0, 10) == 1 and f(5, 10) == 1
    assert f(7, 10) == pytest.approx(1 - 0.5 * 0.99)
    assert f(9, 10) == pytest.approx(0.01) and f(9.5, 10) == 0.01


# --------------------------------------------------------------------------- CLI: diverged endpoints


def test_cli_diverged_endpoint_writes_nan_tables(tmp_path):
    net = small_net()
    meta = {"run": "x", "seed": 0, "epoch": 1, "iteration": 1, "status": "ok",
            "model": {"name": "small_cnn", "batch_norm": False},
            "data": {"name": "fashion_mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}}
    ok = tmp_path / "ok.pt"
    bad = tmp_path / "bad.pt"
    save_checkpoint(ok, net.state_dict(), meta)
    save_checkpoint(bad, None, {**meta, "status": "diverged"})
    out = tmp_path / "line.csv"
    assert cli.curves_main(["evaluate", "--start", str(ok), "--end", str(bad), "--out", str(out), "--points", "7",
                   "--data", "fashion_mnist", "--quiet"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == L.PATH_COLUMNS and len(df) == 7
    assert (df["status"] == "diverged").all() and df["train_loss"].isna().all() and (df["path"] == "line").all()
    assert cli.curves_main(["fit", "--start", str(bad), "--end", str(ok), "--out", str(tmp_path / "fit"), "--epochs", "1",
                   "--data", "fashion_mnist", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "fit" / "curve.pt")["meta"]["status"] == "diverged"
    assert cli.curves_main(["plane", "--w1", str(ok), "--w2", str(bad), "--bend", str(ok), "--out-dir", str(tmp_path / "pl"),
                   "--data", "fashion_mnist", "--quiet"]) == 0
    assert (pd.read_csv(tmp_path / "pl" / "points.csv")["status"] == "diverged").all()


# --------------------------------------------------------------------------- CLI end to end (real data, tiny)


def test_cli_fit_evaluate_plane_end_to_end(tmp_path, fmnist_dir, data_cache):
    from closerlook.models import build_model

    spec = {"name": "small_cnn", "batch_norm": True, "width": 0.25}
    data = {"name": "fashion_mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}
    paths = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        m = build_model(spec, 1, 10, 28)
        p = tmp_path / f"epoch{seed + 1}.pt"
        save_checkpoint(p, m.state_dict(), {"run": "r", "seed": seed, "epoch": seed + 1, "iteration": 0,
                                            "status": "ok", "model": spec, "data": data})
        paths.append(str(p))
    dargs = ["--data", "fashion_mnist", "--root", str(fmnist_dir), "--cache-dir", str(data_cache),
             "--train-per-class", "6", "--test-per-class", "3", "--eval-batch-size", "30", "--quiet"]
    fit_dir = tmp_path / "fit"
    argv = ["fit", "--start", paths[0], "--end", paths[1], "--out", str(fit_dir), "--epochs", "2",
            "--batch-size", "20", "--lr", "0.01", "--no-augment", "--seed", "0", *dargs]
    assert cli.curves_main(argv) == 0
    ck = load_checkpoint(fit_dir / "curve.pt")
    assert ck["meta"]["curve"] == {"kind": "bezier", "num_bends": 3} and ck["meta"]["model"] == spec
    assert len(pd.read_csv(fit_dir / "metrics.csv")) == 2
    assert not (fit_dir / "resume.pt").exists()
    mtime = (fit_dir / "curve.pt").stat().st_mtime_ns
    assert cli.curves_main(argv) == 0  # finished: nothing redone
    assert (fit_dir / "curve.pt").stat().st_mtime_ns == mtime
    for label, extra in (("curve", ["--curve", str(fit_dir / "curve.pt")]), ("line", [])):
        out = tmp_path / f"{label}.csv"
        assert cli.curves_main(["evaluate", "--start", paths[0], "--end", paths[1], "--out", str(out), "--points", "3",
                       "--eval-train-images", "30", *extra, *dargs]) == 0
        df = pd.read_csv(out)
        assert list(df.columns) == L.PATH_COLUMNS and len(df) == 3 and (df["path"] == label).all()
        assert df[["train_loss", "test_loss"]].notna().all().all() and (df["status"] == "ok").all()
    c_df, l_df = pd.read_csv(tmp_path / "curve.csv"), pd.read_csv(tmp_path / "line.csv")
    assert c_df.loc[0, "train_loss"] == pytest.approx(l_df.loc[0, "train_loss"], rel=1e-6)
    # a curve checkpoint with the wrong endpoints is refused
    assert cli.curves_main(["evaluate", "--start", paths[0], "--end", paths[2], "--out", str(tmp_path / "x.csv"),
                   "--curve", str(fit_dir / "curve.pt"), *dargs]) == 2
    pl = tmp_path / "plane"
    assert cli.curves_main(["plane", "--w1", paths[0], "--w2", paths[1], "--bend", str(fit_dir / "curve.pt"),
                   "--project", paths[2], "--labels", "epoch3", "--out-dir", str(pl), "--grid-points", "3", "2", "--margin", "0.2",
                   "--eval-train-images", "30", "--bn-batches", "1", *dargs]) == 0
    grid, pts = pd.read_csv(pl / "grid.csv"), pd.read_csv(pl / "points.csv")
    assert list(grid.columns) == L.GRID_COLUMNS and len(grid) == 6
    assert pts["label"].tolist() == ["w1", "w2", "bend", "epoch3"]
    assert (pts["distance"][:3] < 1e-6).all() and pts.loc[3, "distance"] > 0
    assert list(pts.columns) == L.POINT_COLUMNS and pts["train_loss"].notna().all()
    assert grid["u"].min() <= pts["u"].min() and grid["u"].max() >= pts["u"].max()  # exact: linspace endpoints
    assert grid["v"].min() <= pts["v"].min() and grid["v"].max() >= pts["v"].max()  # exact: linspace endpoints


def test_cli_data_spec_file(tmp_path):
    import argparse

    f = tmp_path / "run.yaml"
    f.write_text("name: x\ndata: {name: fashion_mnist, train_per_class: 100, subset_seed: 3}\nbatch_size: 50\n")
    ns = argparse.Namespace(spec=str(f), data=None, root="/r", cache_dir=None, train_per_class=None,
                            test_per_class=20, subset_seed=None)
    d, _ = cli._data_spec(ns)
    assert d == {"name": "fashion_mnist", "train_per_class": 100, "subset_seed": 3, "root": "/r",
                 "test_per_class": 20}
    g = tmp_path / "data.json"
    g.write_text('{"name": "cifar10", "train_per_class": 5}')
    ns.spec, ns.root, ns.test_per_class = str(g), None, None
    assert cli._data_spec(ns)[0] == {"name": "cifar10", "train_per_class": 5}
    ns.spec = str(tmp_path / "missing.yaml")
    with pytest.raises(C.ConfigError, match="does not exist"):
        cli._data_spec(ns)


def test_plane_grid_axes_contain_every_projection():
    # anchors in [0, 1] x [0, 0.5]; one projection far outside on every side in turn
    anchors = [{"u": 0.0, "v": 0.0}, {"u": 1.0, "v": 0.0}, {"u": 0.4, "v": 0.5}]
    for far in ({"u": -3.0, "v": 0.2}, {"u": 5.0, "v": -2.0}, {"u": 0.5, "v": 7.0}):
        us, vs = L.grid_axes(anchors + [far, {"u": float("nan"), "v": float("nan")}], (5, 4), 0.2)
        assert len(us) == 5 and len(vs) == 4
        for p in anchors + [far]:
            assert us[0] < p["u"] < us[-1] or (p["u"] == us[0] == us[-1])
            assert vs[0] < p["v"] < vs[-1]
    us, vs = L.grid_axes(anchors, 3, 0.0)
    assert us[0] == 0.0 and us[-1] == 1.0 and vs[0] == 0.0 and vs[-1] == 0.5  # exact: linspace endpoints, margin 0


# --------------------------------------------------------------------------- t sampling, stopping rule in configs (issue 24)


def test_stratified_ts_cover_every_stratum():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ts = C.sample_ts(4, "stratified", g)
        assert [int(t * 4) for t in ts] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="t_sampling"):
        C.sample_ts(2, "antithetic-ish", g)


def test_split_batch_costs_one_t_and_equals_the_whole_batch_at_one_t():
    net = small_net(bn=False)           # without BN: a slice's gradient does not depend on the other slices
    curve = C.Curve(net, trained_like_state(net, 1), trained_like_state(net, 2), kind="bezier", num_bends=3)
    x, y = synth_data(60, seed=11)
    st = C.batch_gradient(curve, x[:20], y[:20], [0.3, 0.7], 5e-4, split=True)
    assert st["n"] == 20                       # one gradient evaluation per image
    curve.bends.grad = None
    st2 = C.batch_gradient(curve, x[:20], y[:20], [0.3, 0.7], 5e-4, split=False)
    assert st2["n"] == 40                      # every image at both t
    # split with equal t values is the plain batch gradient at that t (equal slices: the mean of the means)
    curve.bends.grad = None
    C.batch_gradient(curve, x[:20], y[:20], [0.4, 0.4], 5e-4, split=True)
    g_split = curve.bends.grad.clone()
    curve.bends.grad = None
    C.batch_gradient(curve, x[:20], y[:20], [0.4], 5e-4)
    assert torch.allclose(g_split, curve.bends.grad, rtol=1e-4, atol=1e-6)


def test_fit_with_stratified_split_ts_trains_and_keys_the_fit(tmp_path):
    curve, x, y = _fit_setup()
    df = C.fit_curve(curve, TensorLoader(x, y, 10, shuffle=True), epochs=2, lr=0.05, seed=1, out_dir=tmp_path,
                     t_per_batch=4, t_sampling="stratified", t_split=True, schedule="constant")
    assert len(df) == 2 and (df["status"] == "ok").all() and df["lr"].tolist() == [0.05, 0.05]
    key = load_checkpoint(tmp_path / "curve.pt")["meta"]["fit_key"]
    assert key["t_sampling"] == "stratified" and key["t_split"] is True


def _cfg_module():
    from closerlook import config as K
    return K


@pytest.mark.parametrize("name", ["demo.yaml", "cifar_lite.yaml", "config.yaml", "demo_extra.yaml", "gpu_smoke.yaml",
                                  "heuristics.yaml", "tiny.yaml"])
def test_every_shipped_config_fits_curves_under_the_stopping_rule(name):
    from pathlib import Path
    K = _cfg_module()
    cfg = K.load_config(Path(__file__).resolve().parents[1] / "config" / name)
    for c in cfg.get("curves") or {}:
        s = K.curve_settings(cfg, c)
        assert s["stop"] and s["stop"]["min_delta"] <= 0.01 and s["stop"].get("patience", 3) >= 2, (name, c)
        assert s["schedule"] in ("constant", "plateau"), (name, c)


def test_config_refuses_a_loose_stopping_rule_naming_the_key():
    import copy
    from pathlib import Path
    K = _cfg_module()
    base = K.load_config(Path(__file__).resolve().parents[1] / "config" / "demo.yaml")
    cfg = copy.deepcopy(base)
    cfg["curve_defaults"]["stop"]["min_delta"] = 0.05
    with pytest.raises(ConfigError, match=r"curve_defaults\.stop\.min_delta"):
        K.check_curve_stop(cfg)
    cfg = copy.deepcopy(base)
    name = next(iter(cfg["curves"]))
    cfg["curves"][name]["stop"] = {"min_delta": 0.01, "patience": 1}
    with pytest.raises(ConfigError, match=rf"curves\.{name}\.stop\.patience"):
        K.check_curve_stop(cfg)
    cfg = copy.deepcopy(base)
    cfg["curve_defaults"]["schedule"] = "garipov"
    with pytest.raises(ConfigError, match=r"curve_defaults\.schedule"):
        K.check_curve_stop(cfg)
    cfg = copy.deepcopy(base)
    cfg.setdefault("claims", {})["barrier_min_nats"] = 0.05     # the floor moves the limit: 0.005
    with pytest.raises(ConfigError, match="min_delta"):
        K.check_curve_stop(cfg)


def test_plateau_schedule_halves_the_lr_at_each_check_without_improvement(tmp_path):
    vals = iter([1.0, 0.5, 0.5, 0.2, 0.2, 0.2])    # checks 3 and 5 do not improve; 6 is the second miss: stop
    df, _ = None, None
    curve, x, y = _fit_setup()
    df = C.fit_curve(curve, TensorLoader(x, y, 10), epochs=10, lr=0.04, seed=0, schedule="plateau",
                     stop={"min_delta": 0.01, "patience": 2}, monitor=lambda c: next(vals))
    assert df["lr"].tolist() == pytest.approx([0.04, 0.04, 0.04, 0.02, 0.02, 0.01])
    assert df["stopped"].tolist() == [False] * 5 + [True]
    with pytest.raises(ConfigError, match="plateau"):
        C.fit_curve(curve, TensorLoader(x, y, 10), epochs=2, lr=0.04, schedule="plateau")


def test_plateau_patience_halves_the_lr_after_that_many_misses_in_a_row():
    """plateau_patience 2: a single miss leaves the lr; the second miss in a row halves it, the fourth again."""
    vals = iter([1.0, 1.0, 0.5] + [0.5] * 6)   # wait: 0, 1, 0, then 1 .. 6 -> stop at 6
    curve, x, y = _fit_setup()
    df = C.fit_curve(curve, TensorLoader(x, y, 10), epochs=20, lr=0.04, seed=0, schedule="plateau",
                     stop={"min_delta": 0.01, "patience": 6}, monitor=lambda c: next(vals), plateau_patience=2)
    assert df["stop_wait"].tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 6]
    # the lr of epoch e is set from the rows before it: halved after the rows with wait 2, 4 (and 6: stopped)
    assert df["lr"].tolist() == pytest.approx([0.04, 0.04, 0.04, 0.04, 0.04, 0.02, 0.02, 0.01, 0.01])
    assert C.plateau_lr_factor(df.to_dict("records"), 1) == 0.5 ** 7    # exact: powers of two; every miss
    with pytest.raises(ConfigError, match="plateau_patience"):
        C.fit_curve(curve, TensorLoader(x, y, 10), epochs=2, lr=0.04, schedule="plateau",
                    stop={"min_delta": 0.01, "patience": 2}, monitor=lambda c: 1.0, plateau_patience=0)
