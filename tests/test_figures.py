"""Figures from synthetic tables (DESIGN.md formats): files written, readable, diverged runs annotated.

``make_world`` (also used by test_claims.py) writes a complete set of synthetic tables for
the six figures; its knobs set the quantities the seven claims measure.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closerlook import figures, tables

LAYERS = ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
T = np.linspace(0, 1, 9)


def _write(df: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return str(path)


def path_csv(path: Path, *, kind: str, end_losses=(0.3, 0.35), bump=0.0, acc_end=(0.9, 0.88), acc_dip=0.0,
             diverged=False) -> str:
    """Loss = linear between endpoint losses + bump * 4t(1-t) (so the barrier is exactly ``bump``)."""
    base = end_losses[0] * (1 - T) + end_losses[1] * T
    loss = base + bump * 4 * T * (1 - T)
    acc = acc_end[0] * (1 - T) + acc_end[1] * T - acc_dip * 4 * T * (1 - T)
    df = pd.DataFrame({"t": T, "train_loss": loss, "train_acc": acc + 0.05, "test_loss": loss + 0.1,
                       "test_acc": acc, "path": kind, "status": "ok"})
    if diverged:
        df.loc[4:, ["train_loss", "train_acc", "test_loss", "test_acc"]] = np.nan
        df["status"] = "diverged"
    return _write(df, path)


def metrics_csv(path: Path, *, epochs=7, ipe=8, final_acc=0.85, lr=0.05, diverged_at=None) -> str:
    ep = np.arange(1, epochs + 1)
    acc = final_acc - (final_acc - 0.5) * np.exp(-ep)
    acc[-1] = final_acc
    df = pd.DataFrame({"epoch": ep, "iteration": ep * ipe, "lr": lr * 0.5 ** (ep // 3), "train_loss": 1.0 / ep,
                       "train_acc": acc + 0.02, "test_loss": 1.1 / ep, "test_acc": acc, "wall_s": ep * 1.0,
                       "images_per_s": 1000.0, "status": "ok"})
    if diverged_at is not None:
        df.loc[df["epoch"] >= diverged_at, ["train_loss", "train_acc", "test_loss", "test_acc"]] = np.nan
        df.loc[df["epoch"] >= diverged_at, "status"] = "diverged"
    return _write(df, path)


def sim_csv(path: Path, values, *, cka=None, chance=0.1, diverged=False, measures=("cca_mean", "linear_cka")) -> str:
    rows = []
    for i, layer in enumerate(LAYERS):
        for m in measures:
            v = values[i] if m != "linear_cka" else (cka[i] if cka is not None else values[i] * 0.9)
            rows.append({"a": "x", "b": "y", "layer": layer, "layer_index": i, "measure": m,
                         "value": np.nan if diverged else v, "chance": chance, "status": "diverged" if diverged else "ok"})
    return _write(pd.DataFrame(rows), path)


def plane_csvs(d: Path, *, climb=3.0, final_offset=0.0, diverged=False, traj_on_curve=False) -> dict:
    """Plane: w1=(0,0), w2=(1,0), bend=(0.5,0.6). Low-loss valley along the Bezier; a hill at (0.5,-0.4).

    The trajectory goes w1 -> (0.5,-0.4) (loss = climb x base) -> w2 + final_offset, or along the
    Bezier valley itself when ``traj_on_curve``.
    """
    u = np.linspace(-0.3, 1.3, 17)
    v = np.linspace(-0.7, 0.9, 17)
    uu, vv = np.meshgrid(u, v)
    base = 0.2
    # distance to the Bezier curve (sampled)
    tb = np.linspace(0, 1, 201)[:, None]
    bez = (1 - tb) ** 2 * np.array([0, 0]) + 2 * tb * (1 - tb) * np.array([0.5, 0.6]) + tb ** 2 * np.array([1, 0])
    dist = np.min(np.hypot(uu.ravel()[:, None] - bez[:, 0], vv.ravel()[:, None] - bez[:, 1]), axis=1).reshape(uu.shape)
    hill = (climb - 1) * base * np.exp(-((uu - 0.5) ** 2 + (vv + 0.4) ** 2) / 0.02)
    loss = base * (1 + 4 * dist ** 2) + hill
    grid = pd.DataFrame({"u": uu.ravel(), "v": vv.ravel(), "train_loss": loss.ravel(), "train_acc": 0.9,
                         "test_loss": 1.2 * loss.ravel(), "test_acc": 0.85})
    if diverged:
        grid.loc[grid.index % 7 == 0, ["train_loss", "test_loss"]] = np.nan
    pts = pd.DataFrame([
        ("w1", 0.0, 0.0, 0.0, 0.0), ("w2", 1.0, 0.0, 0.0, 0.0), ("bend", 0.5, 0.6, 0.0, 0.0),
        ("epoch3", 0.0, 0.0, 0.0, 0.0), ("epoch4", 0.25, -0.3, 0.1, 0.05), ("epoch5", 0.5, -0.4, 0.1, 0.04),
        ("epoch6", 0.8, -0.2, 0.1, 0.03), ("epoch7", 1.0 + final_offset, final_offset, 0.0, 0.0)],
        columns=["label", "u", "v", "distance", "rel_distance"])
    if traj_on_curve:
        for k, t in zip((4, 5, 6), (0.25, 0.5, 0.75)):
            pts.loc[k, ["u", "v"]] = [2 * t * (1 - t) * 0.5 + t ** 2, 2 * t * (1 - t) * 0.6]
    return {"grid": _write(grid, d / "grid.csv"), "points": _write(pts, d / "points.csv")}


def spec(name, *, lr=0.05, batch=50, warmup=0, freeze=None, schedule=None, epochs=7):
    return {"name": name, "seed": 0, "optimizer": {"name": "sgd", "lr": lr}, "batch_size": batch,
            "schedule": schedule or {"name": "step", "milestones": [4, 6], "gamma": 0.1},
            "warmup": {"iterations": warmup, "start_factor": 0.0}, "freeze": freeze, "epochs": epochs}


DEEP_WARM = [0.9, 0.88, 0.8, 0.75, 0.7, 0.65]


def make_world(root: Path, *, seeds=("seed0",), sgdr_line=0.5, sgdr_curve=0.02, sgd_line=0.5, sgd_curve=0.02,
               climb=3.0, final_offset=0.0, traj_on_curve=False, robust_dip=0.02, nowarm_deep_drop=0.3, shallow_jitter=0.01,
               acc_warm=0.86, acc_nowarm=0.80, acc_freeze=0.85, acc_sb=0.87, distill_deep_gain=0.2,
               distill_shallow_diff=0.01, diverge: tuple = ()) -> dict:
    """All six layouts. ``diverge`` names parts to mark diverged: 'sgdr_pair', 'plane', 'nowarm', 'distilled', 'G-B'."""
    root = Path(root)
    L: dict = {}
    # fig1
    curves = {}
    for lab in ["G-A", "G-B", "G-C", "G-D", "G-E", "G-F"]:
        curves[lab] = {}
        for k, s in enumerate(seeds):
            d = root / "curves" / lab / s
            dv = lab in diverge
            curves[lab][s] = {"curve": path_csv(d / "curve.csv", kind="curve", bump=0.05, acc_dip=robust_dip + 0.01 * k, diverged=dv),
                              "line": path_csv(d / "line.csv", kind="line", bump=1.5, acc_dip=0.5, diverged=dv)}
    L["fig1_robustness"] = {"curves": curves}

    # fig2
    def pairs(prefix, labels, line, curve, dv=False):
        out = {}
        for lab in labels:
            out[lab] = {}
            for k, s in enumerate(seeds):
                d = root / "curves" / lab / s
                out[lab][s] = {"curve": path_csv(d / "curve.csv", kind="curve", bump=curve, diverged=dv),
                               "line": path_csv(d / "line.csv", kind="line", bump=line + 0.05 * k, diverged=dv)}
        return out
    sgdr_spec = spec("sgdr", schedule={"name": "sgdr", "T0": 1, "Tmult": 2, "lr_min": 1e-6})
    L["fig2_sgdr"] = {
        "metrics": {"SGDR": {s: metrics_csv(root / "runs/sgdr" / s / "metrics.csv") for s in seeds},
                    "SGD": {s: metrics_csv(root / "runs/sgd" / s / "metrics.csv") for s in seeds}},
        "specs": {"SGDR": sgdr_spec, "SGD": spec("sgd")},
        "sgdr_pairs": pairs("sgdr", ["sgdr-w1-w3", "sgdr-w3-w7"], sgdr_line, sgdr_curve, "sgdr_pair" in diverge),
        "sgd_pairs": pairs("sgd", ["sgd-w3-w5"], sgd_line, sgd_curve),
        "reference_pairs": pairs("ref", ["seeds-s0-s1"], 2.0, 0.05),
    }
    for s in seeds:  # the reference pair also aligned and connected by AutoNEB (closerlook.align / autoneb)
        d = root / "curves" / "seeds-s0-s1" / s
        L["fig2_sgdr"]["reference_pairs"]["seeds-s0-s1"][s].update(
            aligned=path_csv(d / "aligned.csv", kind="aligned", bump=0.4),
            autoneb=path_csv(d / "autoneb.csv", kind="autoneb", bump=0.1))
    # fig3
    L["fig3_plane"] = plane_csvs(root / "planes/sgdr/seed0", climb=climb, final_offset=final_offset, traj_on_curve=traj_on_curve,
                                 diverged="plane" in diverge)
    # fig4 / fig5
    shallow_n = 3
    def sim_vals(drop, jitter):
        v = np.array(DEEP_WARM, dtype=float)
        v[:shallow_n] += jitter
        v[-shallow_n:] -= drop
        return v
    specs = {"LB no warmup": spec("lb_nowarmup", lr=0.25, batch=500),
             "LB warmup": spec("lb_warmup", lr=0.25, batch=500, warmup=16),
             "SB": spec("sgd"),
             "LB frozen FC": spec("lb_freeze", lr=0.25, batch=500, freeze={"groups": ["classifier"], "iterations": 16})}
    accs = {"LB no warmup": acc_nowarm, "LB warmup": acc_warm, "SB": acc_sb, "LB frozen FC": acc_freeze}
    vals = {"LB no warmup": sim_vals(nowarm_deep_drop, shallow_jitter), "LB warmup": sim_vals(0.0, 0.0),
            "SB": sim_vals(0.0, -shallow_jitter), "LB frozen FC": sim_vals(nowarm_deep_drop / 3, 0.0)}
    runs_dir = {"LB no warmup": "lb_nowarmup", "LB warmup": "lb_warmup", "SB": "sgd", "LB frozen FC": "lb_freeze"}
    for fig, labels in (("fig4_warmup", ["LB no warmup", "LB warmup", "SB"]),
                        ("fig5_freeze", ["LB no warmup", "LB warmup", "LB frozen FC"])):
        L[fig] = {"metrics": {}, "specs": {}, "similarity": {}}
        for lab in labels:
            dv = lab == "LB no warmup" and "nowarm" in diverge
            L[fig]["specs"][lab] = specs[lab]
            L[fig]["metrics"][lab] = {s: metrics_csv(root / "runs" / runs_dir[lab] / s / "metrics.csv",
                                                     final_acc=accs[lab] + 0.002 * k, ipe=8 if "LB" in lab else 80,
                                                     lr=0.25 if "LB" in lab else 0.05, diverged_at=3 if dv else None)
                                      for k, s in enumerate(seeds)}
            L[fig]["similarity"][lab] = {s: sim_csv(root / "similarity" / f"warmup-{runs_dir[lab]}" / f"{s}.csv",
                                                    vals[lab] + 0.005 * k, diverged=dv) for k, s in enumerate(seeds)}
    # fig6
    indep = np.array(DEEP_WARM)
    dist = indep.copy()
    dist[:shallow_n] += distill_shallow_diff
    dist[-shallow_n:] += distill_deep_gain
    dist = np.minimum(dist, 1.0)
    L["fig6_distill"] = {
        "similarity": {"distilled": {s: sim_csv(root / "similarity/distill-distilled" / f"{s}.csv", dist,
                                                diverged="distilled" in diverge) for s in seeds},
                       "independent": {s: sim_csv(root / "similarity/distill-independent" / f"{s}.csv", indep) for s in seeds}},
        "metrics": {"distilled": {s: metrics_csv(root / "runs/distilled" / s / "metrics.csv", final_acc=0.86) for s in seeds},
                    "independent": {s: metrics_csv(root / "runs/sgd1" / s / "metrics.csv", final_acc=0.85) for s in seeds}},
    }
    L["fig9_ensembles"] = ensemble_csvs(root / "ensembles" / "seed0", diverged="ensembles" in diverge)
    return L


def ensemble_csvs(d: Path, diverged=False) -> dict:
    """An ensembles table (five methods) and its members table; ``diverged`` marks FGE diverged."""
    methods = {"independent": (0.88, 4), "snapshot": (0.86, 4), "fge": (0.87, 4), "curve": (0.875, 4), "swa": (0.865, 1)}
    rows, mrows = [], []
    for m, (acc, k) in methods.items():
        bad = diverged and m == "fge"
        rows.append({"method": m, "members": k, "snapshots": 4, "budget_epochs": 16 if m == "independent" else 8,
                     "test_acc": np.nan if bad else acc, "test_nll": np.nan if bad else 0.4 - acc / 5,
                     "member_acc_mean": acc - 0.01, "member_acc_min": acc - 0.02, "member_nll_mean": 0.45,
                     "disagreement": np.nan if k == 1 else 0.1 + 0.01 * len(m), "cka": np.nan if k == 1 else 0.9,
                     "status": "diverged" if bad else "ok"})
        mrows += [{"method": m, "member": j, "label": f"m{j}", "test_acc": acc - 0.01 * j, "test_nll": 0.45,
                   "status": "diverged" if bad else "ok"} for j in range(k)]
    return {"ensembles": {"seed0": _write(pd.DataFrame(rows), d / "ensembles.csv")},
            "members": {"seed0": _write(pd.DataFrame(mrows), d / "members.csv")}}


OPTIONS = {
    "fig1_robustness": {},
    "fig2_sgdr": {},
    "fig3_plane": {},
    "fig4_warmup": {"measure": "cca_mean"},
    "fig5_freeze": {"measure": "cca_mean"},
    "fig6_distill": {"measure": "cca_mean"},
    "fig9_ensembles": {},
}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def all_texts(fig) -> str:
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out.append(ax.get_title())
        out.extend(t.get_text() for t in ax.texts)
        leg = ax.get_legend()
        if leg is not None:
            out.extend(t.get_text() for t in leg.get_texts())
    return "\n".join(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), seeds=("seed0", "seed1"))


@pytest.mark.parametrize("name", figures.FIGURES)
def test_every_figure_writes_pdf_and_png(world, tmp_path, name):
    outs = [tmp_path / f"{name}.pdf", tmp_path / f"{name}.png"]
    fig = figures.make_figure(name, world[name], {**OPTIONS[name], "format": ["pdf", "png"], "dpi": 50}, outs)
    pdf, png = outs
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    w, h = png_size(png)
    assert w > 400 and h > 200  # 50 dpi x at least 11 x 4.3 inches
    assert png.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    texts = all_texts(fig)
    assert "Fig." in texts
    for ax in fig.axes:
        if ax.axison and ax.get_label() != "<colorbar>":
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis {ax.get_title()}"


def test_stem_without_suffix_uses_formats(world, tmp_path):
    figures.make_figure("fig6_distill", world["fig6_distill"], {"format": ["png"], "dpi": 40}, [tmp_path / "f6"])
    assert (tmp_path / "f6.png").exists() and not (tmp_path / "f6.pdf").exists()


def test_unknown_figure_name():
    with pytest.raises(ValueError, match="unknown figure"):
        figures.build_figure("fig9", {}, {})


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("broken"),
                      diverge=("sgdr_pair", "plane", "nowarm", "distilled", "G-B", "ensembles"))


@pytest.mark.parametrize("name", figures.FIGURES)
def test_diverged_inputs_do_not_crash_and_are_annotated(broken, tmp_path, name):
    fig = figures.build_figure(name, broken[name], OPTIONS[name])
    if name in ("fig3_plane", "fig5_freeze"):  # rendering NaN contours / partial lines
        figures.save_figure(fig, [tmp_path / f"{name}.png"], dpi=30)
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    texts = all_texts(fig)
    if name == "fig3_plane":
        assert "diverged" in texts  # grid points missing are noted
    else:
        assert "(diverged)" in texts, texts


def test_missing_files_and_measures_are_noted(tmp_path):
    layout = {"similarity": {"distilled": {"seed0": str(tmp_path / "nope.csv")}},
              "metrics": {"distilled": {"seed0": str(tmp_path / "nope2.csv")}}}
    fig = figures.build_figure("fig6_distill", layout, {"measure": "pwcca"})
    texts = all_texts(fig)
    assert "missing" in texts and "no 'pwcca' values" in texts
    fig = figures.build_figure("fig3_plane", {"grid": str(tmp_path / "g.csv"), "points": str(tmp_path / "p.csv")}, {})
    assert "missing" in all_texts(fig)
    figures.save_figure(fig, [tmp_path / "empty.png"], dpi=30)
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_lr_from_spec_matches_schedule(world):
    m, _ = tables.read_table(world["fig4_warmup"]["metrics"]["LB warmup"]["seed0"])
    assert figures.iters_per_epoch(m) == 8
    its, lrs, src = figures.lr_series(world["fig4_warmup"]["specs"]["LB warmup"], m)
    assert src == "schedule" and its[0] == 0 and len(its) == 56
    assert lrs[0] == pytest.approx(0.0) and lrs[16] == pytest.approx(0.25) and lrs[-1] == pytest.approx(0.25 * 0.01)
    its, lrs, src = figures.lr_series(None, m)  # fallback: the logged lr
    assert src == "metrics" and len(its) == 7


def test_plane_helpers():
    b = figures.bezier([0, 0], [0.5, 1.0], [1, 0], n=3)
    assert np.allclose(b, [[0, 0], [0.5, 0.5], [1, 0]])
    df = pd.DataFrame({"t": T, "train_loss": 0.3 + 0.7 * 4 * T * (1 - T)})
    assert tables.path_barrier(df) == pytest.approx(0.7)


def _texts_ticks_tables(fig) -> str:
    """all_texts plus x tick labels and table cells."""
    out = [all_texts(fig)]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.get_xticklabels()]
        for tab in ax.tables:
            out += [c.get_text().get_text() for c in tab.get_celld().values()]
    return "\n".join(out)


def test_fig2_draws_autoneb_and_aligned_paths_when_listed(world):
    fig = figures.build_figure("fig2_sgdr", world["fig2_sgdr"], {})
    texts = _texts_ticks_tables(fig)
    assert "seeds-s0-s1 AutoNEB" in texts and "seeds-s0-s1 line to aligned end" in texts
    assert "AutoNEB excess" in texts and "aligned line" in texts  # their barriers in panel (f)


def test_fig9_shows_every_ensemble_and_the_reference(world):
    fig = figures.build_figure("fig9_ensembles", world["fig9_ensembles"], {})
    texts = _texts_ticks_tables(fig)
    for label in ("independent seeds", "SGDR snapshots", "FGE", "curve ensemble", "SWA (one network)",
                  "independent-seed ensemble"):
        assert label in texts, label
    assert "0.880" in texts  # the reference's accuracy in table (d)
