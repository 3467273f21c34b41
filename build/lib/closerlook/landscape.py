"""The loss landscape around networks: BN recompute, evaluation along a path, the loss plane.

Any ``nn.Module``: a point is a state dict run through ``torch.func.functional_call``
(no model rebuilds). At every evaluated point the batch-norm running statistics
are recomputed (:func:`recompute_bn`: exact cumulative average, like
``torch.optim.swa_utils.update_bn``, on UNAUGMENTED training data, dropout off),
then loss and accuracy are taken in eval mode.

* :func:`evaluate_path`: a :class:`~closerlook.curves.Curve` (or the straight
  line) at N values of t -> the path table of :mod:`closerlook.tables`.
* :func:`plane_basis` / :func:`plane_grid`: the plane through w1, w2 and a bend
  (Garipov et al.'s Fig. 3 plane), a grid of loss/accuracy over it and the
  projections of other checkpoints (distance from the plane included).
* :func:`surface_metrics`: loss/accuracy at points ``origin + sum c_i axis_i`` of any
  low-dimensional slice (the plane grid, the lenses' random and PCA slices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .curves import Curve, CurveError, Layout, check_t
from .data import batches_of
from .io import ConfigError
from .tables import GRID_COLUMNS, PATH_COLUMNS, POINT_COLUMNS
from .defaults import EVAL_BATCH_SIZE, PATH_DEFAULTS, PLANE_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)


def _bn_modules(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn(module: nn.Module, state: dict[str, torch.Tensor], loader: Any,
                 num_batches: int | None = None, device: Any = None) -> int:
    """Recompute the BN running statistics held in ``state`` (in place) from ``loader``.

    Exact cumulative average over the batches (``momentum=None``, like
    ``torch.optim.swa_utils.update_bn``): the statistics are reset, the BN
    layers put in training mode (everything else, e.g. dropout, in eval mode)
    and the data run through ``functional_call(module, state, x)``. Returns
    the number of batches used (0 when the module has no BN with running stats).
    """
    bns = _bn_modules(module)
    if not bns:
        return 0
    for name, _ in bns:
        p = f"{name}." if name else ""
        state[p + "running_mean"].zero_()
        state[p + "running_var"].fill_(1.0)
        state[p + "num_batches_tracked"].zero_()
    was_training = module.training
    saved = [(m, m.momentum, m.training) for _, m in bns]
    module.eval()
    for _, m in bns:
        m.momentum = None
        m.train()
    used = 0
    try:
        for x, _y in batches_of(loader):
            if num_batches is not None and used >= num_batches:
                break
            if device is not None:
                x = x.to(device, non_blocking=True)
            functional_call(module, state, (x,))
            used += 1
    finally:
        for m, mom, tr in saved:
            m.momentum = mom
            m.train(tr)
        module.train(was_training)
    return used


@torch.no_grad()
def evaluate_state(module: nn.Module, state: dict[str, torch.Tensor], loader: Any, device: Any = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy fraction) of ``module`` with ``state`` over ``loader`` (eval mode)."""
    if loader is None:
        return float("nan"), float("nan")
    was_training = module.training
    module.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in batches_of(loader):
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = functional_call(module, state, (x,))
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += y.numel()
    finally:
        module.train(was_training)
    if n == 0:
        return float("nan"), float("nan")
    return loss_sum / n, correct / n


def _point_metrics(module, state, train_loader, test_loader, bn_loader, bn_batches, device) -> dict:
    recompute_bn(module, state, bn_loader if bn_loader is not None else train_loader, bn_batches, device)
    trl, tra = evaluate_state(module, state, train_loader, device)
    tel, tea = evaluate_state(module, state, test_loader, device)
    return {"train_loss": trl, "train_acc": tra, "test_loss": tel, "test_acc": tea}


def evaluate_point(module: nn.Module, state: dict, train_loader: Any, test_loader: Any = None, bn_loader: Any = None,
                   bn_batches: int | None = None, device: Any = None) -> dict:
    """Loss and accuracy of one point (a state dict, its BN statistics recomputed in place)."""
    return _point_metrics(module, state, train_loader, test_loader, bn_loader, bn_batches, device)


def path_points(ts: int | Sequence[float] | None) -> list[float]:
    """The t values of a path evaluation: an int = that many equally spaced points in [0, 1]."""
    return _ts(ts)


def _ts(ts: int | Sequence[float] | None) -> list[float]:
    if ts is None:
        ts = PATH_DEFAULTS["points"]
    if isinstance(ts, int):
        if ts < 2:
            raise ConfigError(f"ts: need at least 2 points, got {ts}")
        return [float(v) for v in np.linspace(0.0, 1.0, ts)]
    return [check_t(v) for v in ts]


@torch.no_grad()
def evaluate_path(path: Curve, train_loader_eval: Any, test_loader_eval: Any = None,
                  ts: int | Sequence[float] | None = PATH_DEFAULTS["points"], bn_loader: Any = None,
                  bn_batches: int | None = None, log: Callable[[str], None] | None = None):
    """Loss and accuracy along ``path`` at ``ts`` (an int = that many equally spaced points).

    At every t the BN statistics are recomputed on ``bn_loader`` (default:
    ``train_loader_eval``; pass UNAUGMENTED loaders), exact cumulative
    average, optionally over the first ``bn_batches`` batches only. Returns a
    DataFrame with columns ``t, train_loss, train_acc, test_loss, test_acc, path, status``.
    """
    device = path.device
    rows = []
    for t in _ts(ts):
        state = path.weights_at(t)
        m = _point_metrics(path.module, state, train_loader_eval, test_loader_eval, bn_loader, bn_batches, device)
        # a non-finite training loss at a point means the weights there are unusable
        status = "ok" if math.isfinite(m["train_loss"]) else "diverged"
        rows.append({"t": t, **m, "path": path.path_label, "status": status})
        if log:
            log(f"t={t:.3f} train_loss={m['train_loss']:.4f} train_acc={m['train_acc']:.4f} "
                f"test_loss={m['test_loss']:.4f} test_acc={m['test_acc']:.4f}")
    return pd.DataFrame(rows, columns=PATH_COLUMNS)


def diverged_path_table(ts: int | Sequence[float] | None = PATH_DEFAULTS["points"], path: str = "curve"):
    """The path table of a path whose endpoint diverged: NaN numbers, status "diverged"."""
    nan = float("nan")
    return pd.DataFrame([{"t": t, "train_loss": nan, "train_acc": nan, "test_loss": nan, "test_acc": nan,
                          "path": path, "status": "diverged"} for t in _ts(ts)], columns=PATH_COLUMNS)


# --------------------------------------------------------------------------- plane


@dataclass
class PlaneBasis:
    """Orthonormal basis of the plane through w1, w2, theta (floating parameters only, float64).

    u along w2 - w1; v along theta - w1 with its u component removed (Gram-Schmidt).
    Coordinates are in weight units: w1 = (0, 0), w2 = (||w2 - w1||, 0).
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    keys: list[str]
    # The anchors' coordinates are known exactly by construction (w1 = (0, 0), w2 on the u axis,
    # bend at v = its Gram-Schmidt norm, all in the plane). Projecting them instead leaves residuals
    # of ~1e-17 whose sign depends on the CPU's arithmetic, and a grid that promises to contain w1
    # would then miss it on some machines.
    anchors: dict[str, tuple[float, float]] = field(default_factory=dict)

    def coords(self, vec: torch.Tensor) -> tuple[float, float, float, float]:
        """(u, v, distance from the plane, distance / ||vec - w1||) of a flat parameter vector."""
        d = vec.to(self.origin) - self.origin
        pu, pv = torch.dot(d, self.u).item(), torch.dot(d, self.v).item()
        resid = d - pu * self.u - pv * self.v
        dist = resid.norm().item()
        nd = d.norm().item()
        return pu, pv, dist, (dist / nd if nd > 0 else 0.0)

    def point(self, a: float, b: float) -> torch.Tensor:
        return self.origin + a * self.u + b * self.v


def flat_parameters(module_or_layout: nn.Module | Layout, state: Mapping[str, torch.Tensor],
                    dtype=torch.float64) -> torch.Tensor:
    """Floating parameters of ``state`` (by the module's names, in its order) as one vector."""
    layout = module_or_layout if isinstance(module_or_layout, Layout) else Layout(module_or_layout)
    layout.check(state, "state")
    return layout.flat_params(state, dtype=dtype)


def plane_basis(module: nn.Module, w1: Mapping, w2: Mapping, theta: Mapping) -> PlaneBasis:
    layout = Layout(module)
    vecs = []
    for label, sd in (("w1", w1), ("w2", w2), ("bend", theta)):
        layout.check(sd, label)
        vecs.append(layout.flat_params(sd, dtype=torch.float64))
    a, b, c = vecs
    u = b - a
    nu = u.norm()
    if nu == 0:
        raise CurveError("plane: w1 and w2 are identical; no plane through them")
    u = u / nu
    v = c - a
    v = v - torch.dot(v, u) * u
    v = v - torch.dot(v, u) * u  # second pass: numerically orthogonal
    nv = v.norm()
    if nv <= 1e-12 * nu:
        raise CurveError("plane: the bend lies on the line through w1 and w2; no plane")
    v = v / nv
    anchors = {"w1": (0.0, 0.0), "w2": (float(nu), 0.0), "bend": (float(torch.dot(c - a, u)), float(nv))}
    return PlaneBasis(origin=a, u=u, v=v, keys=list(layout.param_keys), anchors=anchors)


def _plane_points(basis: PlaneBasis, layout: Layout, states: Mapping[str, Mapping]) -> list[dict]:
    """Anchors (exact coordinates) and every other state projected: label, u, v, distance, rel_distance."""
    points = []
    for label, sd in states.items():
        layout.check(sd, label)
        if label in basis.anchors:
            (pu, pv), dist, rel = basis.anchors[label], 0.0, 0.0
        else:
            pu, pv, dist, rel = basis.coords(layout.flat_params(sd, dtype=torch.float64))
        points.append({"label": label, "u": pu, "v": pv, "distance": dist, "rel_distance": rel})
    return points


def grid_axes(points: Sequence[Mapping], grid_points: int | tuple[int, int],
              margin: float | tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates spanning EVERY point (anchors and projections) plus ``margin`` x that extent."""
    nu, nv = (grid_points, grid_points) if isinstance(grid_points, int) else grid_points
    ml, mr, mb, mt = (margin,) * 4 if isinstance(margin, (int, float)) else margin
    us = [p["u"] for p in points if math.isfinite(p["u"])]
    vs = [p["v"] for p in points if math.isfinite(p["v"])]
    u_lo, u_hi, v_lo, v_hi = min(us), max(us), min(vs), max(vs)
    du, dv = u_hi - u_lo, v_hi - v_lo
    return np.linspace(u_lo - ml * du, u_hi + mr * du, nu), np.linspace(v_lo - mb * dv, v_hi + mt * dv, nv)


def _own_metrics(module, states: Mapping[str, Mapping], train_loader, bn_loader, bn_batches, device) -> dict:
    """Each state's OWN train loss/accuracy (BN recomputed on a copy, eval mode, the plane's training images)."""
    out = {}
    for label, sd in states.items():
        st = {k: v.detach().clone().to(device) for k, v in sd.items()}
        m = _point_metrics(module, st, train_loader, None, bn_loader, bn_batches, device)
        out[label] = {"train_loss": m["train_loss"], "train_acc": m["train_acc"]}
    return out


@torch.no_grad()
def plane_grid(module: nn.Module, w1: Mapping, w2: Mapping, theta: Mapping, train_loader: Any,
               test_loader: Any = None, *, grid_points: int | tuple[int, int] = 21,
               margin: float | tuple[float, float, float, float] = 0.2, bn_loader: Any = None,
               bn_batches: int | None = None, checkpoints: Mapping[str, Mapping] | None = None,
               log: Callable[[str], None] | None = None):
    """Loss/accuracy on a grid over the plane through w1, w2, theta, and projections onto it.

    Grid: ``grid_points`` (n or (n_u, n_v)) points per axis spanning the extent of the anchors
    AND of every projected checkpoint, plus ``margin`` (one value or (left, right, bottom, top))
    times that extent on each side (Garipov's default: 21 x 21, 0.2), so no projection lies
    outside it. BN statistics recomputed at every grid point (``bn_loader``, default
    ``train_loader``). Buffers other than BN statistics come from w1.
    Returns ``(grid_df, points_df)`` with the DESIGN.md columns; ``checkpoints`` (label -> state
    dict) are projected too, and every point's own network is evaluated on ``train_loader``
    (``train_loss``, ``train_acc`` of points.csv: the iterate itself, not the plane under it).
    The anchors' coordinates are exact (w1 = (0, 0), w2 = (||w2 - w1||, 0)), so with
    ``margin=0`` and no projection outside the anchors' bounding box the grid's corners are that
    box and w1 is a grid point, on any machine, whenever the bend's u coordinate is >= 0.
    """
    basis = plane_basis(module, w1, w2, theta)
    layout = Layout(module)
    device = next((v.device for v in module.state_dict().values()), torch.device("cpu"))
    states = {"w1": w1, "w2": w2, "bend": theta, **dict(checkpoints or {})}
    points = _plane_points(basis, layout, states)
    own = _own_metrics(module, states, train_loader, bn_loader, bn_batches, device)
    for p in points:
        p.update(own[p["label"]])
    ugrid, vgrid = grid_axes(points, grid_points, margin)
    coords = [(float(a), float(b)) for b in vgrid for a in ugrid]
    metrics = surface_metrics(module, w1, basis.origin, [basis.u, basis.v], coords, train_loader, test_loader,
                              bn_loader=bn_loader, bn_batches=bn_batches, log=log)
    rows = [{"u": a, "v": b, **m} for (a, b), m in zip(coords, metrics)]
    return pd.DataFrame(rows, columns=GRID_COLUMNS), pd.DataFrame(points, columns=POINT_COLUMNS)


@torch.no_grad()
def surface_metrics(module: nn.Module, base: Mapping[str, torch.Tensor], origin: torch.Tensor,
                    axes: Sequence[torch.Tensor], coords: Sequence[Sequence[float]], train_loader: Any,
                    test_loader: Any = None, *, bn_loader: Any = None, bn_batches: int | None = None,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """Loss/accuracy at ``origin + sum_i c_i axes[i]`` for every coordinate tuple ``c`` in ``coords``.

    ``origin`` and ``axes`` are flat parameter vectors (the module's floating parameters, in
    :class:`~closerlook.curves.Layout` order, any float dtype; summed in float64). Each point is one
    state dict run through ``functional_call``: no model is rebuilt, the BN statistics are recomputed
    (:func:`recompute_bn`), then one evaluation pass per loader. Buffers other than BN statistics
    come from ``base``. Used by the plane grid and by the lenses (:mod:`closerlook.lenses`).
    """
    layout = Layout(module)
    device = next((v.device for v in module.state_dict().values()), torch.device("cpu"))
    o = origin.to(device=device, dtype=torch.float64)
    ax = [a.to(device=device, dtype=torch.float64) for a in axes]
    base_buf = layout.flat_fbufs(base, device=device)
    others = {k: base[k].to(device) for k in layout.other_keys}
    out = []
    for c in coords:
        if len(c) != len(ax):
            raise ValueError(f"surface_metrics: a point with {len(c)} coordinates for {len(ax)} axes")
        p = o.clone()
        for ci, a in zip(c, ax):
            p.add_(a, alpha=float(ci))
        state = layout.state(p.to(layout.dtype), base_buf.clone(), others)
        m = _point_metrics(module, state, train_loader, test_loader, bn_loader, bn_batches, device)
        out.append(m)
        if log:
            log(" ".join(f"{x:.3f}" for x in c) + f" train_loss={m['train_loss']:.4f} test_loss={m['test_loss']:.4f}")
    return out


def diverged_plane_tables(labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The grid and points tables of a plane whose input diverged: NaN numbers, status "diverged"."""
    nan = float("nan")
    g = pd.DataFrame([{c: nan for c in GRID_COLUMNS}], columns=GRID_COLUMNS)
    g["status"] = "diverged"
    pts = pd.DataFrame([{c: nan for c in POINT_COLUMNS} | {"label": lab} for lab in labels], columns=POINT_COLUMNS)
    pts["status"] = "diverged"
    return g, pts
