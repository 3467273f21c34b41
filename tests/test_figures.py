"""Figures from synthetic tables (DESIGN.md formats): files written, readable, diverged runs annotated.

``make_world`` (also used by test_claims.py) writes a complete set of synthetic tables for
the six figures; its knobs set the quantities the seven claims measure.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closerlook import figures, tables
from closerlook.paths import PAPER_FIGURES

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


def sim_csv(path: Path, values, *, cka=None, chance=0.1, diverged=False, measures=("cca_mean", "linear_cka"),
            sub_offsets=(0.0, 0.0, 0.0), deep=3) -> str:
    """Rows for sample "all" and one per entry of ``sub_offsets`` (s0, s1, ...): the subsample's value is the
    whole-set value + that offset in the last ``deep`` layers (so the depth profile differs by it)."""
    rows = []
    samples = [("all", 0.0, 600)] + [(f"s{b}", off, 300) for b, off in enumerate(sub_offsets)]
    for i, layer in enumerate(LAYERS):
        for m in measures:
            for sample, off, n in samples:
                v = values[i] if m != "linear_cka" else (cka[i] if cka is not None else values[i] * 0.9)
                v = v + (off if i >= len(LAYERS) - deep else 0.0)
                c = chance[i] if np.ndim(chance) else chance
                rows.append({"a": "x", "b": "y", "layer": layer, "layer_index": i, "measure": m, "sample": sample,
                             "n_images": n, "value": np.nan if diverged else v, "chance": c, "chance_low": c - 0.01,
                             "chance_high": c + 0.01, "p_value": 1 / 21, "calibrated": (v - c) / (1 - c),
                             "status": "diverged" if diverged else "ok"})
    return _write(pd.DataFrame(rows), path)


def plane_csvs(d: Path, *, climb=3.0, diverged=False, traj_on_curve=False, plane_offset=0.0) -> dict:
    """Plane: w1=(0,0), w2=(1,0), bend=(0.5,0.6). Low-loss valley along the Bezier; a hill at (0.5,-0.4).

    The trajectory goes w1 -> (0.5,-0.4) -> w2, or along the Bezier valley itself when ``traj_on_curve``.
    Own train losses (points.csv): 0.2 at w1/w2, 0.25 at epoch4/6, 0.2 x ``climb`` at epoch5; the curve's
    max train loss (curve.csv) is 0.22. ``plane_offset`` is added to the projections' rel_distance.
    """
    u = np.linspace(-0.3, 1.3, 17)
    v = np.linspace(-0.7, 0.9, 17)
    uu, vv = np.meshgrid(u, v)
    base = 0.2
    tb = np.linspace(0, 1, 201)[:, None]
    bez = (1 - tb) ** 2 * np.array([0, 0]) + 2 * tb * (1 - tb) * np.array([0.5, 0.6]) + tb ** 2 * np.array([1, 0])
    dist = np.min(np.hypot(uu.ravel()[:, None] - bez[:, 0], vv.ravel()[:, None] - bez[:, 1]), axis=1).reshape(uu.shape)
    hill = (climb - 1) * base * np.exp(-((uu - 0.5) ** 2 + (vv + 0.4) ** 2) / 0.02)
    loss = base * (1 + 4 * dist ** 2) + hill
    grid = pd.DataFrame({"u": uu.ravel(), "v": vv.ravel(), "train_loss": loss.ravel(), "train_acc": 0.9,
                         "test_loss": 1.2 * loss.ravel(), "test_acc": 0.85})
    if diverged:
        grid.loc[grid.index % 7 == 0, ["train_loss", "test_loss"]] = np.nan
    o = plane_offset
    pts = pd.DataFrame([
        ("w1", 0.0, 0.0, 0.0, 0.0, base), ("w2", 1.0, 0.0, 0.0, 0.0, base), ("bend", 0.5, 0.6, 0.0, 0.0, 0.9),
        ("epoch3", 0.0, 0.0, 0.0, 0.0, base), ("epoch4", 0.25, -0.3, 0.1, 0.05 + o, 0.25),
        ("epoch5", 0.5, -0.4, 0.1, 0.04 + o, base * climb), ("epoch6", 0.8, -0.2, 0.1, 0.03 + o, 0.25),
        ("epoch7", 1.0, 0.0, 0.0, 0.0, base)],
        columns=["label", "u", "v", "distance", "rel_distance", "train_loss"])
    pts["train_acc"] = 0.9
    if diverged:
        pts["train_loss"] = np.nan
        pts["status"] = "diverged"
    if traj_on_curve:
        for k, t in zip((4, 5, 6), (0.25, 0.5, 0.75)):
            pts.loc[k, ["u", "v"]] = [2 * t * (1 - t) * 0.5 + t ** 2, 2 * t * (1 - t) * 0.6]
    return {"grid": _write(grid, d / "grid.csv"), "points": _write(pts, d / "points.csv"),
            "curve": path_csv(d / "curve.csv", kind="curve", end_losses=(base, base), bump=0.02)}


def spec(name, *, lr=0.05, batch=50, warmup=0, freeze=None, schedule=None, epochs=7):
    return {"name": name, "seed": 0, "optimizer": {"name": "sgd", "lr": lr}, "batch_size": batch,
            "schedule": schedule or {"name": "step", "milestones": [4, 6], "gamma": 0.1},
            "warmup": {"iterations": warmup, "start_factor": 0.0}, "freeze": freeze, "epochs": epochs}


DEEP_WARM = [0.9, 0.88, 0.8, 0.75, 0.7, 0.65]


def _fig1(root: Path, seeds, robust_dip, ga_end_acc, diverge) -> dict:
    curves = {}
    for lab in ["G-A", "G-B", "G-C", "G-D", "G-E", "G-F"]:
        curves[lab] = {}
        ends = (0.9, ga_end_acc) if lab == "G-A" and ga_end_acc is not None else (0.9, 0.88)
        for k, s in enumerate(seeds):
            d = root / "curves" / lab / s
            dv = lab in diverge
            curves[lab][s] = {"curve": path_csv(d / "curve.csv", kind="curve", bump=0.05, acc_end=ends,
                                                acc_dip=robust_dip + 0.01 * k, diverged=dv),
                              "line": path_csv(d / "line.csv", kind="line", bump=1.5, acc_end=ends, acc_dip=0.5, diverged=dv)}
    return {"curves": curves}


def _fig2(root: Path, seeds, sgdr_line, sgdr_curve, sgd_line, sgd_curve, ref_line, ref_curve, sgdr_acc, diverge) -> dict:
    def pairs(labels, line, curve, dv=False):
        out = {}
        for lab in labels:
            out[lab] = {}
            for k, s in enumerate(seeds):
                d = root / "curves" / lab / s
                out[lab][s] = {"curve": path_csv(d / "curve.csv", kind="curve", bump=curve, diverged=dv),
                               "line": path_csv(d / "line.csv", kind="line", bump=line + 0.05 * k, diverged=dv)}
        return out
    sgdr_spec = spec("sgdr", schedule={"name": "sgdr", "T0": 1, "Tmult": 2, "lr_min": 1e-6})
    return {
        "metrics": {"SGDR": {s: metrics_csv(root / "runs/sgdr" / s / "metrics.csv", final_acc=sgdr_acc) for s in seeds},
                    "SGD": {s: metrics_csv(root / "runs/sgd" / s / "metrics.csv") for s in seeds}},
        "specs": {"SGDR": sgdr_spec, "SGD": spec("sgd")},
        "sgdr_pairs": pairs(["sgdr-w1-w3", "sgdr-w3-w7"], sgdr_line, sgdr_curve, "sgdr_pair" in diverge),
        "sgd_pairs": pairs(["sgd-w3-w5"], sgd_line, sgd_curve),
        "reference_pairs": _aligned_autoneb(root, seeds, pairs(["seeds-s0-s1"], ref_line, ref_curve)),
    }


def _aligned_autoneb(root: Path, seeds, ref: dict) -> dict:
    """The reference pair also aligned and connected by AutoNEB (closerlook.align / autoneb)."""
    for s in seeds:
        d = root / "curves" / "seeds-s0-s1" / s
        ref["seeds-s0-s1"][s].update(aligned=path_csv(d / "aligned.csv", kind="aligned", bump=0.4),
                                     autoneb=path_csv(d / "autoneb.csv", kind="autoneb", bump=0.1))
    return ref


def _sim_vals(drop, jitter, shallow_n=3):
    v = np.array(DEEP_WARM, dtype=float)
    v[:shallow_n] += jitter
    v[-shallow_n:] -= drop
    return v


def _fig45(root: Path, seeds, accs, vals, sub_spread, diverge) -> dict:
    specs = {"LB no warmup": spec("lb_nowarmup", lr=0.25, batch=500),
             "LB warmup": spec("lb_warmup", lr=0.25, batch=500, warmup=16),
             "SB": spec("sgd"),
             "LB frozen FC": spec("lb_freeze", lr=0.25, batch=500, freeze={"groups": ["classifier"], "iterations": 16})}
    runs_dir = {"LB no warmup": "lb_nowarmup", "LB warmup": "lb_warmup", "SB": "sgd", "LB frozen FC": "lb_freeze"}
    out = {}
    for fig, labels in (("fig4_warmup", ["LB no warmup", "LB warmup", "SB"]),
                        ("fig5_freeze", ["LB no warmup", "LB warmup", "LB frozen FC"])):
        L = out[fig] = {"metrics": {}, "specs": {}, "similarity": {},
                        "baseline": {"s0-s1": sim_csv(root / "similarity/init-sgd/s0-s1.csv", [0.2] * 6)}}
        for lab in labels:
            dv = lab == "LB no warmup" and "nowarm" in diverge
            subs = (-sub_spread, 0.0, sub_spread) if lab == "LB warmup" else (0.0, 0.0, 0.0)
            L["specs"][lab] = specs[lab]
            L["metrics"][lab] = {s: metrics_csv(root / "runs" / runs_dir[lab] / s / "metrics.csv",
                                                final_acc=accs[lab] + 0.002 * k, ipe=8 if "LB" in lab else 80,
                                                lr=0.25 if "LB" in lab else 0.05, diverged_at=3 if dv else None)
                                 for k, s in enumerate(seeds)}
            L["similarity"][lab] = {s: sim_csv(root / "similarity" / f"warmup-{runs_dir[lab]}" / f"{s}.csv",
                                               vals[lab] + 0.005 * k, diverged=dv, sub_offsets=subs)
                                    for k, s in enumerate(seeds)}
    return out


def _fig6(root: Path, seeds, distill_deep_gain, distill_shallow_diff, sub_spread, diverge, shallow_n=3) -> dict:
    indep = np.array(DEEP_WARM)
    dist = indep.copy()
    dist[:shallow_n] += distill_shallow_diff
    dist[-shallow_n:] += distill_deep_gain
    dist = np.minimum(dist, 1.0)
    subs = (-sub_spread, 0.0, sub_spread)
    return {
        "similarity": {"distilled": {s: sim_csv(root / "similarity/distill-distilled" / f"{s}.csv", dist, sub_offsets=subs,
                                                diverged="distilled" in diverge) for s in seeds},
                       "independent": {s: sim_csv(root / "similarity/distill-independent" / f"{s}.csv", indep) for s in seeds}},
        "metrics": {"distilled": {s: metrics_csv(root / "runs/distilled" / s / "metrics.csv", final_acc=0.86) for s in seeds},
                    "independent": {s: metrics_csv(root / "runs/sgd1" / s / "metrics.csv", final_acc=0.85) for s in seeds}},
        "baseline": {"s0-s1": sim_csv(root / "similarity/init-sgd/s0-s1.csv", [0.2] * 6)},
    }


def make_world(root: Path, *, seeds=("seed0",), sgdr_line=0.5, sgdr_curve=0.02, sgd_line=0.5, sgd_curve=0.02,
               ref_line=2.0, ref_curve=0.0, sgdr_acc=0.85, climb=3.0, traj_on_curve=False, plane_offset=0.0,
               robust_dip=0.02, ga_end_acc=None, nowarm_deep_drop=0.3, shallow_jitter=0.01, frozen_deep_drop=0.0,
               acc_warm=0.86, acc_nowarm=0.80, acc_freeze=0.85, acc_sb=0.87, distill_deep_gain=0.2,
               distill_shallow_diff=0.01, sub_spread=0.0, num_classes=10, diverge: tuple = ()) -> dict:
    """All six layouts (10 classes: chance accuracy 0.1). ``diverge`` names parts to mark diverged:
    'sgdr_pair', 'plane', 'nowarm', 'distilled', 'G-B', 'ensembles'."""
    root = Path(root)
    info = root / "data" / "info.json"
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps({"info": {"num_classes": num_classes}}))
    accs = {"LB no warmup": acc_nowarm, "LB warmup": acc_warm, "SB": acc_sb, "LB frozen FC": acc_freeze}
    vals = {"LB no warmup": _sim_vals(nowarm_deep_drop, shallow_jitter), "LB warmup": _sim_vals(0.0, 0.0),
            "SB": _sim_vals(0.0, -shallow_jitter), "LB frozen FC": _sim_vals(frozen_deep_drop, 0.0)}
    L = {"fig1_robustness": _fig1(root, seeds, robust_dip, ga_end_acc, diverge),
         "fig2_sgdr": _fig2(root, seeds, sgdr_line, sgdr_curve, sgd_line, sgd_curve, ref_line, ref_curve, sgdr_acc, diverge),
         "fig3_plane": plane_csvs(root / "planes/sgdr/seed0", climb=climb, traj_on_curve=traj_on_curve,
                                  plane_offset=plane_offset, diverged="plane" in diverge),
         **_fig45(root, seeds, accs, vals, sub_spread, diverge),
         "fig6_distill": _fig6(root, seeds, distill_deep_gain, distill_shallow_diff, sub_spread, diverge)}
    L["fig3_plane"]["metrics"] = {"sgdr": L["fig2_sgdr"]["metrics"]["SGDR"]}
    L["fig9_ensembles"] = ensemble_csvs(root / "ensembles" / "seed0", diverged="ensembles" in diverge)
    for lay in L.values():
        lay["data_info"] = str(info)
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


@pytest.mark.parametrize("name", PAPER_FIGURES)
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
    return make_world(tmp_path_factory.mktemp("broken"), diverge=("sgdr_pair", "plane", "nowarm", "distilled", "G-B", "ensembles"))


@pytest.mark.parametrize("name", PAPER_FIGURES)
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


def test_runs_failing_the_trained_premise_are_marked(tmp_path):
    world = make_world(tmp_path, acc_nowarm=0.1, ga_end_acc=0.1, sgdr_acc=0.1)
    for name in ("fig1_robustness", "fig2_sgdr", "fig3_plane", "fig4_warmup", "fig5_freeze"):
        texts = all_texts(figures.build_figure(name, world[name], OPTIONS[name]))
        assert figures.UNTRAINED in texts, name
    # the threshold is claims.md's (config claims.min_acc_above_chance): 0.1 is not > 1/10 + 0
    ok = make_world(tmp_path / "ok")
    assert figures.UNTRAINED not in all_texts(figures.build_figure("fig4_warmup", ok["fig4_warmup"], OPTIONS["fig4_warmup"]))
    marks = figures.untrained_marks(world["fig4_warmup"]["metrics"], world["fig4_warmup"],
                                    {"claims": {"min_acc_above_chance": 0.0}})
    assert marks["LB no warmup"] == [figures.UNTRAINED] and marks["LB warmup"] == []


def test_similarity_panels_draw_chance_band_and_random_init_baseline(world):
    fig = figures.build_figure("fig4_warmup", world["fig4_warmup"], OPTIONS["fig4_warmup"])
    texts = all_texts(fig)
    assert "chance (one side shuffled: min-max of the shuffles)" in texts
    assert "random init (two untrained seeds)" in texts
    ax = next(a for a in fig.axes if a.get_title().startswith("(c)"))
    band = [c for c in ax.collections if "chance" in str(c.get_label())]
    assert band, "no chance band"
    ys = band[0].get_paths()[0].vertices[:, 1]
    # sim_csv: chance 0.1 +- 0.01 in every layer
    assert ys.min() == pytest.approx(0.09, abs=1e-9) and ys.max() == pytest.approx(0.11, abs=1e-9)


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
