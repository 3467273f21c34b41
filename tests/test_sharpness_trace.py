"""lambda_max inside training (issue 27.1): the optimiser's stability threshold, the train-mode Hessian
(BN on the batch, dropout off) against the sharpness module's, and training left untouched."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

from closerlook import sharpness as S
from closerlook import sharpness_trace as T
from closerlook.io import ConfigError, load_checkpoint
from closerlook.train import train_run


def _iterate(opt_spec, lr_lam, steps=400):
    """|w| after ``steps`` torch.optim.SGD steps on the 1-d quadratic lambda w^2 / 2 (lambda = 1)."""
    w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    o = torch.optim.SGD([w], lr=lr_lam, momentum=opt_spec.get("momentum", 0.0),
                        dampening=opt_spec.get("dampening", 0.0), nesterov=opt_spec.get("nesterov", False))
    for _ in range(steps):
        o.zero_grad()
        (0.5 * w * w).sum().backward()
        o.step()
    return float(w.detach().abs())


@pytest.mark.parametrize("opt,want", [
    ({"name": "sgd", "lr": 0.1}, 2.0),
    ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, 3.8),                      # (2 + 2 beta)
    ({"name": "sgd", "lr": 0.1, "momentum": 0.5, "dampening": 0.5}, 6.0),    # (2 + 2 beta) / (1 - d)
    ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}, 3.8 / 2.8),  # (2 + 2 beta) / (1 + 2 beta)
])
def test_threshold_per_optimiser_matches_torch_sgd(opt, want):
    c = T.stability_constant(opt)
    assert c == pytest.approx(want)
    assert _iterate(opt, c * 0.98) < 1.0      # just below: the iterates shrink
    assert _iterate(opt, c * 1.02) > 1e3      # just above: they blow up


def test_threshold_refused_without_one():
    with pytest.raises(ConfigError, match="no stability threshold"):
        T.stability_constant({"name": "adam", "lr": 1e-3})
    with pytest.raises(ConfigError, match="Nesterov with dampening"):
        T.stability_constant({"name": "sgd", "momentum": 0.9, "dampening": 0.1, "nesterov": True})


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def test_lambda_max_in_training_agrees_with_the_sharpness_module():
    net = _bn_net().train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    tr = T.check_trace({"lanczos_steps": 8}, {"optimizer": {"name": "sgd"}})
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    m = T.measure(net, x, y, {n: True for n, _ in net.named_parameters()}, tr)
    # the same batch and mode through the sharpness module's own Lanczos
    op = S.HessianOperator(net, {k: v.detach() for k, v in net.state_dict().items()}, [(x, y)], mode="train")
    ref = S.lanczos(op.hvp, op.dim, 8, seed=0)
    assert m["lambda_max"] == pytest.approx(float(ref[-1]), rel=1e-9)
    assert m["lambda_min"] == pytest.approx(float(ref[0]), rel=1e-9)
    assert m["hvps"] == 8  # the residual costs no product
    # the free residual beta_k |s_k| is the explicit ||H u - theta u|| of the Ritz vector
    theta, resid, _ = T.ritz_top(op.hvp, op.dim, 3, 0, torch.ones(op.dim, dtype=torch.float64))
    g0 = torch.Generator().manual_seed(0)
    q = torch.randn(op.dim, generator=g0, dtype=torch.float64)
    Q = [q / q.norm()]
    for _ in range(2):
        w = op.hvp(Q[-1])
        B = torch.stack(Q)
        for _r in range(2):
            w = w - B.T @ (B @ w)
        Q.append(w / w.norm())
    B = torch.stack(Q)
    Tm = (B @ torch.stack([op.hvp(x) for x in Q]).T).numpy()
    vals, vecs = __import__("numpy").linalg.eigh((Tm + Tm.T) / 2)
    u = torch.as_tensor(vecs[:, -1]) @ B
    assert theta == pytest.approx(vals[-1], rel=1e-8)
    assert resid == pytest.approx(float((op.hvp(u) - theta * u).norm()), rel=1e-6) and resid > 0
    # train mode means BN on the batch's statistics: eval mode (running statistics) is another matrix
    ev = S.HessianOperator(net, {k: v.detach() for k, v in net.state_dict().items()}, [(x, y)], mode="eval")
    assert abs(float(S.lanczos(ev.hvp, ev.dim, 8, seed=0)[-1]) - m["lambda_max"]) > 1e-3 * abs(m["lambda_max"])
    # dropout off: two products agree exactly; the running statistics are untouched; the module is back in train
    v = torch.randn(op.dim, dtype=torch.float64, generator=g)
    assert torch.equal(op.hvp(v), op.hvp(v))
    assert all(torch.equal(buffers[k], net.state_dict()[k]) for k in buffers)
    assert net.training and all(m_.training for m_ in net.modules())


def test_frozen_parameters_are_projected_out():
    net = _bn_net().train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    tr = T.check_trace({"lanczos_steps": 4}, {"optimizer": {"name": "sgd"}})
    trainable = {n: not n.startswith("5.") for n, _ in net.named_parameters()}
    m = T.measure(net, x, y, trainable, tr)
    assert m["trainable"] == sum(p.numel() for n, p in net.named_parameters() if trainable[n])


def test_measured_at_schedule():
    tr = T.check_trace({"early_iterations": 4, "every_early": 1, "every": 3}, {"optimizer": {"name": "sgd"}})
    assert [i for i in range(12) if T.measured_at(tr, i)] == [0, 1, 2, 3, 4, 7, 10]


def test_trace_leaves_training_untouched(tmp_path, fmnist_dir, data_cache):
    spec = {"name": "tiny", "seed": 0,
            "data": {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(data_cache),
                     "train_per_class": 4, "test_per_class": 2, "subset_seed": 0},
            "model": {"name": "small_cnn", "width": 0.25, "batch_norm": True},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "constant"}, "warmup": {"iterations": 2, "start_factor": 0.0},
            "epochs": 1, "batch_size": 10, "augment": False, "checkpoints": {"epochs": [], "iterations": []},
            "device": "cpu", "threads": 1}
    train_run(spec, tmp_path / "plain", progress=None)
    traced = dict(spec, sharpness_trace={"early_iterations": 2, "every": 1, "lanczos_steps": 3})
    train_run(traced, tmp_path / "traced", progress=None)
    a, b = load_checkpoint(tmp_path / "plain/final.pt")["model"], load_checkpoint(tmp_path / "traced/final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    df = pd.read_csv(tmp_path / "traced" / T.TRAJECTORY_FILE)
    assert list(df["iteration"]) == [0, 1, 2, 3] and list(df.columns) == list(T.COLUMNS)
    assert math.isinf(df["threshold"].iloc[0])  # warmup from 0: lr 0, no threshold yet
    assert list(df["constant"]) == pytest.approx([3.8] * 4)
    assert list(df["lr_lambda"]) == pytest.approx(list(df["lr"] * (df["lambda_max"] + 5e-4)))
    assert not (tmp_path / "plain" / T.TRAJECTORY_FILE).exists()


# ----------------------------------------------------------------------------- verdicts and fig10
def _traj(tmp_path, name, lrs, lams, resid=0.0, wd=0.0, c=3.8, noise=0.0, seed=0):
    rng = __import__("numpy").random.default_rng(seed)
    lams = [l * (1 + noise * rng.standard_normal()) for l in lams]
    rows = [{"iteration": i, "lr": lr, "lambda_max": lam, "ritz_residual": resid, "weight_decay": wd,
             "lr_lambda": lr * (lam + wd), "constant": c, "threshold": c / lr if lr else math.inf, "lambda_min": 0.0,
             "loss": 2.0, "trainable": 10, "lanczos_steps": 4, "hvps": 5, "cpu_s": 0.1}
            for i, (lr, lam) in enumerate(zip(lrs, lams))]
    p = tmp_path / f"{name}.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return str(p)


def _layout(tmp_path, warm_lams, cold_lams, resid=0.0, noise=0.0):
    lr, n = 0.1, len(cold_lams)
    warm_lrs = [lr * min(i / 10, 1.0) for i in range(n)]
    return {"trajectories": {"LB warmup": {"seed0": _traj(tmp_path, "w", warm_lrs, warm_lams, resid, noise=noise)},
                             "LB no warmup": {"seed0": _traj(tmp_path, "c", [lr] * n, cold_lams, resid, noise=noise, seed=1)}},
            "specs": {"LB warmup": {"warmup": {"iterations": 10}}, "LB no warmup": {"warmup": {"iterations": 0}}}}


def test_sharpness_verdicts_on_synthetic_trajectories(tmp_path):
    from closerlook import explanations as X

    # warmup: lr x lambda rises to 0.9 of the constant 3.8 at the peak; no warmup: 2x at first, then 0.5x
    warm = [0.9 * 3.8 / 0.1] * 16
    cold = [2 * 38.0, 1.6 * 38.0, 0.5 * 38.0, 0.5 * 38.0, 0.5 * 38.0] + [0.5 * 38.0] * 11
    w, c = X.sharpness_entries(_layout(tmp_path, warm, cold), {"sharpness_tol": 0.05})
    assert w["verdict"] == "reproduced" and c["verdict"] == "reproduced", (w["reason"], c["reason"])
    # warmup crossing the limit by 30 %: not reproduced; no catapult (always below): not reproduced
    w, c = X.sharpness_entries(_layout(tmp_path, [1.3 * 38.0] * 16, [0.5 * 38.0] * 16), {"sharpness_tol": 0.05})
    assert w["verdict"] == "not reproduced" and c["verdict"] == "not reproduced"
    # a residual large enough that the upper bound straddles the limit: the bound decides, inconclusive
    w, _ = X.sharpness_entries(_layout(tmp_path, warm, cold, resid=20.0), {"sharpness_tol": 0.05})
    assert w["verdict"] == "inconclusive"
    # the tolerance measured from the batch-to-batch spread when not configured
    w, c = X.sharpness_entries(_layout(tmp_path, warm, cold, noise=0.02), {})
    assert 0.0 < w["measured"]["tolerance"]["value"] < 0.2 and "measured" in w["measured"]["tolerance"]["basis"]


def test_fig10_and_its_layout(tmp_path):
    from closerlook import config as C
    from closerlook.figures import build_figure

    lay = _layout(tmp_path, [30.0] * 8, [80.0, 20.0] + [20.0] * 6)
    fig = build_figure("fig10_warmup_sharpness", lay, {})
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith("(a)")
    cfg = C.load_config("config/demo.yaml")
    if "fig10_warmup_sharpness" in (cfg.get("figures") or {}):
        layout, files = C.figure_layout(cfg, "fig10_warmup_sharpness")
        assert all(p.endswith("sharpness_trajectory.csv") for seeds in layout["trajectories"].values()
                   for p in seeds.values())
        assert "fig10_warmup_sharpness" in C.claim_figures(cfg)
