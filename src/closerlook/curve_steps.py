"""One optimiser step's gradient for curve fitting: which t values a minibatch sees and how.

Split out of :mod:`closerlook.curves` (the curve model and the fit loop). Measured choice of the
defaults: docs/curve-fitting.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .io import ConfigError
from .defaults import T_SAMPLINGS  # noqa: F401 (torch-free owner; re-exported)



def sample_ts(k: int, mode: str, gen: torch.Generator) -> list[float]:
    """``k`` values of t for one minibatch. "uniform": independent U(0, 1) (Garipov's, k = 1);
    "stratified": one in each of [i/k, (i+1)/k), so every batch covers the whole path (lower variance
    of the gradient over t than k independent draws)."""
    u = torch.rand(k, generator=gen, dtype=torch.float64)
    if mode == "uniform":
        return u.tolist()
    if mode == "stratified":
        return ((torch.arange(k, dtype=torch.float64) + u) / k).tolist()
    raise ConfigError(f"t_sampling: {mode!r} is not one of {', '.join(T_SAMPLINGS)}")


def point_loss(curve: "curves.Curve", x: torch.Tensor, y: torch.Tensor, t: float, wd: float):
    """(cross-entropy, the L2 term 0.5 * wd * ||phi(t)||^2, logits) of the batch at the curve point phi(t)."""
    pvec = curve.flat_params_at(t)
    logits = functional_call(curve.module, curve.layout.state(pvec, curve.flat_buffers_at(t), curve._others()), (x,))
    return F.cross_entropy(logits.float(), y), 0.5 * wd * pvec.pow(2).sum(), logits


def batch_gradient(curve: "curves.Curve", x: torch.Tensor, y: torch.Tensor, ts: Sequence[float], wd: float,
                   split: bool = False) -> dict:
    """Accumulate into the bends' .grad the gradient of the mean loss over ``ts``.

    ``split`` False: the whole batch at every t (len(ts) gradient evaluations per image);
    True: the batch cut into len(ts) slices, one t each (one gradient evaluation per image: the
    cost of one t per batch, with the path covered by several). Returns sums for the epoch's
    metrics: ce and reg weighted by images, correct, n (gradient evaluations = images x their t
    values), loss (the batch's)."""
    parts = list(zip(torch.tensor_split(x, len(ts)), torch.tensor_split(y, len(ts)))) if split \
        else [(x, y)] * len(ts)
    out = {"ce": 0.0, "reg": 0.0, "correct": 0, "n": 0, "loss": 0.0}
    for t, (xb, yb) in zip(ts, parts):
        if yb.numel() == 0:
            continue
        ce, reg, logits = point_loss(curve, xb, yb, t, wd)
        w = yb.numel() / y.numel() if split else 1.0 / len(ts)
        ((ce + reg) * w).backward()
        nb = yb.numel()
        out["ce"], out["reg"], out["n"] = out["ce"] + ce.item() * nb, out["reg"] + reg.item() * nb, out["n"] + nb
        out["loss"] += (ce.item() + reg.item()) * w
        with torch.no_grad():
            out["correct"] += int((logits.argmax(1) == yb).sum().item())
    return out
