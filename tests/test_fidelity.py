"""Distillation as fidelity (issue 27.2 / 29.4): the metrics on hand-computed cases, the stage on tiny
checkpoints, the config layout, the fig6 panel and the Beyond verdicts."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from closerlook import config as C
from closerlook import explanations as X
from closerlook import fidelity as F
from closerlook import stages
from closerlook.io import save_checkpoint
from closerlook.models import build_model

MODEL = {"name": "small_cnn", "batch_norm": False, "init": "kaiming", "width": 0.25}
DATA_META = {"name": "fashion_mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}


def test_kl_direction_by_hand():
    # teacher p = (0.5, 0.5), student q = (0.9, 0.1): KL(p || q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108;
    # the reverse KL(q || p) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3681 would be the wrong direction
    t = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    s = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert F.kl_teacher_student(t, s).item() == pytest.approx(want, abs=1e-9)
    assert abs(want - (0.9 * math.log(1.8) + 0.1 * math.log(0.2))) > 0.1  # the two directions differ here
    assert F.kl_teacher_student(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_temperature_by_hand():
    # teacher logits (2, 0), student (0, 0): at T the teacher is softmax((2/T, 0)), the student uniform
    t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])

    def by_hand(T):
        p1 = math.exp(2 / T) / (math.exp(2 / T) + 1)
        return p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)

    assert by_hand(1.0) == pytest.approx(0.32782, abs=1e-5)
    assert F.kl_teacher_student(t, s, 1.0).item() == pytest.approx(by_hand(1.0), abs=1e-9)
    assert F.kl_teacher_student(t, s, 2.0).item() == pytest.approx(by_hand(2.0), abs=1e-9)  # 0.11099
    assert F.FIDELITY_DEFAULTS["temperature"] == 1.0  # exact: a constant. Stanton's metric is at T = 1, not the distillation T
    f = F.fidelity(t, s)
    assert f["kl"] == pytest.approx(by_hand(1.0)) and f["n_images"] == 1


def test_agreement_counts_top1_matches():
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert F.fidelity(t, s)["agreement"] == 0.5  # exact: 2 of 4 images, a count ratio


def _ckpt(path, seed):
    torch.manual_seed(seed)
    net = build_model(MODEL, 1, 10, 28)
    save_checkpoint(path, net.state_dict(), {"run": "r", "seed": seed, "epoch": 1, "status": "ok", "model": MODEL,
                                             "data": DATA_META})
    return str(path)


def test_fidelity_stage_on_tiny_checkpoints(tmp_path, fmnist_dir, data_cache):
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(data_cache), "train_per_class": 3,
            "test_per_class": 2}
    t, d, i = _ckpt(tmp_path / "t.pt", 0), _ckpt(tmp_path / "d.pt", 1), _ckpt(tmp_path / "i.pt", 2)
    save_checkpoint(tmp_path / "div.pt", None, {"status": "diverged"})
    pairs = [{"student": "independent", "seed": 1, "teacher": t, "ckpt": i},
             {"student": "distilled", "seed": 1, "teacher": t, "ckpt": d},
             {"student": "distilled", "seed": 2, "teacher": t, "ckpt": str(tmp_path / "div.pt")},
             {"student": "independent", "seed": 0, "teacher": t, "ckpt": t}]
    out = tmp_path / "fidelity.csv"
    stages.fidelity(pairs, data, str(out), {"batch_size": 7}, device="cpu", log=lambda s: None)
    df = pd.read_csv(out)
    assert list(df.columns) == list(F.COLUMNS)
    assert list(zip(df["student"], df["seed"], df["split"]))[:2] == [("distilled", 1, "test"), ("distilled", 1, "train")]
    assert set(df.loc[df["split"] == "test", "n_images"]) == {20} and set(df.loc[df["split"] == "train", "n_images"]) == {30}
    same = df[(df["student"] == "independent") & (df["seed"] == 0)]
    assert (same["agreement"] == 1.0).all() and same["kl"].abs().max() < 1e-9  # exact: a count ratio; the teacher against itself
    assert (df.loc[(df["student"] == "distilled") & (df["seed"] == 2), "status"] == "diverged").all()


def _table(rows):
    return pd.DataFrame([dict(zip(F.COLUMNS, r)) for r in rows])


def _write(tmp_path, dist, indep, n=1000, ntrain=2000, status="ok"):
    """dist / indep: {seed: (test agreement, test kl, train agreement, train kl)}."""
    rows = []
    for st, d in (("distilled", dist), ("independent", indep)):
        for seed, (a, k, at, kt) in d.items():
            rows += [(st, seed, "test", a, k, n, status), (st, seed, "train", at, kt, ntrain, status)]
    p = tmp_path / "fidelity.csv"
    _table(rows).to_csv(p, index=False)
    return {"fidelity": str(p)}


def test_raised_verdicts(tmp_path):
    lay = _write(tmp_path, {1: (0.90, 0.20, 0.93, 0.15), 2: (0.91, 0.19, 0.94, 0.14)},
                 {1: (0.80, 0.50, 0.85, 0.40), 2: (0.82, 0.45, 0.86, 0.38)})
    e = X.fidelity_raised(lay, {})
    assert e["verdict"] == "reproduced", e["reason"]
    lay = _write(tmp_path, {1: (0.80, 0.50, 0.9, 0.2)}, {1: (0.85, 0.30, 0.9, 0.2)})
    assert X.fidelity_raised(lay, {})["verdict"] == "not reproduced"
    # +0.01 on 1,000 test images: inside the sampling error of a difference of agreements (~0.017)
    lay = _write(tmp_path, {1: (0.86, 0.30, 0.9, 0.2)}, {1: (0.85, 0.35, 0.9, 0.2)})
    e = X.fidelity_raised(lay, {})
    assert e["verdict"] == "inconclusive" and "s.e." in e["reason"]
    assert X.fidelity_raised({"fidelity": str(tmp_path / "nope.csv")}, {})["verdict"] == "inconclusive"
    lay = _write(tmp_path, {1: (0.9, 0.2, 0.9, 0.2)}, {1: (0.8, 0.5, 0.9, 0.2)}, status="diverged")
    assert X.fidelity_raised(lay, {})["verdict"] == "inconclusive"


def test_below_perfect_verdicts(tmp_path):
    lay = _write(tmp_path, {1: (0.9, 0.2, 0.90, 0.2)}, {1: (0.8, 0.5, 0.8, 0.5)})
    e = X.fidelity_below_perfect(lay, {})
    assert e["verdict"] == "reproduced" and "0.95" in e["rule"]
    lay = _write(tmp_path, {1: (0.9, 0.2, 0.995, 0.01)}, {1: (0.8, 0.5, 0.8, 0.5)})
    assert X.fidelity_below_perfect(lay, {})["verdict"] == "not reproduced"
    lay = _write(tmp_path, {1: (0.9, 0.2, 0.945, 0.1)}, {1: (0.8, 0.5, 0.8, 0.5)})  # 0.95 within noise
    assert X.fidelity_below_perfect(lay, {})["verdict"] == "inconclusive"


def test_fidelity_vs_cca_story():
    raised = {"verdict": "reproduced"}
    c7 = lambda lo, hi: {"id": 7, "effects": [{"name": "depth profile P(d) - P(i)", "low": lo, "high": hi}]}  # noqa: E731
    assert X.fidelity_vs_cca(raised, c7(0.1, 0.2), {})["verdict"] == "reproduced"
    e = X.fidelity_vs_cca(raised, c7(-0.1, 0.01), {})
    assert e["verdict"] == "not reproduced" and "different stories" in e["reason"]
    assert X.fidelity_vs_cca(raised, c7(0.0, 0.2), {})["verdict"] == "inconclusive"  # straddles 0.05
    assert X.fidelity_vs_cca({"verdict": "inconclusive"}, c7(0.1, 0.2), {})["verdict"] == "inconclusive"


def test_beyond_hook_appends_fidelity_entries(tmp_path):
    from closerlook.claims import evaluate

    lay = _write(tmp_path, {1: (0.9, 0.2, 0.9, 0.2)}, {1: (0.8, 0.5, 0.8, 0.5)})
    out = evaluate({"fig6_distill": lay}, {})
    ids = [e["id"] for e in out["beyond"]]
    assert ids == ["beyond-fidelity-raised", "beyond-fidelity-below-perfect", "beyond-fidelity-vs-cca"]
    assert "beyond" not in evaluate({}, {})


def test_demo_config_layout_carries_fidelity():
    cfg = C.load_config("config/demo.yaml")
    pairs = C.fidelity_pairs(cfg)
    assert sorted((p["student"], p["seed"], p["teacher"].label) for p in pairs) == [
        ("distilled", 1, "sgd/seed0/final"), ("independent", 1, "sgd/seed0/final")]
    layout, files = C.figure_layout(cfg, "fig6_distill")
    assert layout["fidelity"].endswith("distill/fidelity.csv") and layout["fidelity"] in files
    assert "fidelity" not in C.figure_layout(cfg, "fig4_warmup")[0]


def test_fig6_has_the_fidelity_panel(tmp_path):
    from closerlook.figures import build_figure

    lay = _write(tmp_path, {1: (0.9, 0.2, 0.9, 0.2)}, {1: (0.8, 0.5, 0.8, 0.5)})
    fig = build_figure("fig6_distill", lay, {})
    titles = [a.get_title() for a in fig.axes]
    assert len(fig.axes) == 4 and titles[-1].startswith("(d) fidelity")
    assert len(build_figure("fig6_distill", {}, {}).axes) == 3
