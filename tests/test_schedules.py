"""Learning-rate schedules: exact values per iteration, and agreement with torch's schedulers."""
import math

import pytest
import torch

from closerlook import schedules
from closerlook.io import ConfigError
from closerlook.schedules import lr_at, make_scheduler

IPE = 7  # iterations per epoch (odd on purpose)


def _run(schedule, warmup=None, lr=0.05):
    spec = {"optimizer": {"name": "sgd", "lr": lr}, "schedule": schedule}
    if warmup is not None:
        spec["warmup"] = warmup
    return spec


def test_sgdr_hits_lr_min_at_cycle_ends_and_restarts():
    spec = _run({"name": "sgdr", "T0": 10, "Tmult": 2, "lr_min": 1e-6})
    total = 160 * IPE
    for end_epoch in (10, 30, 70, 150):
        last = end_epoch * IPE - 1            # last update of that epoch
        assert lr_at(spec, last, IPE, total) == pytest.approx(1e-6, rel=1e-9, abs=1e-15)
        assert lr_at(spec, last + 1, IPE, total) == pytest.approx(0.05, rel=1e-12)  # first update of next epoch
        assert lr_at(spec, last - 1, IPE, total) > 1e-6
    assert lr_at(spec, 0, IPE, total) == pytest.approx(0.05, rel=1e-12)
    # monotone decreasing inside a cycle
    vals = [lr_at(spec, i, IPE, total) for i in range(10 * IPE, 30 * IPE)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    # exact closed form at one point of cycle 3 (epochs 31..70, 40*IPE steps)
    j = 123
    L = 40 * IPE
    want = 1e-6 + (0.05 - 1e-6) * (1 + math.cos(math.pi * j / (L - 1))) / 2
    assert lr_at(spec, 30 * IPE + j, IPE, total) == pytest.approx(want, rel=1e-12)


def test_sgdr_cross_check_with_torch_cosine_warm_restarts():
    """Same cycles as torch's CosineAnnealingWarmRestarts(T_0=T0*ipe, T_mult): identical lr at every
    restart, and within one iteration's step of the cosine everywhere (ours reaches lr_min on the
    last step of the cycle, torch's stops one step short)."""
    lr, lr_min, T0, Tm = 0.05, 1e-4, 2, 2
    spec = _run({"name": "sgdr", "T0": T0, "Tmult": Tm, "lr_min": lr_min}, lr=lr)
    total = 14 * IPE
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=T0 * IPE, T_mult=Tm, eta_min=lr_min)
    starts = {0, 2 * IPE, 6 * IPE}
    for i in range(total):
        theirs = opt.param_groups[0]["lr"]
        ours = lr_at(spec, i, IPE, total)
        cycle_len = {0: 2, 1: 4, 2: 8}[0 if i < 2 * IPE else 1 if i < 6 * IPE else 2] * IPE
        tol = (lr - lr_min) * math.pi / (cycle_len - 1)  # max difference of one cosine step
        assert abs(ours - theirs) <= tol, (i, ours, theirs)
        if i in starts:
            assert ours == pytest.approx(theirs, rel=1e-12) == pytest.approx(lr, rel=1e-12)
        opt.step()
        ref.step()


def test_sgdr_equals_torch_cosine_annealing_per_cycle():
    """Each cycle is torch's CosineAnnealingLR with T_max = cycle length - 1."""
    lr, lr_min = 0.1, 0.0
    spec = _run({"name": "sgdr", "T0": 1, "Tmult": 2, "lr_min": lr_min}, lr=lr)
    total = 7 * IPE
    i0 = 0
    for length in (IPE, 2 * IPE, 4 * IPE):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr)
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=length - 1, eta_min=lr_min)
        for j in range(length):
            assert lr_at(spec, i0 + j, IPE, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
            opt.step()
            ref.step()
        i0 += length


def test_step_decay_values():
    spec = _run({"name": "step", "milestones": [2, 4], "gamma": 0.1}, lr=0.05)
    total = 6 * IPE
    assert lr_at(spec, 0, IPE, total) == 0.05  # exact: Python float, factor 1.0
    assert lr_at(spec, 2 * IPE - 1, IPE, total) == 0.05  # exact: Python float, factor 1.0
    assert lr_at(spec, 2 * IPE, IPE, total) == pytest.approx(0.005, rel=1e-12)
    assert lr_at(spec, 4 * IPE - 1, IPE, total) == pytest.approx(0.005, rel=1e-12)
    assert lr_at(spec, 4 * IPE, IPE, total) == pytest.approx(0.0005, rel=1e-12)
    assert lr_at(spec, total - 1, IPE, total) == pytest.approx(0.0005, rel=1e-12)


def test_warmup_ramp_composed_with_step():
    spec = _run({"name": "step", "milestones": [1], "gamma": 0.5}, {"iterations": 10, "start_factor": 0.0}, lr=2.5)
    total = 3 * IPE
    want = [2.5 * i / 10 for i in range(10)]
    got = [lr_at(spec, i, IPE, total) for i in range(10)]
    # IPE = 7: the step decay (x0.5 from iteration 7) multiplies the ramp
    want = [w * (0.5 if i >= IPE else 1.0) for i, w in enumerate(want)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert lr_at(spec, 10, IPE, total) == pytest.approx(1.25, rel=1e-12)
    spec2 = _run({"name": "constant"}, {"iterations": 4, "start_factor": 0.2}, lr=1.0)
    assert [lr_at(spec2, i, IPE, 100) for i in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0], rel=1e-12)


def test_warmup_matches_torch_linear_lr():
    spec = _run({"name": "constant"}, {"iterations": 5, "start_factor": 0.1}, lr=0.3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    ref = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=5)
    for i in range(8):
        assert lr_at(spec, i, IPE, 50) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()


def test_linear_and_constant():
    spec = _run({"name": "linear", "final_factor": 0.0}, lr=0.1)
    assert lr_at(spec, 0, IPE, 100) == 0.1  # exact: Python float, factor 1.0
    assert lr_at(spec, 50, IPE, 100) == pytest.approx(0.05, rel=1e-12)
    assert lr_at(spec, 99, IPE, 100) == pytest.approx(0.001, rel=1e-9)
    assert lr_at(_run({"name": "constant"}, lr=0.3), 77, IPE, 100) == 0.3  # exact: Python float, factor 1.0
    # bare schedule spec with explicit base_lr
    assert lr_at({"name": "step", "milestones": [1], "gamma": 0.1}, IPE, IPE, 100, base_lr=1.0) == pytest.approx(0.1)


def test_make_scheduler_agrees_with_lr_at():
    spec = _run({"name": "sgdr", "T0": 1, "Tmult": 2, "lr_min": 1e-3}, {"iterations": 5, "start_factor": 0.0}, lr=0.05)
    total = 3 * IPE
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.05)
    sch = make_scheduler(opt, spec, IPE, total)
    for i in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(spec, i, IPE, total), rel=1e-12, abs=1e-15)
        opt.step()
        sch.step()


@pytest.mark.parametrize("schedule,warmup,key", [
    ({"name": "cosine"}, None, "schedule.name"),
    ({"name": "sgdr", "T0": 0}, None, "schedule.T0"),
    ({"name": "step", "milestones": [3, 2]}, None, "schedule.milestones"),
    ({"name": "step", "milestones": [1], "gama": 0.1}, None, "schedule.gama"),
    ({"name": "constant"}, {"iterations": -1}, "warmup.iterations"),
    ({"name": "constant"}, {"iterations": 3, "start_factor": 1.5}, "warmup.start_factor"),
])
def test_validate_schedule_names_key(schedule, warmup, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        schedules.validate_schedule(schedule, warmup, epochs=10)
