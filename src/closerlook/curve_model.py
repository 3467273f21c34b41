"""The curve model: a path of networks between two endpoints, on any ``nn.Module``; save and load.

Fitting lives in :mod:`closerlook.curves` (which re-exports every name here); evaluation along a
curve and the loss plane in :mod:`closerlook.landscape`. Conventions and the flat-vector layout:
see :mod:`closerlook.curves`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .defaults import FIT_DEFAULTS
from .io import CloserlookError, ConfigError, load_checkpoint, save_checkpoint
from .defaults import CURVE_KINDS as KINDS  # (torch-free owner)



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
