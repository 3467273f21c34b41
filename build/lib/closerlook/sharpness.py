"""Sharpness: extreme Hessian eigenvalues (Lanczos), Hutchinson's trace and a scale-aware measure.

Any ``nn.Module``; the loss is a function of the flat parameter vector (Layout order) run
through ``torch.func.functional_call``, and Hessian-vector products are forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``), batch by batch over a FIXED subset of training
images (the first ``images``, unaugmented). The model is in eval mode with its BN statistics
recomputed at the point first (:func:`closerlook.landscape.recompute_bn`, the evaluation's
recipe), so the loss is a smooth function of the weights with no batch dependence.

``mode="train"`` (:class:`HessianOperator`) is the loss as the optimiser sees it instead: BN in train
mode (each batch normalised by its own statistics; the running statistics neither read nor updated)
and dropout switched off (else every Hessian-vector product would draw a new mask and Lanczos would
run on a different random matrix at each step). The in-training trace
(:mod:`closerlook.sharpness_trace`) uses it on the current training batch.

* ``lambda_max`` / ``lambda_min``: the largest and the smallest Ritz value of ``lanczos_steps``
  Lanczos steps with full reorthogonalisation (start vector from ``seed``). Both are reported:
  points along a line or curve are often not minima (``lambda_min < 0``).
* ``trace`` and ``trace_se``: Hutchinson's estimator with ``probes`` Rademacher vectors
  (seed ``seed + 1``) and its standard error (sample standard deviation / sqrt(probes)).
* ``lambda_max_scaled = lambda_max * ||w||^2`` (Dinh et al. 2017: raw sharpness changes under a
  rescaling that leaves the function unchanged; for weights a BN layer follows, the loss is
  invariant to w -> c w, the Hessian scales by 1/c^2, so this product does not change).
  ``||w||^2`` sums every floating parameter (BN weights and biases included).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from .curves import Layout
from .data import batches_of
from .io import ConfigError
from .landscape import EVAL_BATCH_SIZE, recompute_bn
from .defaults import SHARPNESS_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)


MODES = ("eval", "train")
_BN = nn.modules.batchnorm._BatchNorm
_DROPOUT = nn.modules.dropout._DropoutNd


@contextlib.contextmanager
def loss_mode(module: nn.Module, mode: str):
    """The module in ``mode`` for the block, restored after (training flags and BN tracking).

    ``"train"``: train mode with every dropout module in eval mode (no mask), and each BN module's
    ``track_running_stats`` off, so that BN normalises by the batch's own statistics and never
    touches its running buffers (an in-place update would also be refused inside torch.func's
    transforms)."""
    if mode not in MODES:
        raise ConfigError(f"sharpness mode: {mode!r} is not one of {', '.join(MODES)}")
    flags = {m: m.training for m in module.modules()}
    tracks = {m: m.track_running_stats for m in module.modules() if isinstance(m, _BN)}
    try:
        module.train(mode == "train")
        for m in module.modules():
            if isinstance(m, _DROPOUT):
                m.eval()
            if isinstance(m, _BN) and mode == "train":
                m.track_running_stats = False
        yield module
    finally:
        for m, t in tracks.items():
            m.track_running_stats = t
        for m, f in flags.items():
            m.training = f


class HessianOperator:
    """The training loss on fixed batches as a function of the flat parameters, and its derivatives.

    ``state``: the point (in eval mode, its BN statistics already recomputed); ``batches``: a list of
    ``(x, y)``; ``mode``: ``"eval"`` or ``"train"`` (:func:`loss_mode`: train-mode BN, dropout off).
    ``hvp(v)`` returns ``H v`` in float64 (computed in the parameters' dtype).
    """

    def __init__(self, module: nn.Module, state: Mapping[str, torch.Tensor], batches: Sequence[tuple],
                 mode: str = "eval"):
        if not batches:
            raise ConfigError("sharpness: no images in the fixed subset")
        if mode not in MODES:
            raise ConfigError(f"sharpness mode: {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.module, self.layout = module, Layout(module)
        self.layout.check(state, "state")
        self.params = self.layout.flat_params(state).detach()
        self.buffers = self.layout.flat_fbufs(state).detach()
        self.others = {k: state[k] for k in self.layout.other_keys}
        self.batches = list(batches)
        self.n = sum(int(y.numel()) for _, y in self.batches)

    @property
    def dim(self) -> int:
        return int(self.params.numel())

    def _batch_loss(self, x, y) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(p: torch.Tensor) -> torch.Tensor:
            st = self.layout.state(p, self.buffers, self.others)
            return F.cross_entropy(functional_call(self.module, st, (x,)).float(), y, reduction="sum")
        return f

    def _over_batches(self, fn) -> Any:
        with loss_mode(self.module, self.mode):
            return sum(fn(self._batch_loss(x, y)) for x, y in self.batches)

    def loss(self) -> float:
        with torch.no_grad():
            return float(self._over_batches(lambda f: f(self.params))) / self.n

    def gradient(self) -> torch.Tensor:
        return self._over_batches(lambda f: grad(f)(self.params)).to(torch.float64) / self.n

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.params)
        return self._over_batches(lambda f: jvp(grad(f), (self.params,), (v,))[1]).to(torch.float64) / self.n


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int, seed: int = 0,
            device: Any = None) -> np.ndarray:
    """Ritz values (ascending) of ``steps`` Lanczos steps on the symmetric operator ``matvec``.

    Float64, full reorthogonalisation (twice, against every kept vector; memory ``steps x dim``),
    start vector N(0, 1) from a CPU generator seeded ``seed``. Stops early when the Krylov space is
    exhausted (then the Ritz values are eigenvalues of the operator).
    """
    steps = int(min(steps, dim))
    if steps < 1:
        raise ConfigError(f"sharpness.lanczos_steps: need >= 1 step, got {steps}")
    g = torch.Generator().manual_seed(int(seed))
    q = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
    q /= q.norm()
    Q = torch.zeros(steps, dim, dtype=torch.float64, device=device)
    alphas, betas = [], []
    for j in range(steps):
        Q[j] = q
        w = matvec(q).to(device=device, dtype=torch.float64)
        alphas.append(float(torch.dot(w, q)))
        for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta = float(w.norm())
        scale = max(abs(a) for a in alphas) or 1.0
        if j == steps - 1 or beta <= 1e-12 * scale:
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    return np.linalg.eigvalsh(T)


def hutchinson(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, probes: int, seed: int = 1,
               device: Any = None) -> tuple[float, float]:
    """(trace estimate, its standard error) from ``probes`` Rademacher vectors z: mean and sd/sqrt(n) of z^T H z."""
    if probes < 2:
        raise ConfigError(f"sharpness.probes: need >= 2 probes for a standard error, got {probes}")
    g = torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in range(int(probes)):
        z = (torch.randint(0, 2, (dim,), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)
        vals.append(float(torch.dot(z, matvec(z).to(device=device, dtype=torch.float64))))
    a = np.asarray(vals)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a)))


def subset_batches(loader: Any, images: int, device: Any = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` examples of an (unaugmented, unshuffled) loader as a list of batches."""
    out, n = [], 0
    for x, y in batches_of(loader):
        if n >= images:
            break
        take = min(images - n, int(y.numel()))
        x, y = x[:take], y[:take]
        if device is not None:
            x, y = x.to(device), y.to(device)
        out.append((x, y))
        n += take
    return out


def sharpness_at(module: nn.Module, state: Mapping[str, torch.Tensor], bn_loader: Any,
                 batches: Sequence[tuple], *, lanczos_steps: int = SHARPNESS_DEFAULTS["lanczos_steps"],
                 probes: int = SHARPNESS_DEFAULTS["probes"], seed: int = SHARPNESS_DEFAULTS["seed"],
                 bn_batches: int | None = None) -> dict:
    """Every sharpness number of one point: BN recomputed on ``bn_loader`` (into a copy of ``state``),
    then loss, gradient norm, Lanczos extremes, Hutchinson trace (+ SE), ``||w||^2`` and ``lambda_max ||w||^2``."""
    device = next((v.device for v in state.values()), None)
    st = {k: v.detach().clone() for k, v in state.items()}
    recompute_bn(module, st, bn_loader, bn_batches, device)
    op = HessianOperator(module, st, batches)
    ritz = lanczos(op.hvp, op.dim, lanczos_steps, seed=seed, device=device)
    tr, se = hutchinson(op.hvp, op.dim, probes, seed=seed + 1, device=device)
    wsq = float(op.params.to(torch.float64).pow(2).sum())
    lmax = float(ritz[-1])
    return {"loss": op.loss(), "grad_norm": float(op.gradient().norm()), "lambda_max": lmax,
            "lambda_min": float(ritz[0]), "trace": tr, "trace_se": se, "weight_norm_sq": wsq,
            "lambda_max_scaled": lmax * wsq}
