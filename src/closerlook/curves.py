"""Mode connectivity: curves between two networks, their fitting, save and load.

Evaluation along a curve and the loss plane live in :mod:`closerlook.landscape`.

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

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import resume as resumable  # (`resume` is fit_curve's flag)
from .data import batches_of
from .devices import resolve_device
from .io import CloserlookError, ConfigError, load_checkpoint, save_checkpoint
from .tables import write_csv
from .defaults import FIT_DEFAULTS, STOP_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)

KINDS = ("bezier", "polychain", "line")


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


def check_t(t: Any) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"t must be a scalar, got a tensor of shape {tuple(t.shape)}")
        t = t.item()
    t = float(t)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"t must lie in [0, 1], got {t}")
    return t


# --------------------------------------------------------------------------- layout


class Layout:
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
                 kind: str = FIT_DEFAULTS["kind"], num_bends: int = FIT_DEFAULTS["num_bends"]):
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
        self.layout = layout = Layout(module)
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
        t = check_t(t)
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
        t = check_t(t)
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

    @property
    def device(self) -> torch.device:
        return self.start_params.device

    def check_endpoints(self, start: Mapping, end: Mapping, where: str = "curve", start_label: str = "start",
                        end_label: str = "end") -> None:
        """This curve must connect exactly ``start`` and ``end`` (e.g. a curve.pt against the checkpoints
        it is evaluated between); CurveError naming ``where`` and the endpoint otherwise."""
        for side, sd, vec, label in (("start", start, self.start_params, start_label),
                                     ("end", end, self.end_params, end_label)):
            self.layout.check(sd, label)
            if not torch.equal(self.layout.flat_params(sd, device=vec.device), vec):  # exact: the same tensors
                raise CurveError(f"{where}: its {side} point differs from {label}")


def line(module: Any, start: Any, end: Any) -> Curve:
    """The straight path (1 - t) start + t end, with the :class:`Curve` interface (kind "line").

    ``line(module, start, end)``; the order ``line(start, end, module)`` is accepted too.
    """
    if not isinstance(module, nn.Module) and isinstance(end, nn.Module):
        module, start, end = end, module, start
    if not isinstance(module, nn.Module):
        raise TypeError("line(module, start, end): a module is needed to evaluate the path")
    return Curve(module, start, end, kind="line")


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


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def fit_curve(curve: Curve, loader: Any, *, epochs: int, lr: float, momentum: float = FIT_DEFAULTS["momentum"],
              wd: float = FIT_DEFAULTS["weight_decay"], t_per_batch: int = 1, schedule: str | Callable = "garipov",
              out_dir: str | Path | None = None, resume: bool = True, seed: int = 0, device: Any = None,
              resume_every: int | None = FIT_DEFAULTS["resume_every"], checkpoint_epochs: Sequence[int] = (),
              meta: dict | None = None, log: Callable[[str], None] | None = None,
              stop: Mapping | None = None, monitor: Callable[["Curve"], float] | None = None):
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

    ``stop`` (optional, :data:`STOP_DEFAULTS` keys + ``min_delta``) with ``monitor`` (curve -> the
    max loss over the rule's fixed t values on its fixed subset): the fit ends early once the
    monitored value has not fallen more than ``min_delta`` below its best for ``patience``
    checks; the rows then carry ``stop_max_loss``, ``stop_best``, ``stop_wait``, ``stopped``.
    The decision is a function of the saved rows, so a resumed fit stops where an uninterrupted one does.
    """
    if curve.num_bends < 3:
        raise ConfigError(f"fit_curve: a {curve.kind} with {curve.num_bends} control points has no bend to train")
    if epochs < 1:
        raise ConfigError(f"epochs: must be >= 1, got {epochs}")
    if t_per_batch < 1:
        raise ConfigError(f"t_per_batch: must be >= 1, got {t_per_batch}")
    if device is not None:
        curve.to(resolve_device(device))
    out = Path(out_dir) if out_dir is not None else None
    say = log or (lambda _m: None)
    # what a resume state / a finished fit must match to be reused
    fit_key = {"kind": curve.kind, "num_bends": curve.num_bends, "epochs": int(epochs), "lr": float(lr),
               "momentum": float(momentum), "wd": float(wd), "t_per_batch": int(t_per_batch),
               "schedule": schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "callable"),
               "seed": int(seed), "batches_per_epoch": _loader_len(loader),
               "start_sum": float(curve.start_params.double().sum()), "end_sum": float(curve.end_params.double().sum())}
    rule = _stop_rule(stop, monitor)
    if rule is not None:
        fit_key["stop"] = rule
    base_meta = {**(meta or {})}
    base_meta.setdefault("curve", {"kind": curve.kind, "num_bends": curve.num_bends})
    base_meta.setdefault("seed", seed)
    base_meta["fit_key"] = fit_key
    if out is not None and resume:
        done = _finished_fit(curve, out, fit_key, say)
        if done is not None:
            return done
    fit = _Fit(curve, torch.optim.SGD([curve.bends], lr=lr, momentum=momentum, weight_decay=0.0),
               torch.Generator().manual_seed(int(seed)), out, resumable.fingerprint(fit_key), base_meta,
               rule, monitor)
    torch.manual_seed(int(seed))
    if out is not None and resume:
        fit.restore(say)
    curve.train()
    while fit.epoch < epochs and fit.status == "ok" and not fit.stopped:
        lr_e = lr * _lr_factor(schedule, fit.epoch, epochs)
        for g in fit.opt.param_groups:
            g["lr"] = lr_e
        fit.run_epoch(loader, wd, t_per_batch, resume_every, say)
        fit.end_epoch(lr_e, epochs, t_per_batch, set(checkpoint_epochs), say)
    df = pd.DataFrame(fit.rows)
    if out is not None:
        fit.save_curve(out / "curve.pt")
        write_csv(df, out / "metrics.csv")
        (out / "resume.pt").unlink(missing_ok=True)  # the final outputs exist: never needed again
    return df


def _stop_rule(stop: Mapping | None, monitor: Callable | None) -> dict | None:
    """The stopping rule completed with :data:`STOP_DEFAULTS` (checked), or None when off."""
    if stop is None:
        return None
    unknown = sorted(set(stop) - set(STOP_DEFAULTS) - {"min_delta"})
    if unknown:
        raise ConfigError(f"stop: unknown key(s) {', '.join(unknown)} (known: min_delta, {', '.join(STOP_DEFAULTS)})")
    rule = {**STOP_DEFAULTS, **stop}
    if not isinstance(rule.get("min_delta"), (int, float)) or isinstance(rule["min_delta"], bool) \
            or not math.isfinite(rule["min_delta"]) or rule["min_delta"] < 0:
        raise ConfigError(f"stop.min_delta: must be a number >= 0 (nats), got {rule.get('min_delta')!r}")
    for k in ("patience", "every", "images"):
        if isinstance(rule[k], bool) or not isinstance(rule[k], int) or rule[k] < 1:
            raise ConfigError(f"stop.{k}: must be an integer >= 1, got {rule[k]!r}")
    if monitor is None:
        raise ConfigError("stop: a stopping rule needs a monitor (curve -> max loss over the rule's t values)")
    rule["ts"] = [check_t(t) for t in rule["ts"]]
    if not rule["ts"]:
        raise ConfigError("stop.ts: needs at least one t value")
    rule["min_delta"] = float(rule["min_delta"])
    return rule


def stop_update(best: float, wait: int, value: float, min_delta: float) -> tuple[float, int]:
    """One check of the stopping rule: (best, checks since the best) after ``value``. A value counts as
    better only when it lies more than ``min_delta`` below the best so far (Keras EarlyStopping's
    rule); a non-finite value never does."""
    if math.isfinite(value) and value < best - min_delta:
        return value, 0
    return best, wait + 1


def _finished_fit(curve: Curve, out: Path, fit_key: dict, say) -> pd.DataFrame | None:
    """The metrics of a finished fit with these settings (its bends loaded into ``curve``), else None."""
    if not ((out / "curve.pt").exists() and (out / "metrics.csv").exists()):
        return None
    ck = load_checkpoint(out / "curve.pt", map_location=curve.device)
    if resumable.fingerprint(ck["meta"].get("fit_key") or {}) != resumable.fingerprint(fit_key):
        say(f"{out}: the existing curve.pt was fitted with other settings; fitting again")
        return None
    if ck["model"] is not None:
        curve.load_state_dict(ck["model"])
    say(f"{out}: final curve exists, nothing to do")
    return pd.read_csv(out / "metrics.csv")


class _Fit:
    """The state of one curve fit: what resume.pt saves, one epoch of batches, the epoch's metrics row."""

    def __init__(self, curve: Curve, opt, gen: torch.Generator, out: Path | None, key: str, meta: dict,
                 rule: dict | None = None, monitor: Callable | None = None) -> None:
        self.curve, self.opt, self.gen, self.out, self.key, self.meta = curve, opt, gen, out, key, meta
        self.rule, self.monitor = rule, monitor
        self.epoch, self.batch, self.iteration, self.status = 0, 0, 0, "ok"
        self.rows: list[dict] = []
        self.acc = self._fresh_acc()

    @property
    def stopped(self) -> bool:
        return bool(self.rows) and bool(self.rows[-1].get("stopped", False))

    def _check_stop(self, r: dict) -> None:
        """Add the stopping rule's columns to the epoch row ``r`` (a check every ``every`` epochs)."""
        if self.rule is None:
            return
        nan = float("nan")
        prev = self.rows[-1] if self.rows else {}
        best = prev.get("stop_best", nan)
        best, wait = (best if math.isfinite(best) else math.inf), int(prev.get("stop_wait", 0))
        checked = r["epoch"] % self.rule["every"] == 0 and self.status == "ok"
        r["stop_max_loss"] = nan
        if checked:
            r["stop_max_loss"] = float(self.monitor(self.curve))
            self.curve.train()  # the monitor evaluates in eval mode; fitting goes on in training mode
            best, wait = stop_update(best, wait, r["stop_max_loss"], self.rule["min_delta"])
        r["stop_best"], r["stop_wait"] = (best if math.isfinite(best) else nan), wait
        r["stopped"] = bool(checked and wait >= self.rule["patience"])

    @staticmethod
    def _fresh_acc() -> dict:
        return {"loss": 0.0, "reg": 0.0, "correct": 0, "n": 0, "wall": 0.0}

    def restore(self, say) -> None:
        st = resumable.load(self.out / "resume.pt", self.key, say)
        if st is None:
            return
        self.curve.load_state_dict({k: v.to(self.curve.device) for k, v in st["curve"].items()})
        self.opt.load_state_dict(st["optimizer"])
        resumable.set_rng_state(st["rng"], self.gen)
        self.epoch, self.batch, self.iteration = int(st["epoch"]), int(st["batch"]), int(st["iteration"])
        self.acc, self.rows, self.status = dict(st["acc"]), json.loads(st["rows"]), st.get("status", "ok")
        say(f"resumed from {self.out / 'resume.pt'} at epoch {self.epoch}, batch {self.batch}")

    def save_resume(self) -> None:
        if self.out is None:
            return
        resumable.save(self.out / "resume.pt", self.key, {
            "curve": {k: v.detach().cpu() for k, v in self.curve.state_dict().items()},
            "optimizer": self.opt.state_dict(), "rng": resumable.rng_state(self.gen), "epoch": self.epoch,
            "batch": self.batch, "iteration": self.iteration, "acc": self.acc, "rows": json.dumps(self.rows),
            "status": self.status})

    def save_curve(self, path: Path, epoch: int | None = None) -> None:
        m = {**self.meta, "epoch": self.epoch if epoch is None else epoch, "iteration": self.iteration,
             "status": self.status}
        save_checkpoint(path, self.curve.state_dict() if self.status == "ok" else None, m)

    def run_epoch(self, loader: Any, wd: float, t_per_batch: int, resume_every: int | None, say) -> None:
        curve, dev = self.curve, self.curve.device
        t0 = time.perf_counter()
        for x, y in batches_of(loader, self.epoch, self.batch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            ts = torch.rand(t_per_batch, generator=self.gen, dtype=torch.float64).tolist()
            self.opt.zero_grad(set_to_none=True)
            total, ce_sum, reg_sum = 0.0, 0.0, 0.0
            for t in ts:
                pvec = curve.flat_params_at(t)
                logits = functional_call(curve.module, curve.layout.state(pvec, curve.flat_buffers_at(t), curve._others()), (x,))
                ce = F.cross_entropy(logits.float(), y)
                reg = 0.5 * wd * pvec.pow(2).sum()
                loss = (ce + reg) / len(ts)
                loss.backward()
                ce_sum, reg_sum, total = ce_sum + ce.item(), reg_sum + reg.item(), total + loss.item()
                with torch.no_grad():
                    self.acc["correct"] += int((logits.argmax(1) == y).sum().item())
            if not math.isfinite(total) or not bool(torch.isfinite(curve.bends.grad).all()):
                self.status = "diverged"
                say(f"diverged at epoch {self.epoch}, batch {self.batch} (loss {total})")
                break
            self.opt.step()
            n = y.numel()
            self.acc["loss"] += ce_sum / len(ts) * n
            self.acc["reg"] += reg_sum / len(ts) * n
            self.acc["n"] += n * len(ts)
            self.batch += 1
            self.iteration += 1
            if resume_every and self.iteration % resume_every == 0:
                self.acc["wall"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_resume()
        self.acc["wall"] += time.perf_counter() - t0

    def end_epoch(self, lr_e: float, epochs: int, t_per_batch: int, checkpoint_epochs: set, say) -> None:
        a, nan = self.acc, float("nan")
        nimg = a["n"] / t_per_batch if a["n"] else 0
        r = {"epoch": self.epoch + 1, "iteration": self.iteration, "lr": lr_e,
             "train_loss": a["loss"] / nimg if nimg else nan, "train_acc": a["correct"] / a["n"] if a["n"] else nan,
             "reg": a["reg"] / nimg if nimg else nan, "wall_s": a["wall"],
             "images_per_s": nimg / a["wall"] if a["wall"] > 0 else nan, "status": self.status}
        self._check_stop(r)
        self.rows.append(r)
        say(f"epoch {r['epoch']}/{epochs} lr={lr_e:.4g} train_loss={r['train_loss']:.4f} "
            f"train_acc={r['train_acc']:.4f} reg={r['reg']:.4f} {r['wall_s']:.1f}s"
            + (f" stop_max_loss={r['stop_max_loss']:.4f} wait={r['stop_wait']}" if "stop_wait" in r else "")
            + (" -> stopped (no improvement)" if r.get("stopped") else ""))
        self.epoch, self.batch, self.acc = self.epoch + 1, 0, self._fresh_acc()
        if self.out is not None:
            write_csv(pd.DataFrame(self.rows), self.out / "metrics.csv")
            if self.epoch in checkpoint_epochs and self.status == "ok":
                self.save_curve(self.out / f"curve_epoch{self.epoch}.pt", self.epoch)
            self.save_resume()


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


def bend_of(ck: Mapping, path: str, module: nn.Module, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict of a plane's third anchor: the first bend of a curve checkpoint, or a model checkpoint's weights."""
    if not (ck.get("meta") or {}).get("curve"):
        return ck["model"]
    curve = load_curve(path, module, map_location=device)
    if curve.num_bends < 3:
        raise CurveError(f"{path}: a curve without bends")
    return curve.control_points()[1]


# --------------------------------------------------------------------------- CLI


if __name__ == "__main__":  # pragma: no cover  (`python -m closerlook.curves`: the command line is in closerlook.cli)
    from closerlook.cli import curves_main

    sys.exit(curves_main())
