"""Mode connectivity: curves between two networks, curve fitting, path evaluation, loss plane.

Generic over any ``nn.Module``: no per-layer "curve twin" is written. A
:class:`Curve` keeps the two endpoint state dicts (fixed buffers) and the
trainable bends as flat vectors; the weights at ``t`` are a small weighted sum
of the control points, split into views named like the module's state dict,
and the network is run with ``torch.func.functional_call``.

Layout of the flat vectors (built once from ``module.state_dict()`` order):

* floating **parameters** follow the curve (Bezier / PolyChain / line) and
  define the geometry (distance, plane, L2 regulariser);
* floating **buffers** (BN running statistics) are interpolated on the
  straight line as a placeholder only: evaluation recomputes them
  (:func:`recompute_bn`), fitting uses batch statistics (training mode);
* other buffers (``num_batches_tracked``) are taken from ``start``.

Endpoints are matched by NAME, shapes are checked and non-finite values are
rejected, with the key named in the error (the reference matched by position).

Conventions (Garipov et al. 2018, ``timgaripov/dnn-mode-connectivity``):
``num_bends`` counts every control point including the two fixed endpoints
(3 = one trainable bend); Bezier coefficients are Bernstein polynomials,
PolyChain coefficients hat functions over equally spaced knots; bends are
initialised on the straight line; fitting samples one t ~ U(0, 1) per
minibatch with the regulariser 0.5 * wd * ||phi(t)||^2 on the sampled point
(optimizer weight decay 0), SGD momentum 0.9, lr constant for the first half,
linear decay to 1 % by 90 %, then 1 %. Unlike the reference, batch-norm
statistics are recomputed on UNAUGMENTED training data (pass an unaugmented
loader), with dropout off during that pass.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .io import (
    CloserlookError,
    ConfigError,
    atomic_path,
    atomic_torch_save,
    load_checkpoint,
    safe_torch_load,
    save_checkpoint,
)

KINDS = ("bezier", "polychain", "line")
PATH_COLUMNS = ["t", "train_loss", "train_acc", "test_loss", "test_acc", "path", "status"]
GRID_COLUMNS = ["u", "v", "train_loss", "train_acc", "test_loss", "test_acc"]
POINT_COLUMNS = ["label", "u", "v", "distance", "rel_distance"]
CURVE_FORMAT = "closerlook-curve/1"


class CurveError(CloserlookError, ValueError):
    """Endpoints or a curve checkpoint do not fit together; the message names the key."""


# --------------------------------------------------------------------------- coefficients


def bezier_coefficients(t: float, num_bends: int) -> list[float]:
    """Bernstein polynomials of degree ``num_bends - 1`` at ``t`` (exact 1/0 at t = 0 and 1)."""
    n = num_bends - 1
    t = float(t)
    return [math.comb(n, k) * (t**k) * ((1.0 - t) ** (n - k)) for k in range(num_bends)]


def polychain_coefficients(t: float, num_bends: int) -> list[float]:
    """Hat functions over the knots k / (num_bends - 1) (piecewise-linear chain)."""
    s = float(t) * (num_bends - 1)
    return [max(0.0, 1.0 - abs(s - k)) for k in range(num_bends)]


def _check_t(t: Any) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"t must be a scalar, got a tensor of shape {tuple(t.shape)}")
        t = t.item()
    t = float(t)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"t must lie in [0, 1], got {t}")
    return t


# --------------------------------------------------------------------------- layout


class _Layout:
    """Names, shapes and offsets of a module's state dict, split into the three groups."""

    def __init__(self, module: nn.Module):
        ref = module.state_dict()
        param_names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        self.keys = list(ref.keys())
        self.shapes = {k: tuple(v.shape) for k, v in ref.items()}
        self.dtypes = {k: v.dtype for k, v in ref.items()}
        self.param_keys = [k for k in self.keys if k in param_names and ref[k].is_floating_point()]
        self.fbuf_keys = [k for k in self.keys if k not in param_names and ref[k].is_floating_point()]
        self.other_keys = [k for k in self.keys if not ref[k].is_floating_point()]
        floats = [ref[k].dtype for k in self.param_keys + self.fbuf_keys]
        self.dtype = floats[0] if floats else torch.float32
        self.param_sizes = [ref[k].numel() for k in self.param_keys]
        self.fbuf_sizes = [ref[k].numel() for k in self.fbuf_keys]

    def check(self, sd: Mapping[str, torch.Tensor], label: str) -> None:
        if not isinstance(sd, Mapping):
            raise CurveError(f"{label}: expected a state dict (mapping name -> tensor), got {type(sd).__name__}")
        missing = [k for k in self.keys if k not in sd]
        unexpected = [k for k in sd if k not in self.shapes]
        if missing:
            raise CurveError(f"{label}: missing key {missing[0]!r} (and {len(missing) - 1} more)" if len(missing) > 1
                             else f"{label}: missing key {missing[0]!r}")
        if unexpected:
            raise CurveError(f"{label}: unexpected key {unexpected[0]!r} (not in the module's state dict"
                             + (f"; {len(unexpected) - 1} more)" if len(unexpected) > 1 else ")"))
        for k in self.keys:
            v = sd[k]
            if not isinstance(v, torch.Tensor):
                raise CurveError(f"{label}: key {k!r} is a {type(v).__name__}, not a tensor")
            if tuple(v.shape) != self.shapes[k]:
                raise CurveError(f"{label}: key {k!r} has shape {tuple(v.shape)}, the module expects {self.shapes[k]}")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise CurveError(f"{label}: key {k!r} holds non-finite values (NaN or inf); a diverged run?")

    def flat_params(self, sd: Mapping[str, torch.Tensor], dtype=None, device=None) -> torch.Tensor:
        return self._flat(sd, self.param_keys, dtype, device)

    def flat_fbufs(self, sd: Mapping[str, torch.Tensor], dtype=None, device=None) -> torch.Tensor:
        return self._flat(sd, self.fbuf_keys, dtype, device)

    def _flat(self, sd, keys, dtype, device) -> torch.Tensor:
        dtype = dtype or self.dtype
        if not keys:
            return torch.zeros(0, dtype=dtype, device=device)
        return torch.cat([sd[k].detach().reshape(-1).to(device=device, dtype=dtype) for k in keys])

    def split(self, vec: torch.Tensor, keys: list[str], sizes: list[int]) -> dict[str, torch.Tensor]:
        out = {}
        if not keys:
            return out
        for k, chunk in zip(keys, torch.split(vec, sizes)):
            chunk = chunk.view(self.shapes[k])
            out[k] = chunk if chunk.dtype == self.dtypes[k] else chunk.to(self.dtypes[k])
        return out

    def state(self, pvec: torch.Tensor, bvec: torch.Tensor, others: Mapping[str, torch.Tensor]) -> dict:
        parts = self.split(pvec, self.param_keys, self.param_sizes)
        parts.update(self.split(bvec, self.fbuf_keys, self.fbuf_sizes))
        for k in self.other_keys:
            parts[k] = others[k].clone()
        return {k: parts[k] for k in self.keys}


# --------------------------------------------------------------------------- curve


class Curve(nn.Module):
    """A path phi(t), t in [0, 1], between two networks with the architecture of ``module``.

    ``kind``: "bezier" (Bernstein), "polychain" (hat functions) or "line"
    (the straight path, no bends). ``num_bends`` counts all control points,
    endpoints included (Garipov convention: 3 = one trainable bend). Only the
    bends are ``nn.Parameter`` s; endpoints are buffers and never change.
    ``module`` itself is not registered as a submodule (its own tensors are
    never used: every call replaces all of its parameters and buffers).
    """

    def __init__(self, module: nn.Module, start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                 kind: str = "bezier", num_bends: int = 3):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"curve kind: {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "line":
            num_bends = 2
        num_bends = int(num_bends)
        if num_bends < 2:
            raise ConfigError(f"num_bends: {num_bends} < 2 (it counts both endpoints)")
        self.__dict__["module"] = module  # not a submodule: its parameters must not be trained
        self.kind = kind
        self.num_bends = num_bends
        self.layout = layout = _Layout(module)
        layout.check(start, "start")
        layout.check(end, "end")
        device = next((v.device for v in module.state_dict().values()), torch.device("cpu"))
        sp, ep = layout.flat_params(start, device=device), layout.flat_params(end, device=device)
        self.register_buffer("start_params", sp)
        self.register_buffer("end_params", ep)
        self.register_buffer("start_buffers", layout.flat_fbufs(start, device=device))
        self.register_buffer("end_buffers", layout.flat_fbufs(end, device=device))
        for i, k in enumerate(layout.other_keys):
            self.register_buffer(f"other_{i}", start[k].detach().clone().to(device))
        nb = num_bends - 2
        # bends on the straight line: k / (num_bends - 1) of the way from start to end
        alphas = torch.tensor([(k + 1) / (num_bends - 1) for k in range(nb)], dtype=sp.dtype, device=device)
        self.bends = nn.Parameter(sp.unsqueeze(0) * (1 - alphas[:, None]) + ep.unsqueeze(0) * alphas[:, None])

    # -- bookkeeping --------------------------------------------------------
    @property
    def path_label(self) -> str:
        return "line" if self.kind == "line" else "curve"

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.module._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.train(mode)
        return self

    def _others(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"other_{i}") for i, k in enumerate(self.layout.other_keys)}

    def coefficients(self, t: float) -> list[float]:
        t = _check_t(t)
        if self.kind == "polychain":
            return polychain_coefficients(t, self.num_bends)
        return bezier_coefficients(t, self.num_bends)

    # -- points ---------------------------------------------------------------
    def flat_params_at(self, t: float) -> torch.Tensor:
        """Floating parameters at t as one flat vector (differentiable w.r.t. the bends)."""
        c = self.coefficients(t)
        phi = torch.add(self.start_params * c[0], self.end_params, alpha=c[-1])
        for k in range(self.num_bends - 2):
            if c[k + 1] != 0.0:
                phi = phi + self.bends[k] * c[k + 1]
        return phi

    def flat_buffers_at(self, t: float) -> torch.Tensor:
        t = _check_t(t)
        return torch.add(self.start_buffers * (1.0 - t), self.end_buffers, alpha=t)

    def weights_at(self, t: float) -> dict[str, torch.Tensor]:
        """Full state dict (parameters and buffers) at t; ``module.load_state_dict`` accepts it.

        Parameters are views of one freshly computed vector (gradients flow
        to the bends); buffers are fresh tensors, so in-place BN updates never
        touch the curve.
        """
        return self.layout.state(self.flat_params_at(t), self.flat_buffers_at(t), self._others())

    def state_from_flat(self, pvec: torch.Tensor, bvec: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """State dict for a flat parameter vector (buffers: the start's)."""
        bvec = self.start_buffers.clone() if bvec is None else bvec
        return self.layout.state(pvec, bvec, self._others())

    def control_points(self) -> list[dict[str, torch.Tensor]]:
        """The K control points as state dicts (bends get the straight-line buffer placeholder)."""
        out = []
        for k in range(self.num_bends):
            if k == 0:
                p, b = self.start_params, self.start_buffers
            elif k == self.num_bends - 1:
                p, b = self.end_params, self.end_buffers
            else:
                a = k / (self.num_bends - 1)
                p, b = self.bends[k - 1], self.start_buffers * (1 - a) + self.end_buffers * a
            out.append(self.layout.state(p.detach().clone(), b.detach().clone(), self._others()))
        return out

    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return functional_call(self.module, self.weights_at(t), (x,))


def line(module: Any, start: Any, end: Any) -> Curve:
    """The straight path (1 - t) start + t end, with the :class:`Curve` interface (kind "line").

    ``line(module, start, end)``; the order ``line(start, end, module)`` is accepted too.
    """
    if not isinstance(module, nn.Module) and isinstance(end, nn.Module):
        module, start, end = end, module, start
    if not isinstance(module, nn.Module):
        raise TypeError("line(module, start, end): a module is needed to evaluate the path")
    return Curve(module, start, end, kind="line")


# --------------------------------------------------------------------------- batches / evaluation


def _batches(loader: Any, epoch: int = 0, start: int = 0) -> Iterable:
    if hasattr(loader, "batches"):
        return loader.batches(epoch, start)

    def gen():
        for i, b in enumerate(loader):
            if i >= start:
                yield b

    return gen()


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


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
        for x, _y in _batches(loader, 0, 0):
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
        for x, y in _batches(loader, 0, 0):
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


def _curve_device(curve: Curve) -> torch.device:
    return curve.start_params.device


def _point_metrics(module, state, train_loader, test_loader, bn_loader, bn_batches, device) -> dict:
    recompute_bn(module, state, bn_loader if bn_loader is not None else train_loader, bn_batches, device)
    trl, tra = evaluate_state(module, state, train_loader, device)
    tel, tea = evaluate_state(module, state, test_loader, device)
    return {"train_loss": trl, "train_acc": tra, "test_loss": tel, "test_acc": tea}


def _ts(ts: int | Sequence[float] | None) -> list[float]:
    if ts is None:
        ts = 61
    if isinstance(ts, int):
        if ts < 2:
            raise ConfigError(f"ts: need at least 2 points, got {ts}")
        return [float(v) for v in np.linspace(0.0, 1.0, ts)]
    return [_check_t(v) for v in ts]


@torch.no_grad()
def evaluate_path(path: Curve, train_loader_eval: Any, test_loader_eval: Any = None,
                  ts: int | Sequence[float] | None = 61, bn_loader: Any = None,
                  bn_batches: int | None = None, log: Callable[[str], None] | None = None):
    """Loss and accuracy along ``path`` at ``ts`` (an int = that many equally spaced points).

    At every t the BN statistics are recomputed on ``bn_loader`` (default:
    ``train_loader_eval``; pass UNAUGMENTED loaders), exact cumulative
    average, optionally over the first ``bn_batches`` batches only. Returns a
    DataFrame with columns ``t, train_loss, train_acc, test_loss, test_acc, path, status``.
    """
    import pandas as pd

    device = _curve_device(path)
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


def diverged_path_table(ts: int | Sequence[float] | None = 61, path: str = "curve"):
    """The path table of a path whose endpoint diverged: NaN numbers, status "diverged"."""
    import pandas as pd

    nan = float("nan")
    return pd.DataFrame([{"t": t, "train_loss": nan, "train_acc": nan, "test_loss": nan, "test_acc": nan,
                          "path": path, "status": "diverged"} for t in _ts(ts)], columns=PATH_COLUMNS)


# --------------------------------------------------------------------------- fitting


def garipov_lr_factor(epoch: int | float, total_epochs: int) -> float:
    """The reference's schedule: 1 for the first half, linear to 0.01 at 90 %, then 0.01."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


def _lr_factor(schedule: str | Callable, epoch: int, epochs: int) -> float:
    if callable(schedule):
        return float(schedule(epoch, epochs))
    if schedule == "garipov":
        return garipov_lr_factor(epoch, epochs)
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"schedule: {schedule!r} is not one of garipov, constant (or a callable)")


def _write_csv(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def fit_curve(curve: Curve, loader: Any, *, epochs: int, lr: float, momentum: float = 0.9, wd: float = 5e-4,
              t_per_batch: int = 1, schedule: str | Callable = "garipov", out_dir: str | Path | None = None,
              resume: bool = True, seed: int = 0, device: Any = None, resume_every: int | None = 200,
              checkpoint_epochs: Sequence[int] = (), meta: dict | None = None,
              log: Callable[[str], None] | None = None):
    """Train the bends of ``curve`` on ``loader`` (a ``DeviceLoader`` or any iterable of (x, y)).

    One t ~ U(0, 1) per minibatch (``t_per_batch`` > 1: several, losses
    averaged); loss = cross-entropy + 0.5 * wd * ||phi(t)||^2 at the sampled
    point; SGD (momentum, weight decay 0) on the bends only; learning rate
    ``lr * factor(epoch)`` set at the start of each epoch (``schedule``
    "garipov": the reference's; "constant"; or a callable (epoch, epochs)).
    BN layers use batch statistics (training mode). With ``out_dir``: per-epoch
    ``metrics.csv``, ``curve_epoch{E}.pt`` for ``checkpoint_epochs``, final
    ``curve.pt`` (io checkpoint format, state = the curve's state dict, meta
    with ``curve: {kind, num_bends}``) and an atomic ``resume.pt`` every
    ``resume_every`` iterations and at each epoch end, so a killed fit
    restarted with ``resume=True`` gives the same bends. Returns the metrics DataFrame.
    """
    import pandas as pd

    if curve.num_bends < 3:
        raise ConfigError(f"fit_curve: a {curve.kind} with {curve.num_bends} control points has no bend to train")
    if epochs < 1:
        raise ConfigError(f"epochs: must be >= 1, got {epochs}")
    if t_per_batch < 1:
        raise ConfigError(f"t_per_batch: must be >= 1, got {t_per_batch}")
    if device is not None:
        curve.to(_resolve_device(device))
    dev = _curve_device(curve)
    out = Path(out_dir) if out_dir is not None else None
    base_meta = dict(meta or {})
    base_meta.setdefault("curve", {"kind": curve.kind, "num_bends": curve.num_bends})
    base_meta.setdefault("seed", seed)
    # what a resume state / a finished fit must match to be reused
    fit_key = {"kind": curve.kind, "num_bends": curve.num_bends, "epochs": int(epochs), "lr": float(lr),
               "momentum": float(momentum), "wd": float(wd), "t_per_batch": int(t_per_batch),
               "schedule": schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "callable"),
               "seed": int(seed), "batches_per_epoch": _loader_len(loader),
               "start_sum": float(curve.start_params.double().sum()), "end_sum": float(curve.end_params.double().sum())}
    base_meta["fit_key"] = fit_key

    if out is not None and resume and (out / "curve.pt").exists() and (out / "metrics.csv").exists():
        ck = load_checkpoint(out / "curve.pt", map_location=dev)
        if ck["meta"].get("fit_key") == fit_key:
            if ck["model"] is not None:
                curve.load_state_dict(ck["model"])
            if log:
                log(f"{out}: final curve exists, nothing to do")
            return pd.read_csv(out / "metrics.csv")
        if log:
            log(f"{out}: the existing curve.pt was fitted with other settings; fitting again")

    opt = torch.optim.SGD([curve.bends], lr=lr, momentum=momentum, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    rows: list[dict] = []
    epoch, batch, iteration = 0, 0, 0
    acc = {"loss": 0.0, "reg": 0.0, "correct": 0, "n": 0, "wall": 0.0}
    status = "ok"
    st = None
    if out is not None and resume and (out / "resume.pt").exists():
        st = safe_torch_load(out / "resume.pt", map_location="cpu")
        if st.get("fit_key") != json.dumps(fit_key, sort_keys=True):
            if log:
                log(f"{out / 'resume.pt'}: from a fit with other settings; ignored (starting afresh)")
            st = None
    if st is not None:
        curve.load_state_dict({k: v.to(dev) for k, v in st["curve"].items()})
        opt.load_state_dict(st["optimizer"])
        _set_rng_state(st["rng"], gen)
        epoch, batch, iteration = int(st["epoch"]), int(st["batch"]), int(st["iteration"])
        acc = dict(st["acc"])
        rows = json.loads(st["rows"])
        status = st.get("status", "ok")
        if log:
            log(f"resumed from {out / 'resume.pt'} at epoch {epoch}, batch {batch}")

    def save_resume():
        if out is None:
            return
        atomic_torch_save({"curve": {k: v.detach().cpu() for k, v in curve.state_dict().items()},
                           "optimizer": opt.state_dict(), "rng": _rng_state(gen), "epoch": epoch,
                           "batch": batch, "iteration": iteration, "acc": acc, "rows": json.dumps(rows),
                           "status": status, "fit_key": json.dumps(fit_key, sort_keys=True)}, out / "resume.pt")

    def save_curve(path: Path, ep: int):
        m = {**base_meta, "epoch": ep, "iteration": iteration, "status": status}
        save_checkpoint(path, curve.state_dict() if status == "ok" else None, m)

    curve.train()
    module = curve.module
    while epoch < epochs and status == "ok":
        lr_e = lr * _lr_factor(schedule, epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = lr_e
        t0 = time.perf_counter()
        for x, y in _batches(loader, epoch, batch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            ts = torch.rand(t_per_batch, generator=gen, dtype=torch.float64).tolist()
            opt.zero_grad(set_to_none=True)
            total, ce_sum, reg_sum = 0.0, 0.0, 0.0
            for t in ts:
                pvec = curve.flat_params_at(t)
                state = curve.layout.state(pvec, curve.flat_buffers_at(t), curve._others())
                logits = functional_call(module, state, (x,))
                ce = F.cross_entropy(logits.float(), y)
                reg = 0.5 * wd * pvec.pow(2).sum()
                loss = (ce + reg) / len(ts)
                loss.backward()
                ce_sum += ce.item()
                reg_sum += reg.item()
                total += loss.item()
                with torch.no_grad():
                    acc["correct"] += int((logits.argmax(1) == y).sum().item())
            if not math.isfinite(total) or not bool(torch.isfinite(curve.bends.grad).all()):
                status = "diverged"
                if log:
                    log(f"diverged at epoch {epoch}, batch {batch} (loss {total})")
                break
            opt.step()
            n = y.numel()
            acc["loss"] += ce_sum / len(ts) * n
            acc["reg"] += reg_sum / len(ts) * n
            acc["n"] += n * len(ts)
            batch += 1
            iteration += 1
            if resume_every and iteration % resume_every == 0:
                acc["wall"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_resume()
        acc["wall"] += time.perf_counter() - t0
        nimg = acc["n"] / t_per_batch if acc["n"] else 0
        rows.append({"epoch": epoch + 1, "iteration": iteration, "lr": lr_e,
                     "train_loss": acc["loss"] / nimg if nimg else float("nan"),
                     "train_acc": acc["correct"] / acc["n"] if acc["n"] else float("nan"),
                     "reg": acc["reg"] / nimg if nimg else float("nan"),
                     "wall_s": acc["wall"], "images_per_s": nimg / acc["wall"] if acc["wall"] > 0 else float("nan"),
                     "status": status})
        if log:
            r = rows[-1]
            log(f"epoch {r['epoch']}/{epochs} lr={lr_e:.4g} train_loss={r['train_loss']:.4f} "
                f"train_acc={r['train_acc']:.4f} reg={r['reg']:.4f} {r['wall_s']:.1f}s")
        epoch += 1
        batch = 0
        acc = {"loss": 0.0, "reg": 0.0, "correct": 0, "n": 0, "wall": 0.0}
        if out is not None:
            _write_csv(pd.DataFrame(rows), out / "metrics.csv")
            if epoch in set(checkpoint_epochs) and status == "ok":
                save_curve(out / f"curve_epoch{epoch}.pt", epoch)
            save_resume()
    df = pd.DataFrame(rows)
    if out is not None:
        save_curve(out / "curve.pt", epoch)
        _write_csv(df, out / "metrics.csv")
        (out / "resume.pt").unlink(missing_ok=True)  # the final outputs exist: never needed again
    return df


# --------------------------------------------------------------------------- curve checkpoints


def save_curve(path: str | Path, curve: Curve, meta: dict | None = None) -> None:
    m = dict(meta or {})
    m["curve"] = {"kind": curve.kind, "num_bends": curve.num_bends}
    m.setdefault("status", "ok")
    save_checkpoint(path, curve.state_dict(), m)


def load_curve(path: str | Path, module: nn.Module, map_location: Any = "cpu") -> Curve:
    """Rebuild a :class:`Curve` saved by :func:`fit_curve` / :func:`save_curve` on ``module``."""
    ck = load_checkpoint(path, map_location=map_location)
    info = ck["meta"].get("curve")
    if not info:
        raise CurveError(f"{path}: not a curve checkpoint (meta has no 'curve' entry)")
    if ck["model"] is None:
        raise CurveError(f"{path}: the curve diverged (no weights)")
    sd = module.state_dict()
    curve = Curve(module, sd, sd, kind=info["kind"], num_bends=info["num_bends"])
    want = curve.state_dict()
    for k, v in ck["model"].items():
        if k in want and tuple(v.shape) != tuple(want[k].shape):
            raise CurveError(f"{path}: key {k!r} has shape {tuple(v.shape)}, this architecture needs "
                             f"{tuple(want[k].shape)} (wrong model?)")
    try:
        curve.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise CurveError(f"{path}: does not fit the model: {str(exc).splitlines()[0]}") from exc
    return curve


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


def flat_parameters(module_or_layout: nn.Module | _Layout, state: Mapping[str, torch.Tensor],
                    dtype=torch.float64) -> torch.Tensor:
    """Floating parameters of ``state`` (by the module's names, in its order) as one vector."""
    layout = module_or_layout if isinstance(module_or_layout, _Layout) else _Layout(module_or_layout)
    layout.check(state, "state")
    return layout.flat_params(state, dtype=dtype)


def plane_basis(module: nn.Module, w1: Mapping, w2: Mapping, theta: Mapping) -> PlaneBasis:
    layout = _Layout(module)
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


@torch.no_grad()
def plane_grid(module: nn.Module, w1: Mapping, w2: Mapping, theta: Mapping, train_loader: Any,
               test_loader: Any = None, *, grid_points: int | tuple[int, int] = 21,
               margin: float | tuple[float, float, float, float] = 0.2, bn_loader: Any = None,
               bn_batches: int | None = None, checkpoints: Mapping[str, Mapping] | None = None,
               log: Callable[[str], None] | None = None):
    """Loss/accuracy on a grid over the plane through w1, w2, theta, and projections onto it.

    Grid: ``grid_points`` (n or (n_u, n_v)) points per axis spanning the
    anchors' extent plus ``margin`` (one value or (left, right, bottom, top))
    times that extent on each side (Garipov's default: 21 x 21, 0.2).
    BN statistics recomputed at every grid point (``bn_loader``, default
    ``train_loader``). Buffers other than BN statistics come from w1.
    Returns ``(grid_df, points_df)`` with the DESIGN.md columns;
    ``checkpoints`` (label -> state dict) are projected too. The anchors'
    coordinates are exact (w1 = (0, 0), w2 = (||w2 - w1||, 0)), so with
    ``margin=0`` the grid's corners are the anchors' bounding box and w1 is a
    grid point, on any machine, whenever the bend's u coordinate is >= 0.
    """
    import pandas as pd

    basis = plane_basis(module, w1, w2, theta)
    layout = _Layout(module)
    device = next((v.device for v in module.state_dict().values()), torch.device("cpu"))
    anchors = {"w1": w1, "w2": w2, "bend": theta}
    points = []
    for label, sd in list(anchors.items()) + list((checkpoints or {}).items()):
        layout.check(sd, label)
        if label in basis.anchors:
            (pu, pv), dist, rel = basis.anchors[label], 0.0, 0.0
        else:
            pu, pv, dist, rel = basis.coords(layout.flat_params(sd, dtype=torch.float64))
        points.append({"label": label, "u": pu, "v": pv, "distance": dist, "rel_distance": rel})
    nu, nv = (grid_points, grid_points) if isinstance(grid_points, int) else grid_points
    ml, mr, mb, mt = (margin,) * 4 if isinstance(margin, (int, float)) else margin
    us = [p["u"] for p in points[:3]]
    vs = [p["v"] for p in points[:3]]
    u_lo, u_hi, v_lo, v_hi = min(us), max(us), min(vs), max(vs)
    du, dv = u_hi - u_lo, v_hi - v_lo
    ugrid = np.linspace(u_lo - ml * du, u_hi + mr * du, nu)
    vgrid = np.linspace(v_lo - mb * dv, v_hi + mt * dv, nv)
    base_buf = layout.flat_fbufs(w1, device=device)
    others = {k: w1[k].to(device) for k in layout.other_keys}
    rows = []
    for b in vgrid:
        for a in ugrid:
            pvec = basis.point(float(a), float(b)).to(device=device, dtype=layout.dtype)
            state = layout.state(pvec, base_buf.clone(), others)
            m = _point_metrics(module, state, train_loader, test_loader, bn_loader, bn_batches, device)
            rows.append({"u": float(a), "v": float(b), **m})
            if log:
                log(f"u={a:.3f} v={b:.3f} train_loss={m['train_loss']:.4f} test_loss={m['test_loss']:.4f}")
    return pd.DataFrame(rows, columns=GRID_COLUMNS), pd.DataFrame(points, columns=POINT_COLUMNS)


# --------------------------------------------------------------------------- CLI


def _resolve_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    try:
        from .devices import resolve_device  # type: ignore

        return torch.device(resolve_device(device))
    except ImportError:
        if device in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)


def _load_spec_file(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--spec: {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        spec = yaml.safe_load(text)
    else:
        spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ConfigError(f"--spec: {p} must hold a mapping")
    return spec


def _data_spec(args) -> dict:
    spec = _load_spec_file(args.spec)
    data = dict(spec.get("data", spec) if "data" in spec else spec)
    for key, val in (("name", args.data), ("root", args.root), ("cache_dir", args.cache_dir),
                     ("train_per_class", args.train_per_class), ("test_per_class", args.test_per_class),
                     ("subset_seed", args.subset_seed)):
        if val is not None:
            data[key] = val
    if "name" not in data:
        raise ConfigError("data: no data set name (give --data or a --spec file with data.name)")
    return data


def _loaders(data: dict, device, batch_size: int, augment: bool, eval_batch_size: int, seed: int,
             eval_train_limit: int | None = None):
    """(fit loader (shuffled, maybe augmented), unaugmented train loader, test loader).

    The subsets are those of the training runs (``data.load_subsets``); the
    unaugmented train loader holds the first ``eval_train_limit`` subset images.
    """
    from .data import DeviceLoader, load_subsets  # type: ignore

    xtr, ytr, xte, yte, info = load_subsets(data)
    kw = dict(mean=info["mean"], std=info["std"], device=device)
    fit = DeviceLoader(xtr, ytr, batch_size, augment=augment, shuffle=True, seed=seed, drop_last=False, **kw)
    if eval_train_limit:
        xtr, ytr = xtr[:eval_train_limit], ytr[:eval_train_limit]
    tr = DeviceLoader(xtr, ytr, eval_batch_size, augment=False, shuffle=False, seed=0, drop_last=False, **kw)
    te = DeviceLoader(xte, yte, eval_batch_size, augment=False, shuffle=False, seed=0, drop_last=False, **kw)
    return fit, tr, te


def _load_endpoint(path: str) -> dict:
    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    if ck["model"] is None or meta.get("status") == "diverged":
        return {"diverged": True, "meta": meta, "model": None, "path": path}
    return {"diverged": False, "meta": meta, "model": ck["model"], "path": path}


def _build_module(meta: dict, path: str, device) -> nn.Module:
    from .models import model_from_checkpoint  # type: ignore

    return model_from_checkpoint({"meta": meta, "model": None}, path).to(device)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="JSON/YAML data spec (a run spec's 'data' block or a whole run spec)")
    p.add_argument("--data", help="data set name (overrides the spec)")
    p.add_argument("--root")
    p.add_argument("--cache-dir")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--subset-seed", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--eval-train-images", type=int, default=None,
                   help="evaluate training loss on the first N (subset) training images only")
    p.add_argument("--bn-batches", type=int, default=None, help="BN recompute on this many batches (default: all)")
    p.add_argument("--quiet", action="store_true")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m closerlook.curves", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit a curve between two checkpoints")
    f.add_argument("--start", required=True)
    f.add_argument("--end", required=True)
    f.add_argument("--out", required=True, help="output folder (curve.pt, metrics.csv, resume.pt)")
    f.add_argument("--kind", default="bezier", choices=["bezier", "polychain"])
    f.add_argument("--num-bends", type=int, default=3)
    f.add_argument("--epochs", type=int, required=True)
    f.add_argument("--lr", type=float, default=0.015)
    f.add_argument("--momentum", type=float, default=0.9)
    f.add_argument("--wd", type=float, default=5e-4)
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--t-per-batch", type=int, default=1)
    f.add_argument("--schedule", default="garipov", choices=["garipov", "constant"])
    f.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-resume", action="store_true")
    f.add_argument("--checkpoint-epochs", type=int, nargs="*", default=[])
    f.add_argument("--resume-every", type=int, default=200, help="iterations between resume states (and epoch ends)")
    _common_args(f)
    e = sub.add_parser("evaluate", help="evaluate a fitted curve or the straight line")
    e.add_argument("--start", required=True)
    e.add_argument("--end", required=True)
    e.add_argument("--curve", help="curve.pt from 'fit'; omit to evaluate the straight line")
    e.add_argument("--out", required=True, help="output CSV")
    e.add_argument("--points", type=int, default=61)
    _common_args(e)
    p = sub.add_parser("plane", help="loss plane through w1, w2 and a bend, with projections")
    p.add_argument("--w1", required=True)
    p.add_argument("--w2", required=True)
    p.add_argument("--bend", required=True, help="curve.pt (its first bend) or a model checkpoint")
    p.add_argument("--project", nargs="*", default=[], help="checkpoints to project (label = file stem)")
    p.add_argument("--labels", nargs="*", default=None, help="labels of the --project checkpoints (default: file stems)")
    p.add_argument("--out-dir", required=True, help="writes grid.csv and points.csv")
    p.add_argument("--grid-points", type=int, nargs="+", default=[21])
    p.add_argument("--margin", type=float, nargs="+", default=[0.2])
    _common_args(p)
    return ap


def _write_diverged_plane(out_dir: Path, labels: list[str]) -> None:
    import pandas as pd

    nan = float("nan")
    g = pd.DataFrame([{c: nan for c in GRID_COLUMNS}], columns=GRID_COLUMNS)
    g["status"] = "diverged"
    pts = pd.DataFrame([{"label": lab, "u": nan, "v": nan, "distance": nan, "rel_distance": nan} for lab in labels],
                       columns=POINT_COLUMNS)
    pts["status"] = "diverged"
    _write_csv(g, out_dir / "grid.csv")
    _write_csv(pts, out_dir / "points.csv")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        return _main(args, log)
    except CloserlookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args, log) -> int:
    import pandas as pd

    device = _resolve_device(args.device)
    if args.cmd == "fit":
        a, b = _load_endpoint(args.start), _load_endpoint(args.end)
        out = Path(args.out)
        if a["diverged"] or b["diverged"]:
            meta = {"status": "diverged", "curve": {"kind": args.kind, "num_bends": args.num_bends},
                    "start": args.start, "end": args.end}
            save_checkpoint(out / "curve.pt", None, meta)
            _write_csv(pd.DataFrame([{"epoch": 0, "iteration": 0, "lr": float("nan"), "train_loss": float("nan"),
                                      "train_acc": float("nan"), "status": "diverged"}]), out / "metrics.csv")
            log("an endpoint diverged: wrote outputs marked diverged")
            return 0
        module = _build_module(a["meta"], args.start, device)
        curve = Curve(module, a["model"], b["model"], kind=args.kind, num_bends=args.num_bends).to(device)
        data = _data_spec(args)
        augment = args.augment if args.augment is not None else bool(_load_spec_file(args.spec).get("augment", False))
        fit_loader, _, _ = _loaders(data, device, args.batch_size, augment, args.eval_batch_size, args.seed)
        meta = {"run": f"curve:{Path(args.start).stem}-{Path(args.end).stem}", "model": a["meta"].get("model"),
                "data": a["meta"].get("data"), "start": str(args.start), "end": str(args.end),
                "fit": {"epochs": args.epochs, "lr": args.lr, "wd": args.wd, "momentum": args.momentum,
                        "batch_size": args.batch_size, "t_per_batch": args.t_per_batch, "schedule": args.schedule,
                        "augment": augment, "data": data}}
        fit_curve(curve, fit_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum, wd=args.wd,
                  t_per_batch=args.t_per_batch, schedule=args.schedule, out_dir=out, resume=not args.no_resume,
                  seed=args.seed, checkpoint_epochs=args.checkpoint_epochs, meta=meta, log=log,
                  resume_every=args.resume_every)
        return 0
    if args.cmd == "evaluate":
        a, b = _load_endpoint(args.start), _load_endpoint(args.end)
        label = "curve" if args.curve else "line"
        cdiv = False
        if args.curve:
            cm = load_checkpoint(args.curve)["meta"]
            cdiv = cm.get("status") == "diverged"
        if a["diverged"] or b["diverged"] or cdiv:
            _write_csv(diverged_path_table(args.points, label), Path(args.out))
            log("an endpoint (or the curve) diverged: wrote a table marked diverged")
            return 0
        module = _build_module(a["meta"], args.start, device)
        if args.curve:
            path = load_curve(args.curve, module, map_location=device)
            _check_curve_endpoints(path, a["model"], b["model"], args)
        else:
            path = line(module, a["model"], b["model"])
        path.to(device)
        data = _data_spec(args)
        _, tr, te = _loaders(data, device, args.eval_batch_size, False, args.eval_batch_size, 0,
                             args.eval_train_images)
        df = evaluate_path(path, tr, te, ts=args.points, bn_batches=args.bn_batches, log=log)
        _write_csv(df, Path(args.out))
        return 0
    if args.cmd == "plane":
        out = Path(args.out_dir)
        a, b = _load_endpoint(args.w1), _load_endpoint(args.w2)
        plabels = [Path(p).stem for p in args.project] if args.labels is None else list(args.labels)
        if len(plabels) != len(args.project):
            raise ConfigError(f"--labels: {len(plabels)} labels for {len(args.project)} --project checkpoints")
        if len(set(plabels)) != len(plabels) or set(plabels) & {"w1", "w2", "bend"}:
            raise ConfigError(f"--labels: labels of projected checkpoints must be unique and not w1/w2/bend: {plabels}")
        labels = ["w1", "w2", "bend"] + plabels
        bend_ck = load_checkpoint(args.bend)
        bmeta = bend_ck.get("meta") or {}
        projected = {lab: _load_endpoint(p) for lab, p in zip(plabels, args.project)}
        if (a["diverged"] or b["diverged"] or bend_ck["model"] is None or bmeta.get("status") == "diverged"
                or any(v["diverged"] for v in projected.values())):
            _write_diverged_plane(out, labels)
            log("an input diverged: wrote plane tables marked diverged")
            return 0
        module = _build_module(a["meta"], args.w1, device)
        if bmeta.get("curve"):
            curve = load_curve(args.bend, module, map_location=device)
            if curve.num_bends < 3:
                raise CurveError(f"{args.bend}: a curve without bends")
            theta = curve.control_points()[1]
        else:
            theta = bend_ck["model"]
        gp = args.grid_points[0] if len(args.grid_points) == 1 else tuple(args.grid_points[:2])
        mg = args.margin[0] if len(args.margin) == 1 else tuple(args.margin)
        if not isinstance(mg, float) and len(mg) != 4:
            raise ConfigError("--margin: give one value or four (left right bottom top)")
        data = _data_spec(args)
        _, tr, te = _loaders(data, device, args.eval_batch_size, False, args.eval_batch_size, 0,
                             args.eval_train_images)
        grid, pts = plane_grid(module, a["model"], b["model"], theta, tr, te, grid_points=gp, margin=mg,
                               bn_batches=args.bn_batches, checkpoints={k: v["model"] for k, v in projected.items()},
                               log=log)
        _write_csv(grid, out / "grid.csv")
        _write_csv(pts, out / "points.csv")
        return 0
    raise ConfigError(f"unknown command {args.cmd!r}")


def _check_curve_endpoints(curve: Curve, start: Mapping, end: Mapping, args) -> None:
    """A curve checkpoint must connect the given endpoints (exactly)."""
    lay = curve.layout
    for label, sd, vec in (("--start", start, curve.start_params), ("--end", end, curve.end_params)):
        lay.check(sd, label)
        if not torch.equal(lay.flat_params(sd, device=vec.device), vec):
            raise CurveError(f"{args.curve}: its {label[2:]} point differs from {getattr(args, label[2:])}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
