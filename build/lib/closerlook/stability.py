"""The sharpness trace's settings and the optimiser's stability threshold (torch-free; the run spec
validates with them, :mod:`closerlook.sharpness_trace` measures)."""
from __future__ import annotations

from typing import Any, Mapping

from .io import ConfigError, check_keys

TRACE_DEFAULTS: dict[str, Any] = {
    "early_iterations": 24,  # every `every_early` iterations before this (a catapult lasts a few steps)
    "every_early": 1,
    "every": 8,              # then every `every` iterations (0: none after the early phase)
    "lanczos_steps": 5,
    "seed": 0,               # Lanczos start vector (its own CPU generator)
}


def check_trace(tr: Any, spec: Mapping) -> dict | None:
    """The run spec's ``sharpness_trace`` block completed with :data:`TRACE_DEFAULTS` (None: no trace)."""
    if tr is None or tr is False:
        return None
    if tr is True:
        tr = {}
    if not isinstance(tr, Mapping):
        raise ConfigError(f"sharpness_trace: must be a mapping {{{', '.join(TRACE_DEFAULTS)}}} or null, got {tr!r}")
    check_keys(tr, set(TRACE_DEFAULTS), "sharpness_trace")
    out = {**TRACE_DEFAULTS, **tr}
    for k in ("early_iterations", "every"):
        if not _nonneg_int(out[k]):
            raise ConfigError(f"sharpness_trace.{k}: {out[k]!r} must be a non-negative integer")
    for k in ("every_early", "lanczos_steps"):
        if not _nonneg_int(out[k]) or out[k] < 1:
            raise ConfigError(f"sharpness_trace.{k}: {out[k]!r} must be a positive integer")
    if not _nonneg_int(out["seed"]):
        raise ConfigError(f"sharpness_trace.seed: {out['seed']!r} must be a non-negative integer")
    if spec.get("distill"):
        raise ConfigError("sharpness_trace: not for a distilled run (the trace measures the cross-entropy's Hessian)")
    stability_constant(spec["optimizer"])  # refuses an optimiser without a threshold now, not mid-run
    return out


def _nonneg_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def stability_constant(opt: Mapping) -> float:
    """C such that the optimiser is stable on a quadratic of curvature lambda iff ``lr * lambda < C``.

    torch.optim.SGD, per eigen-direction (g = lambda w): plain SGD ``w -= lr g``: C = 2. Heavy ball
    ``v = beta v + (1 - d) g; w -= lr v``: the characteristic polynomial ``z^2 - (1 + beta - a) z + beta``
    with ``a = lr (1 - d) lambda`` has its root at -1 when ``a = 2 + 2 beta``: C = (2 + 2 beta) / (1 - d).
    Nesterov (``w -= lr (g + beta v)``, d = 0): ``z^2 - (1 + beta)(1 - a) z + beta (1 - a)`` with
    ``a = lr lambda`` reaches -1 at ``a = (2 + 2 beta) / (1 + 2 beta)`` (Cohen et al. 2021, App.), and the
    other Jury conditions hold below it: C = (2 + 2 beta) / (1 + 2 beta). Adam has no fixed threshold
    (its preconditioner adapts): refused."""
    if opt.get("name", "sgd") != "sgd":
        raise ConfigError(f"sharpness_trace: no stability threshold for optimizer {opt.get('name')!r} "
                          "(an adaptive preconditioner has none fixed); use sgd")
    beta, d = float(opt.get("momentum", 0.0)), float(opt.get("dampening", 0.0))
    if not 0.0 <= beta < 1.0 or not 0.0 <= d < 1.0:
        raise ConfigError(f"sharpness_trace: momentum {beta} and dampening {d} must lie in [0, 1)")
    if opt.get("nesterov"):
        if d != 0.0:
            raise ConfigError("sharpness_trace: Nesterov with dampening has no threshold here (torch needs dampening 0)")
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
    return (2.0 + 2.0 * beta) / (1.0 - d) if beta > 0 else 2.0 / (1.0 - d)


def measured_at(tr: Mapping, iteration: int) -> bool:
    """Whether the trace measures before the step of ``iteration`` (0-based)."""
    if iteration < tr["early_iterations"]:
        return iteration % tr["every_early"] == 0
    return bool(tr["every"]) and (iteration - tr["early_iterations"]) % tr["every"] == 0
