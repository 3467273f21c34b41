"""Mode connectivity: curves between two networks and their fitting (the model, save and load in
:mod:`closerlook.curve_model`, re-exported here).

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

from . import resume as resumable  # (`resume` is fit_curve's flag)
from .data import batches_of
from .devices import resolve_device
from .io import ConfigError, load_checkpoint, save_checkpoint
from .curve_steps import T_SAMPLINGS, batch_gradient, point_loss, sample_ts  # noqa: F401  (re-exported)
from .settings_types import StopRule
from .tables import write_csv
from .defaults import FIT_DEFAULTS, STOP_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)
# the curve model (re-exported: closerlook.curves.X keeps working for every name)
from .curve_model import (KINDS, Curve, CurveError, Layout, bend_of, bezier_coefficients, check_t,  # noqa: F401
                          line, load_curve, polychain_coefficients, save_curve)
from .defaults import FIT_SCHEDULES as SCHEDULES  # (torch-free owner)


# --------------------------------------------------------------------------- fitting


def garipov_lr_factor(epoch: int | float, total_epochs: int) -> float:
    """The reference's schedule: 1 for the first half, linear to 0.01 at 90 %, then 0.01."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


PLATEAU_FACTOR = 0.5   # "plateau": lr x this at every stopping-rule check that does not improve (docs/curve-fitting.md)


def plateau_lr_factor(rows: Sequence[Mapping], patience: int = 1) -> float:
    """Decay on plateau: ``PLATEAU_FACTOR`` to the number of times so far that ``patience`` consecutive
    stopping-rule checks did not improve on the best by more than ``min_delta`` (1: every such check; a
    larger value lets a noisy measure wander before the lr falls). A function of the saved rows: a resumed
    fit gets the same lr."""
    misses = sum(1 for r in rows if math.isfinite(float(r.get("stop_max_loss", float("nan"))))
                 and int(r.get("stop_wait", 0)) > 0 and int(r.get("stop_wait", 0)) % int(patience) == 0)
    return PLATEAU_FACTOR ** misses


def _lr_factor(schedule: str | Callable, epoch: int, epochs: int, rows: Sequence[Mapping] = (),
               plateau_patience: int = 1) -> float:
    if schedule == "plateau":
        return plateau_lr_factor(rows, plateau_patience)
    if callable(schedule):
        return float(schedule(epoch, epochs))
    if schedule == "garipov":
        return garipov_lr_factor(epoch, epochs)
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)} (or a callable)")


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def fit_curve(curve: Curve, loader: Any, *, epochs: int, lr: float, momentum: float = FIT_DEFAULTS["momentum"],
              wd: float = FIT_DEFAULTS["weight_decay"], t_per_batch: int = 1, schedule: str | Callable = "garipov",
              t_sampling: str = "uniform", t_split: bool = False,
              out_dir: str | Path | None = None, resume: bool = True, seed: int = 0, device: Any = None,
              resume_every: int | None = FIT_DEFAULTS["resume_every"], checkpoint_epochs: Sequence[int] = (),
              meta: dict | None = None, log: Callable[[str], None] | None = None,
              stop: Mapping | None = None, monitor: Callable[["Curve"], float] | None = None,
              plateau_patience: int = FIT_DEFAULTS["plateau_patience"]):
    """Train the bends of ``curve`` on ``loader`` (a ``DeviceLoader`` or any iterable of (x, y)).

    One t ~ U(0, 1) per minibatch (``t_per_batch`` > 1: several, losses
    averaged; ``t_sampling`` "stratified": one t in each 1/k of [0, 1]; ``t_split``: the batch cut
    into ``t_per_batch`` slices, one t each, so a step costs one t's gradient evaluations); loss = cross-entropy + 0.5 * wd * ||phi(t)||^2 at the sampled
    point; SGD (momentum, weight decay 0) on the bends only; learning rate
    ``lr * factor(epoch)`` set at the start of each epoch (``schedule``
    "garipov": the reference's, scaled to ``epochs``; "constant"; "plateau": x0.5 at every stopping-rule
    check that does not improve, or after each ``plateau_patience`` consecutive ones, so its shape does not
    depend on the cap; or a callable (epoch, epochs)).
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
    if int(plateau_patience) < 1:
        raise ConfigError(f"plateau_patience: must be >= 1, got {plateau_patience}")
    if t_sampling not in T_SAMPLINGS:
        raise ConfigError(f"t_sampling: {t_sampling!r} is not one of {', '.join(T_SAMPLINGS)}")
    if device is not None:
        curve.to(resolve_device(device))
    out = Path(out_dir) if out_dir is not None else None
    say = log or (lambda _m: None)
    # what a resume state / a finished fit must match to be reused
    fit_key = {"kind": curve.kind, "num_bends": curve.num_bends, "epochs": int(epochs), "lr": float(lr),
               "momentum": float(momentum), "wd": float(wd), "t_per_batch": int(t_per_batch),
               **({"t_sampling": t_sampling, "t_split": bool(t_split)} if (t_sampling, bool(t_split)) != ("uniform", False)
                  else {}),
               "schedule": schedule if isinstance(schedule, str) else getattr(schedule, "__name__", "callable"),
               **({"plateau_patience": int(plateau_patience)} if int(plateau_patience) != 1 else {}),
               "seed": int(seed), "batches_per_epoch": _loader_len(loader),
               "start_sum": float(curve.start_params.double().sum()), "end_sum": float(curve.end_params.double().sum())}
    rule = _stop_rule(stop, monitor)
    if schedule == "plateau" and rule is None:
        raise ConfigError("schedule: 'plateau' decays the lr at the stopping rule's checks; it needs the rule (stop)")
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
        lr_e = lr * _lr_factor(schedule, fit.epoch, epochs, fit.rows, int(plateau_patience))
        for g in fit.opt.param_groups:
            g["lr"] = lr_e
        fit.run_epoch(loader, wd, t_per_batch, resume_every, say, t_sampling, bool(t_split))
        fit.end_epoch(lr_e, epochs, t_per_batch, set(checkpoint_epochs), say)
    if rule is not None and fit.status == "ok" and not fit.stopped:
        say(f"curve cap reached: the stopping rule had not fired after {epochs} epochs (raise the curve's epochs)")
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
    rule = dict(StopRule.of(stop))
    if monitor is None:
        raise ConfigError("stop: a stopping rule needs a monitor (curve -> max loss over the rule's t values)")
    rule["ts"] = [check_t(t) for t in rule["ts"]]
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
        return {"loss": 0.0, "reg": 0.0, "correct": 0, "n": 0, "images": 0, "wall": 0.0}

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

    def run_epoch(self, loader: Any, wd: float, t_per_batch: int, resume_every: int | None, say,
                  t_sampling: str = "uniform", t_split: bool = False) -> None:
        curve, dev = self.curve, self.curve.device
        t0 = time.perf_counter()
        for x, y in batches_of(loader, self.epoch, self.batch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            self.opt.zero_grad(set_to_none=True)
            st = batch_gradient(curve, x, y, sample_ts(t_per_batch, t_sampling, self.gen), wd, t_split)
            if not math.isfinite(st["loss"]) or not bool(torch.isfinite(curve.bends.grad).all()):
                self.status = "diverged"
                say(f"diverged at epoch {self.epoch}, batch {self.batch} (loss {st['loss']})")
                break
            self.opt.step()
            for k in ("ce", "reg", "correct", "n"):
                self.acc[k if k != "ce" else "loss"] += st[k]
            self.acc["images"] = self.acc.get("images", 0) + y.numel()
            self.batch += 1
            self.iteration += 1
            if resume_every and self.iteration % resume_every == 0:
                self.acc["wall"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_resume()
        self.acc["wall"] += time.perf_counter() - t0

    def end_epoch(self, lr_e: float, epochs: int, t_per_batch: int, checkpoint_epochs: set, say) -> None:
        a, nan = self.acc, float("nan")
        n, nimg = a["n"], a.get("images", 0)   # image evaluations (images x their t values), images
        r = {"epoch": self.epoch + 1, "iteration": self.iteration, "lr": lr_e,
             "train_loss": a["loss"] / n if n else nan, "train_acc": a["correct"] / n if n else nan,
             "reg": a["reg"] / n if n else nan, "wall_s": a["wall"],
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


# --------------------------------------------------------------------------- CLI


if __name__ == "__main__":  # pragma: no cover  (`python -m closerlook.curves`: the command line is in closerlook.cli)
    from closerlook.cli import curves_main

    sys.exit(curves_main())
