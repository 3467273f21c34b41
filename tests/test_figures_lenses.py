"""fig7_lenses and fig8_sharpness from synthetic tables: written, labelled, robust to missing/diverged inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from closerlook import figures
from closerlook.tables import GRID_COLUMNS, SHARPNESS_COLUMNS, SLICE_COLUMNS

from test_figures import all_texts, png_size


def _grid(path, scale=1.0):
    u, v = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    loss = scale * (0.2 + u ** 2 + 0.5 * v ** 2)
    pd.DataFrame({"u": u.ravel(), "v": v.ravel(), "train_loss": loss.ravel(), "train_acc": 0.9,
                  "test_loss": 1.1 * loss.ravel(), "test_acc": 0.85}, columns=GRID_COLUMNS).to_csv(path, index=False)
    return str(path)


def _lens_world(d, diverged=False):
    t = np.linspace(0, 1, 5)
    paths = {}
    for k, bump in (("curve", 0.05), ("line", 1.0)):
        pd.DataFrame({"t": t, "train_loss": 0.2 + bump * 4 * t * (1 - t), "train_acc": 0.9, "test_loss": 0.3,
                      "test_acc": 0.85, "path": k, "status": "ok"}).to_csv(d / f"{k}.csv", index=False)
        paths[k] = str(d / f"{k}.csv")
    pd.DataFrame({"label": ["w1", "w2", "bend", "epoch4", "epoch5"], "u": [0, 2, 1, 0.5, 1.5], "v": [0, 0, 1, 0.8, 0.7],
                  "distance": 0.0, "rel_distance": [0, 0, 0, 0.3, 0.2]}).to_csv(d / "points.csv", index=False)
    slices = {}
    for end in ("w1", "w2"):
        a = np.linspace(-1, 1, 7)
        status = "diverged" if diverged and end == "w2" else "ok"
        df = pd.DataFrame({"alpha": a, "train_loss": 0.2 + a ** 2, "train_acc": 0.9, "test_loss": 0.3 + a ** 2,
                           "test_acc": 0.8}, columns=SLICE_COLUMNS)
        df["status"] = status
        df.to_csv(d / f"s1_{end}.csv", index=False)
        slices[end] = {"slice1d": str(d / f"s1_{end}.csv"), "slice2d": _grid(d / f"s2_{end}.csv")}
    n = 20
    ev = np.sort(np.random.default_rng(0).random(n))[::-1]
    pd.DataFrame({"axis": range(1, n + 1), "eigenvalue": ev, "explained": ev / ev.sum()}).to_csv(d / "pca.csv", index=False)
    pd.DataFrame({"label": [f"iter{i}" for i in range(n)], "iteration": range(n), "pc1": np.linspace(-2, 0, n),
                  "pc2": np.sin(np.arange(n)), "tsne1": np.cos(np.arange(n)), "tsne2": np.arange(n)}).to_csv(
        d / "trajectory.csv", index=False)
    pd.DataFrame({"view": ["straight line w1-w2", "curve plane (Fig. 3)", "random 2-D at w1", "PCA plane (top 2)"],
                  "dims": [1, 2, 2, 2], "variance_share": [0.31, 0.42, 0.001, 0.8]}).to_csv(d / "views.csv", index=False)
    return {"paths": paths, "plane": {"grid": _grid(d / "grid.csv"), "points": str(d / "points.csv")},
            "slices": slices, "pca": str(d / "pca.csv"), "trajectory": str(d / "trajectory.csv"),
            "views": str(d / "views.csv"), "pca_grid": _grid(d / "pca_grid.csv", 2.0), "perplexity": 5.0}


def _sharp_world(d, diverged=False):
    out = {"paths": {}, "checkpoints": {}}
    t = np.linspace(0, 1, 5)
    for k in ("curve", "line"):
        df = pd.DataFrame({"t": t, "label": k, "loss": 0.3, "grad_norm": 1.0, "lambda_max": 50 + 10 * t,
                           "lambda_min": -1 - t, "trace": 300 + t, "trace_se": 10.0, "weight_norm_sq": 1000.0,
                           "lambda_max_scaled": 5e4, "status": "diverged" if diverged and k == "line" else "ok"},
                          columns=SHARPNESS_COLUMNS)
        df.to_csv(d / f"sh_{k}.csv", index=False)
        out["paths"][k] = str(d / f"sh_{k}.csv")
    for i, lab in enumerate(["LB warmup", "LB no warmup"]):
        pd.DataFrame([{"t": np.nan, "label": lab, "loss": 1.0, "grad_norm": 5.0, "lambda_max": 90.0 + i,
                       "lambda_min": -12.0, "trace": 470.0, "trace_se": 20.0, "weight_norm_sq": 1387.0,
                       "lambda_max_scaled": 1.2e5, "status": "ok"}], columns=SHARPNESS_COLUMNS).to_csv(d / f"ck{i}.csv", index=False)
        out["checkpoints"][lab] = str(d / f"ck{i}.csv")
    return out


WORLDS = {"fig7_lenses": _lens_world, "fig8_sharpness": _sharp_world}


@pytest.mark.parametrize("name", list(WORLDS))
def test_lens_figures_write_pdf_and_png_with_labelled_axes(tmp_path, name):
    layout = WORLDS[name](tmp_path)
    outs = [tmp_path / f"{name}.pdf", tmp_path / f"{name}.png"]
    fig = figures.make_figure(name, layout, {"format": ["pdf", "png"], "dpi": 40}, outs)
    assert outs[0].read_bytes()[:5] == b"%PDF-" and png_size(outs[1])[0] > 400
    texts = all_texts(fig)
    assert "Fig. 7" in texts if name == "fig7_lenses" else "Fig. 8" in texts
    for ax in fig.axes:
        if ax.axison and ax.get_label() != "<colorbar>":
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis {ax.get_title()}"


def test_fig7_prints_each_views_variance_share_and_explained_variance(tmp_path):
    layout = _lens_world(tmp_path)
    texts = all_texts(figures.build_figure("fig7_lenses", layout, {}))
    assert "keeps 31.0 % of the trajectory" in texts  # the straight line's share, from views.csv
    assert "(keeps 80.0 %)" in texts and "(keeps 42.0 % of the trajectory)" in texts
    ev = pd.read_csv(layout["pca"])["explained"].to_numpy()
    fig = figures.build_figure("fig7_lenses", layout, {})
    labels = " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes)
    assert f"PC1 ({100 * ev[0]:.1f} % of the variance)" in labels and f"PC2 ({100 * ev[1]:.1f} %" in labels


def test_fig7_without_tsne_says_why(tmp_path):
    layout = _lens_world(tmp_path)
    tr = pd.read_csv(layout["trajectory"]).head(6)
    tr[["tsne1", "tsne2"]] = np.nan
    tr.to_csv(layout["trajectory"], index=False)
    assert "t-SNE not drawn: perplexity 5.0 needs N > 3 x perplexity" in all_texts(figures.build_figure("fig7_lenses", layout, {}))


@pytest.mark.parametrize("name", list(WORLDS))
def test_lens_figures_note_missing_and_diverged_inputs(tmp_path, name):
    layout = WORLDS[name](tmp_path, diverged=True)
    texts = all_texts(figures.build_figure(name, layout, {}))
    assert "diverged" in texts
    empty = {"paths": {"curve": str(tmp_path / "nope.csv")}}
    fig = figures.build_figure(name, empty, {})
    assert "missing" in all_texts(fig)
    figures.save_figure(fig, [tmp_path / "empty.png"], dpi=30)
    assert (tmp_path / "empty.png").stat().st_size > 0
