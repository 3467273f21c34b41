"""lambda_max of the training loss measured inside a training run, against the optimiser's stability threshold.

Warmup as sharpness reduction (Kalra & Barkeshli 2024; Cohen et al. 2021, edge of stability): on a
quadratic with curvature lambda, gradient descent with learning rate lr is stable only while
``lr * lambda`` stays below a constant set by the optimiser (:func:`stability_constant`). The trace
records, at configured iterations, the top Ritz value of a few Lanczos steps
(:func:`closerlook.sharpness.lanczos`) on the Hessian of the loss the optimiser sees at that step:

* the current training batch, before the step, BN in train mode, dropout off
  (:func:`closerlook.sharpness.loss_mode`), cross-entropy (distillation is refused);
* restricted to the parameters the step updates (a frozen group's rows and columns are projected out:
  they cannot go unstable); weight decay adds ``weight_decay`` to every eigenvalue of the update's
  Hessian, so ``lr_lambda = lr * (lambda_max + weight_decay)``.

The measurement leaves training untouched (tested: bitwise-equal weights with and without it on a
CPU): parameters enter by value through ``torch.func``, BN running buffers are not touched, the
Lanczos start vector comes from its own generator and the global RNG state is restored anyway.

A Ritz value from k steps is a LOWER bound on lambda_max; ``ritz_residual = ||H q - theta q||`` of
its Ritz vector q bounds how far theta is from SOME eigenvalue (so theta <= lambda_max, and when the
top eigenvalue is well separated, lambda_max <= theta + residual). Both go to the CSV.
"""
from __future__ import annotations

import csv
import io as _io
import math
from typing import Any, Mapping

import numpy as np
import torch

from .io import atomic_write_text
from .stability import TRACE_DEFAULTS, check_trace, measured_at, stability_constant  # noqa: F401 (re-exported)

TRAJECTORY_FILE = "sharpness_trajectory.csv"
COLUMNS = ("iteration", "lr", "lambda_max", "ritz_residual", "weight_decay", "lr_lambda", "constant",
           "threshold", "lambda_min", "loss", "trainable", "lanczos_steps", "hvps", "cpu_s")


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, trainable: Mapping[str, bool],
            tr: Mapping) -> dict:
    """Top Ritz value (and residual), bottom Ritz value and loss of the training-mode Hessian on ``(x, y)``,
    restricted to the ``trainable`` parameters; the global RNG state restored after."""
    from .sharpness import HessianOperator

    state = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        op = HessianOperator(model, state, [(x, y)], mode="train")
        mask = _mask(op, trainable)
        counter = [0]

        def matvec(v: torch.Tensor) -> torch.Tensor:
            counter[0] += 1
            return op.hvp(v * mask) * mask

        theta, resid, low = ritz_top(matvec, op.dim, int(tr["lanczos_steps"]), int(tr["seed"]), mask)
        loss = op.loss()
    return {"lambda_max": theta, "ritz_residual": resid, "lambda_min": low, "loss": loss,
            "trainable": int(mask.sum()), "hvps": counter[0]}


def _mask(op, trainable: Mapping[str, bool]) -> torch.Tensor:
    """1 on the flat coordinates of the parameters the step updates, 0 on frozen ones (float64)."""
    parts = [torch.full((n,), 1.0 if trainable.get(k, True) else 0.0, dtype=torch.float64)
             for k, n in zip(op.layout.param_keys, op.layout.param_sizes)]
    return torch.cat(parts).to(op.params.device) if parts else torch.zeros(0, dtype=torch.float64)


def ritz_top(matvec, dim: int, steps: int, seed: int, mask: torch.Tensor) -> tuple[float, float, float]:
    """(largest Ritz value, its residual ||H u - theta u||, smallest Ritz value) of ``steps`` Lanczos steps.

    Lanczos as :func:`closerlook.sharpness.lanczos` (float64, full reorthogonalisation, start vector
    N(0, 1) from a generator seeded ``seed``, projected on ``mask``; ``steps`` products). The residual
    costs no product: with an orthonormal basis, ``H u - theta u = beta_k s_k q_(k+1)`` for the Ritz vector
    ``u = Q s``, so its norm is ``beta_k |s_k|`` (beta_k: the norm of the last step's new direction;
    tested against the explicit product)."""
    steps = int(min(steps, int(mask.sum()) or 1))
    g = torch.Generator().manual_seed(int(seed))
    q = torch.randn(dim, generator=g, dtype=torch.float64).to(mask.device) * mask
    q /= q.norm()
    Q, alphas, betas = [], [], []
    beta = 0.0
    for j in range(steps):
        Q.append(q)
        w = matvec(q).to(torch.float64)
        alphas.append(float(torch.dot(w, q)))
        B = torch.stack(Q)
        for _ in range(2):  # twice: orthogonal to working precision
            w = w - B.T @ (B @ w)
        beta = float(w.norm())
        if j == steps - 1 or beta <= 1e-12 * (max(abs(a) for a in alphas) or 1.0):
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    vals, vecs = np.linalg.eigh(T)
    return float(vals[-1]), float(beta * abs(vecs[-1, -1])), float(vals[0])


def row(iteration: int, lr: float, opt: Mapping, m: Mapping, tr: Mapping) -> dict:
    """One CSV row: the measurement beside the threshold ``constant / lr`` and ``lr * (lambda_max + wd)``."""
    c, wd = stability_constant(opt), float(opt.get("weight_decay", 0.0))
    thr = c / lr if lr > 0 else math.inf
    return {"iteration": iteration, "lr": lr, "lambda_max": m["lambda_max"], "ritz_residual": m["ritz_residual"],
            "weight_decay": wd, "lr_lambda": lr * (m["lambda_max"] + wd), "constant": c, "threshold": thr,
            "lambda_min": m["lambda_min"], "loss": m["loss"], "trainable": m["trainable"],
            "lanczos_steps": int(tr["lanczos_steps"]), "hvps": m["hvps"], "cpu_s": math.nan}


def write_trajectory(path, rows) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


class Tracer:
    """The trace of one training run: :meth:`before_step` at every iteration (measures where
    :func:`measured_at`), rows kept in the run's resumable state, :meth:`write` at the end."""

    def __init__(self, tr: Mapping, model: torch.nn.Module, optimizer: torch.optim.Optimizer, opt_spec: Mapping,
                 path, rows: list):
        self.tr, self.model, self.optimizer, self.opt, self.path, self.rows = tr, model, optimizer, opt_spec, path, rows
        self.cpu_s = 0.0

    @classmethod
    def for_run(cls, run) -> "Tracer | None":
        """The tracer of a :class:`closerlook.train._Run` whose spec has ``sharpness_trace`` (else None)."""
        tr = run.s.get("sharpness_trace")
        if not tr:
            return None
        return cls(tr, run.model, run.optimizer, run.s["optimizer"], run.out / TRAJECTORY_FILE,
                   run.st.setdefault("sharpness_rows", []))

    def before_step(self, iteration: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if not measured_at(self.tr, iteration) or any(r["iteration"] == iteration for r in self.rows[-1:]):
            return
        import resource

        t0 = resource.getrusage(resource.RUSAGE_SELF)
        trainable = {n: bool(p.requires_grad) for n, p in self.model.named_parameters()}
        m = measure(self.model, x, y, trainable, self.tr)
        self.rows.append(row(iteration, float(self.optimizer.param_groups[0]["lr"]), self.opt, m, self.tr))
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
        self.rows[-1]["cpu_s"] = round(cpu, 4)  # this process's CPU seconds (all threads) for the measurement
        self.cpu_s += cpu

    def write(self) -> None:
        write_trajectory(self.path, self.rows)
