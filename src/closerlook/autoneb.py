"""AutoNEB: a second, independent path finder between two networks (Draxler et al., ICML 2018).

A path is a chain of pivots (flat parameter vectors) from ``start`` to ``end``,
joined by straight segments. Each cycle

1. relaxes the interior pivots with the nudged-elastic-band force for ``steps``
   minibatches: the loss gradient with its component along the path removed
   (so pivots slide down into the valley, not along it) plus a spring force
   along the path, ``spring * (|p[i+1] - p[i]| - |p[i] - p[i-1]|)`` (so pivots
   stay evenly spaced); SGD with momentum on ``-force``;
2. evaluates the loss at ``insert_points`` points inside every segment on a
   fixed set of batches and inserts a new pivot where the segment with the
   highest interpolated loss peaks, if that peak exceeds both of its pivots
   by more than ``insert_tol`` (at most ``insert_per_cycle`` pivots a cycle).

The tangent at a pivot is the bisector of its two segments (Henkelman and Jonsson's original NEB).
Any ``nn.Module``: the loss of a pivot is ``functional_call`` of the module with
the pivot's parameters (BN in training mode, batch statistics, as curve fitting
does). The finished path is evaluated like a curve (:func:`closerlook.landscape.evaluate_path`:
BN recomputed at each point) with t = normalised arc length along the chain.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .curves import CurveError, Layout, check_t
from .data import batches_of
from .io import load_checkpoint, save_checkpoint
from .defaults import AUTONEB_DEFAULTS, AUTONEB_KEYS as KEYS  # noqa: F401 (torch-free: planning imports no torch)
from .settings_types import AutonebSettings


LossOf = Callable[[torch.Tensor, Any], torch.Tensor]


def check_settings(settings: Mapping | None, key: str = "autoneb") -> AutonebSettings:
    """AUTONEB_DEFAULTS < ``settings``, checked (ConfigError naming ``key.<name>``); resolved ones pass through."""
    return AutonebSettings.of(settings, key=key)


# --------------------------------------------------------------------------- the band


def neb_force(prev: torch.Tensor, cur: torch.Tensor, nxt: torch.Tensor, grad: torch.Tensor, spring: float) -> torch.Tensor:
    """The NEB force on pivot ``cur``: -(gradient perpendicular to the path) + spring force along it."""
    d_prev, d_next = cur - prev, nxt - cur
    n_prev, n_next = d_prev.norm(), d_next.norm()
    tau = d_prev / n_prev.clamp_min(1e-12) + d_next / n_next.clamp_min(1e-12)
    tau = tau / tau.norm().clamp_min(1e-12)
    g_perp = grad - torch.dot(grad, tau) * tau
    return -g_perp + spring * (n_next - n_prev) * tau


def _segment_losses(pivots: Sequence[torch.Tensor], loss_of: LossOf, batches: Sequence[Any], n: int) -> list[tuple[float, float, float, float]]:
    """Per segment: (peak loss inside it, its position in (0, 1), loss at its left pivot, at its right pivot)."""
    mean_loss = lambda v: sum(float(loss_of(v, b)) for b in batches) / len(batches)  # noqa: E731
    at_pivot = [mean_loss(p) for p in pivots]
    out = []
    for i in range(len(pivots) - 1):
        alphas = [(k + 1) / (n + 1) for k in range(n)]
        losses = [mean_loss(torch.lerp(pivots[i], pivots[i + 1], a)) for a in alphas]
        k = max(range(n), key=lambda j: losses[j])
        out.append((losses[k], alphas[k], at_pivot[i], at_pivot[i + 1]))
    return out


def _insert(pivots: list[torch.Tensor], segs, s: Mapping) -> list[int]:
    """Insert pivots at the peaks of the highest segments that exceed both their pivots; their segment indices."""
    order = sorted(range(len(segs)), key=lambda i: -segs[i][0])
    chosen = [i for i in order if segs[i][0] > max(segs[i][2], segs[i][3]) + s["insert_tol"]][: s["insert_per_cycle"]]
    for i in sorted(chosen, reverse=True):
        pivots.insert(i + 1, torch.lerp(pivots[i], pivots[i + 1], segs[i][1]).detach().clone())
    return sorted(chosen)


def _relax(pivots: list[torch.Tensor], loss_of: LossOf, stream: Iterator, s: Mapping, lr: float) -> tuple[float, int]:
    """``steps`` NEB steps on the interior pivots (in place); (mean loss of the last step, gradient evaluations)."""
    inner = torch.nn.Parameter(torch.stack(pivots[1:-1]))
    opt = torch.optim.SGD([inner], lr=lr, momentum=s["momentum"])
    last, evals = float("nan"), 0
    for _ in range(s["steps"]):
        batch = next(stream)
        full = [pivots[0]] + list(inner.detach()) + [pivots[-1]]
        forces, losses = [], []
        for i in range(1, len(full) - 1):
            v = full[i].clone().requires_grad_(True)
            loss = loss_of(v, batch)
            if s["weight_decay"]:
                loss = loss + 0.5 * s["weight_decay"] * v.pow(2).sum()
            (g,) = torch.autograd.grad(loss, v)
            forces.append(neb_force(full[i - 1], full[i], full[i + 1], g, s["spring"]))
            losses.append(float(loss.detach()))
            evals += 1
        if not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"autoneb: non-finite loss during relaxation ({losses})")
        opt.zero_grad(set_to_none=True)
        inner.grad = -torch.stack(forces)
        opt.step()
        last = sum(losses) / len(losses)
    pivots[1:-1] = [p.detach().clone() for p in inner]
    return last, evals


def relax_path(start: torch.Tensor, end: torch.Tensor, loss_of: LossOf, stream: Iterator, eval_batches: Sequence[Any],
               settings: Mapping, log: Callable[[str], Any] | None = None) -> tuple[list[torch.Tensor], pd.DataFrame]:
    """AutoNEB between two flat vectors; returns the pivots (start and end included) and one row per cycle."""
    s = check_settings(settings)
    n0 = s["init_pivots"]
    pivots = [start.detach()] + [torch.lerp(start, end, (k + 1) / (n0 + 1)).detach() for k in range(n0)] + [end.detach()]
    rows, evals, t0 = [], 0, time.perf_counter()
    for cycle in range(s["cycles"]):
        lr = s["lr"] * s["lr_decay"] ** cycle
        train_loss, n = _relax(pivots, loss_of, stream, s, lr) if len(pivots) > 2 else (float("nan"), 0)
        evals += n
        segs = _segment_losses(pivots, loss_of, eval_batches, s["insert_points"])
        peak = max(x[0] for x in segs)
        inserted = _insert(pivots, segs, s)
        rows.append({"cycle": cycle + 1, "lr": lr, "pivots": len(pivots), "inserted": len(inserted),
                     "train_loss": train_loss, "segment_peak": peak, "grad_evals": evals,
                     "wall_s": time.perf_counter() - t0})
        if log:
            log(f"autoneb cycle {cycle + 1}/{s['cycles']} lr={lr:.4g} loss={train_loss:.4f} "
                f"segment peak={peak:.4f} pivots={len(pivots)} (+{len(inserted)})")
    if len(pivots) > 2:  # pivots inserted in the last cycle get relaxed too
        evals += _relax(pivots, loss_of, stream, s, s["lr"] * s["lr_decay"] ** s["cycles"])[1]
        rows[-1]["grad_evals"] = evals
    return pivots, pd.DataFrame(rows)


# --------------------------------------------------------------------------- the path as a curve


class PivotPath:
    """The chain of pivots as a path with the :class:`~closerlook.curves.Curve` interface that
    :func:`closerlook.landscape.evaluate_path` uses: ``weights_at(t)`` with t = normalised arc length."""

    path_label = "autoneb"

    def __init__(self, module: nn.Module, pivots: Sequence[torch.Tensor], start: Mapping, end: Mapping) -> None:
        self.module, self.layout = module, Layout(module)
        self.layout.check(start, "start")
        self.layout.check(end, "end")
        self.pivots = [p.detach() for p in pivots]
        if len(self.pivots) < 2:
            raise CurveError("autoneb: a path needs at least its two endpoints")
        dev = self.pivots[0].device
        self.start_buffers = self.layout.flat_fbufs(start, device=dev)
        self.end_buffers = self.layout.flat_fbufs(end, device=dev)
        self.others = {k: start[k].to(dev) for k in self.layout.other_keys}
        lengths = torch.stack([(b - a).double().norm() for a, b in zip(self.pivots, self.pivots[1:])])
        self.knots = torch.cat([torch.zeros(1, dtype=torch.float64), lengths.cumsum(0)])

    @property
    def device(self) -> torch.device:
        return self.pivots[0].device

    @property
    def length(self) -> float:
        return float(self.knots[-1])

    def flat_params_at(self, t: float) -> torch.Tensor:
        s = check_t(t) * self.length
        i = min(int(torch.searchsorted(self.knots, torch.tensor(s, dtype=torch.float64), right=True)) - 1,
                len(self.pivots) - 2)
        i = max(i, 0)
        seg = float(self.knots[i + 1] - self.knots[i])
        a = 0.0 if seg == 0 else min(max((s - float(self.knots[i])) / seg, 0.0), 1.0)
        return torch.lerp(self.pivots[i], self.pivots[i + 1], a)

    def weights_at(self, t: float) -> dict[str, torch.Tensor]:
        t = check_t(t)
        bufs = torch.lerp(self.start_buffers, self.end_buffers, t)  # a placeholder: evaluation recomputes BN
        return self.layout.state(self.flat_params_at(t), bufs, self.others)


def _classifier_loss(module: nn.Module, layout: Layout, bufs: torch.Tensor, others: Mapping) -> LossOf:
    def loss_of(pvec: torch.Tensor, batch) -> torch.Tensor:
        x, y = batch
        state = layout.state(pvec, bufs.clone(), others)
        return F.cross_entropy(functional_call(module, state, (x,)).float(), y)
    return loss_of


def _stream(loader: Any) -> Iterator:
    for epoch in itertools.count():
        yield from batches_of(loader, epoch)


def autoneb(module: nn.Module, start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], loader: Any,
            settings: Mapping | None = None, log: Callable[[str], Any] | None = None) -> tuple[PivotPath, pd.DataFrame]:
    """AutoNEB between two networks of ``module``'s architecture on the batches of ``loader`` (shuffled training data).

    Returns the :class:`PivotPath` and the per-cycle metrics (cycle, lr, pivots, inserted, train_loss,
    segment_peak, grad_evals, wall_s). BN layers run in training mode (batch statistics)."""
    s = check_settings(settings or {})
    layout = Layout(module)
    layout.check(start, "start")
    layout.check(end, "end")
    dev = next((v.device for v in module.state_dict().values()), torch.device("cpu"))
    a, b = layout.flat_params(start, device=dev), layout.flat_params(end, device=dev)
    bufs = layout.flat_fbufs(start, device=dev)
    others = {k: start[k].to(dev) for k in layout.other_keys}
    was = module.training
    module.train()
    torch.manual_seed(s["seed"])
    try:
        fixed = list(itertools.islice(batches_of(loader, 0), s["eval_batches"]))
        pivots, rows = relax_path(a, b, _classifier_loss(module, layout, bufs, others), _stream(loader), fixed, s, log)
    finally:
        module.train(was)
    return PivotPath(module, pivots, start, end), rows


def save_path(path: str, pp: PivotPath, meta: Mapping) -> None:
    save_checkpoint(path, {"pivots": torch.stack([p.cpu() for p in pp.pivots])}, {**meta, "autoneb": True})


def load_path(path: str, module: nn.Module, start: Mapping, end: Mapping, map_location: Any = "cpu") -> PivotPath:
    """The :class:`PivotPath` saved by :func:`save_path`; CurveError when it does not join ``start`` and ``end``."""
    ck = load_checkpoint(path, map_location=map_location)
    if not (ck["meta"] or {}).get("autoneb") or ck["model"] is None:
        raise CurveError(f"{path}: not an AutoNEB path (or it diverged)")
    pp = PivotPath(module, list(ck["model"]["pivots"]), start, end)
    for side, sd, vec in (("start", start, pp.pivots[0]), ("end", end, pp.pivots[-1])):
        if not torch.equal(pp.layout.flat_params(sd, device=vec.device), vec):  # exact: the same tensors saved
            raise CurveError(f"{path}: its {side} pivot differs from the {side} checkpoint")
    return pp
