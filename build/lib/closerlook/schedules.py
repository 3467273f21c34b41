"""Learning-rate schedules, evaluated per iteration, composed with linear warmup.

Iteration ``i`` (0-based) is the i-th optimizer update; ``lr_at(..., i, ...)`` is the
learning rate that update uses. Epoch-valued settings (SGDR ``T0``, step
``milestones``) are converted with ``iters_per_epoch``: epoch ``e`` (1-based) holds
iterations ``(e-1)*ipe .. e*ipe-1``.

- ``sgdr`` {T0, Tmult, lr_min}: cycle k lasts ``L_k = T0*Tmult**k*ipe`` iterations;
  step j (0..L_k-1) of the cycle uses
  ``lr_min + (lr - lr_min) * (1 + cos(pi * j / (L_k - 1))) / 2``: the first update of a
  cycle uses ``lr``, the last one uses ``lr_min`` exactly (with T0=10, Tmult=2 the
  last iteration of epochs 10, 30, 70, 150 runs at ``lr_min`` and the first one of
  epochs 11, 31, 71, 151 at ``lr``). This is torch's ``CosineAnnealingLR`` with
  ``T_max = L_k - 1`` restarted at every cycle; it differs from torch's
  ``CosineAnnealingWarmRestarts(T_0=T0*ipe)`` (whose last step stays one step short of
  ``lr_min``) by less than one iteration's worth of cosine (tested).
- ``step`` {milestones, gamma}: ``lr * gamma**#{m : i >= m*ipe}`` (= MultiStepLR per epoch).
- ``linear`` {final_factor}: ``lr * (1 - (1 - final_factor) * i / total_iters)``.
- ``constant``: ``lr``.
- warmup {iterations: N, start_factor: s}: multiplies the above by
  ``s + (1 - s) * min(i, N) / N`` (= torch ``LinearLR``); N = 0 disables it.

The engine uses :func:`make_scheduler` (a ``LambdaLR`` with these closed-form
factors, so resuming needs only the iteration count); figures use :func:`lr_at`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .io import ConfigError, check_keys

SCHEDULES = ("sgdr", "step", "linear", "constant")
SCHEDULE_KEYS = {
    "sgdr": {"name", "T0", "Tmult", "lr_min"},
    "step": {"name", "milestones", "gamma"},
    "linear": {"name", "final_factor"},
    "constant": {"name"},
}
WARMUP_KEYS = {"iterations", "start_factor"}


def _num(x: Any, key: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"{key}: {x!r} must be a number")
    if not math.isfinite(float(x)):
        raise ConfigError(f"{key}: {x!r} must be finite")
    return float(x)


def validate_schedule(schedule: Mapping | None, warmup: Mapping | None = None, *, epochs: float | None = None,
                      base_lr: float | None = None, prefix: str = "") -> None:
    """Raise :class:`ConfigError` naming the key for a wrong schedule / warmup spec."""
    schedule = {"name": "constant"} if schedule is None else schedule
    if not isinstance(schedule, Mapping):
        raise ConfigError(f"{prefix}schedule: must be a mapping with a 'name', got {schedule!r}")
    name = schedule.get("name")
    if name not in SCHEDULES:
        raise ConfigError(f"{prefix}schedule.name: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    check_keys(schedule, SCHEDULE_KEYS[name], f"{prefix}schedule", f" for schedule {name!r}")
    if name == "sgdr":
        t0 = _num(schedule.get("T0", 1), f"{prefix}schedule.T0")
        if t0 <= 0:
            raise ConfigError(f"{prefix}schedule.T0: {t0} must be > 0 epochs")
        tm = _num(schedule.get("Tmult", 1), f"{prefix}schedule.Tmult")
        if tm < 1:
            raise ConfigError(f"{prefix}schedule.Tmult: {tm} must be >= 1")
        lr_min = _num(schedule.get("lr_min", 0.0), f"{prefix}schedule.lr_min")
        if lr_min < 0:
            raise ConfigError(f"{prefix}schedule.lr_min: {lr_min} must be >= 0")
        if base_lr is not None and lr_min > base_lr:
            raise ConfigError(f"{prefix}schedule.lr_min: {lr_min} exceeds optimizer.lr {base_lr}")
    elif name == "step":
        ms = schedule.get("milestones", [])
        if not isinstance(ms, (list, tuple)):
            raise ConfigError(f"{prefix}schedule.milestones: must be a list of epochs, got {ms!r}")
        prev = -math.inf
        for m in ms:
            m = _num(m, f"{prefix}schedule.milestones")
            if m <= 0 or m <= prev:
                raise ConfigError(f"{prefix}schedule.milestones: {list(ms)} must be positive and increasing")
            if epochs is not None and m > epochs:
                raise ConfigError(f"{prefix}schedule.milestones: {m} is beyond epochs ({epochs})")
            prev = m
        g = _num(schedule.get("gamma", 0.1), f"{prefix}schedule.gamma")
        if g <= 0:
            raise ConfigError(f"{prefix}schedule.gamma: {g} must be > 0")
    elif name == "linear":
        f = _num(schedule.get("final_factor", 0.0), f"{prefix}schedule.final_factor")
        if f < 0:
            raise ConfigError(f"{prefix}schedule.final_factor: {f} must be >= 0")
    if warmup is not None:
        if not isinstance(warmup, Mapping):
            raise ConfigError(f"{prefix}warmup: must be a mapping {{iterations, start_factor}}, got {warmup!r}")
        check_keys(warmup, WARMUP_KEYS, f"{prefix}warmup")
        it = warmup.get("iterations", 0)
        if isinstance(it, bool) or not isinstance(it, int):
            raise ConfigError(f"{prefix}warmup.iterations: {it!r} must be an integer")
        if it < 0:
            raise ConfigError(f"{prefix}warmup.iterations: {it} must be >= 0")
        sf = _num(warmup.get("start_factor", 0.0), f"{prefix}warmup.start_factor")
        if not 0 <= sf <= 1:
            raise ConfigError(f"{prefix}warmup.start_factor: {sf} must be in [0, 1]")


def _sgdr_value(schedule: Mapping, i: int, ipe: int, base_lr: float) -> float:
    t0 = float(schedule.get("T0", 1))
    tmult = float(schedule.get("Tmult", 1))
    lr_min = float(schedule.get("lr_min", 0.0))
    length = max(int(round(t0 * ipe)), 1)
    start = 0
    while i >= start + length:
        start += length
        length = max(int(round(length * tmult)), 1)
    j = i - start
    if length == 1:
        return base_lr
    c = (1.0 + math.cos(math.pi * j / (length - 1))) / 2.0
    return lr_min + (base_lr - lr_min) * c


def schedule_factor(schedule: Mapping | None, iteration: int, iters_per_epoch: int, total_iters: int,
                    base_lr: float) -> float:
    """Multiplier of ``base_lr`` at ``iteration`` for the schedule alone (no warmup)."""
    schedule = {"name": "constant"} if schedule is None else schedule
    name = schedule.get("name", "constant")
    i = int(iteration)
    ipe = max(int(iters_per_epoch), 1)
    if name == "constant":
        return 1.0
    if name == "step":
        gamma = float(schedule.get("gamma", 0.1))
        n = sum(1 for m in schedule.get("milestones", []) if i >= int(round(float(m) * ipe)))
        return gamma ** n
    if name == "linear":
        f = float(schedule.get("final_factor", 0.0))
        total = max(int(total_iters), 1)
        return 1.0 - (1.0 - f) * min(i, total) / total
    if name == "sgdr":
        return _sgdr_value(schedule, i, ipe, base_lr) / base_lr
    raise ConfigError(f"schedule.name: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def warmup_factor(warmup: Mapping | None, iteration: int) -> float:
    if not warmup:
        return 1.0
    n = int(warmup.get("iterations", 0) or 0)
    if n <= 0:
        return 1.0
    s = float(warmup.get("start_factor", 0.0))
    return s + (1.0 - s) * min(int(iteration), n) / n


def lr_factor(schedule: Mapping | None, warmup: Mapping | None, iteration: int, iters_per_epoch: int,
              total_iters: int, base_lr: float) -> float:
    return schedule_factor(schedule, iteration, iters_per_epoch, total_iters, base_lr) * warmup_factor(warmup, iteration)


def _split(spec: Mapping) -> tuple[Mapping | None, Mapping | None, float | None]:
    """Accept a run spec (``schedule``/``warmup``/``optimizer`` keys) or a bare schedule spec."""
    if "schedule" in spec or "warmup" in spec or "optimizer" in spec:
        lr = None
        opt = spec.get("optimizer")
        if isinstance(opt, Mapping) and "lr" in opt:
            lr = float(opt["lr"])
        return spec.get("schedule"), spec.get("warmup"), lr
    return spec, None, None


def lr_at(spec: Mapping, iteration: int, iters_per_epoch: int, total_iters: int, base_lr: float | None = None) -> float:
    """Learning rate used by update ``iteration`` (0-based).

    ``spec`` is a run spec (its ``schedule``, ``warmup`` and ``optimizer.lr`` are used)
    or a bare schedule spec (no warmup; then ``base_lr`` is required).
    Gives exactly what the engine's scheduler gives.
    """
    schedule, warmup, lr = _split(spec)
    if base_lr is None:
        if lr is None:
            raise ConfigError("lr_at: base_lr not given and spec has no optimizer.lr")
        base_lr = lr
    return float(base_lr) * lr_factor(schedule, warmup, iteration, iters_per_epoch, total_iters, float(base_lr))


def make_scheduler(optimizer, spec: Mapping, iters_per_epoch: int, total_iters: int):
    """A ``torch.optim.lr_scheduler.LambdaLR`` stepping once per iteration.

    After ``k`` calls of ``scheduler.step()`` every group's lr equals
    ``lr_at(spec, k, ...)`` (with that group's initial lr as base).
    """
    from torch.optim.lr_scheduler import LambdaLR

    schedule, warmup, _ = _split(spec)
    base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]

    def make(base: float):
        return lambda it: lr_factor(schedule, warmup, it, iters_per_epoch, total_iters, base)

    return LambdaLR(optimizer, [make(b) for b in base_lrs])


def sgdr_cycle_ends(schedule: Mapping, epochs: float) -> list[float]:
    """The epochs at which an SGDR schedule's cycles end (lr at its minimum), up to ``epochs``."""
    if (schedule or {}).get("name") != "sgdr":
        return []
    t, length, ends = 0.0, float(schedule.get("T0", 1)), []
    while t + length <= epochs + 1e-9 and len(ends) < 1000:
        t += length
        ends.append(t)
        length *= float(schedule.get("Tmult", 1))
    return ends
