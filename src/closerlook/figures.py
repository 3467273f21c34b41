"""The paper's six figures (Gotmare et al. 2019, Figs. 1-6) from the pipeline's tables.

(The lens figures fig7_lenses and fig8_sharpness are drawn by :mod:`closerlook.figures_lenses`
with the helpers here; :func:`build_figure` dispatches to them.)

Entry point: :func:`make_figure` ``(name, layout, options, outputs)``; the figure itself
is built by :func:`build_figure` (returns a :class:`matplotlib.figure.Figure`, used by
the tests to inspect texts and legends). Only the tidy CSV tables of ``docs/DESIGN.md``
are read (curve/line, metrics, similarity, grid/points), never checkpoints.

``layout`` per figure (all leaves are file paths, str or Path):

- ``fig1_robustness``: ``{"curves": {label: {inst: {"curve": csv, "line": csv}}}}``
- ``fig2_sgdr``: ``{"metrics": {"SGDR": {inst: csv}, "SGD": {inst: csv}},
  "specs": {"SGDR": run_spec, "SGD": run_spec}, "sgdr_pairs": {label: {inst: {"curve", "line"}}},
  "sgd_pairs": {...}, "reference_pairs": {...}}``
- ``fig3_plane``: ``{"grid": csv, "points": csv}``
- ``fig4_warmup`` / ``fig5_freeze``: ``{"metrics": {label: {inst: csv}}, "specs": {label: spec},
  "similarity": {label: {inst: csv}}}``
- ``fig6_distill``: ``{"similarity": {label: {inst: csv}}, "metrics": {label: {inst: csv}}}``

Robustness: a table whose ``status`` says ``diverged`` (NaN numbers), a missing file or a
missing measure never raises; what is finite is drawn and the run is marked
"(diverged)" / "(missing)" in the legend and in a note on the panel.
Every output is written through :func:`closerlook.io.atomic_path`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from . import verdicts as V  # noqa: E402
from .io import atomic_path  # noqa: E402
from .paths import FIGURE_FORMATS, FIGURES  # noqa: E402
from .tables import ANCHORS, epoch_key, path_barrier, plane_arrays, read_table, read_tables, whole_sample  # noqa: E402

DEFAULT_DPI = 150


# --------------------------------------------------------------------------- helpers


def _decorate(label: str, problems: Sequence[str | None]) -> str:
    probs = sorted({p for p in problems if p})
    return f"{label} ({', '.join(probs)})" if probs else label


UNTRAINED = "failed premise: not trained"


def _margin(options: Mapping) -> float:
    return float(V.rules_with_defaults((options or {}).get("claims"))["min_acc_above_chance"])


def untrained_marks(metrics: Mapping | None, layout: Mapping, options: Mapping) -> dict[str, list[str]]:
    """Per run label: ``[UNTRAINED]`` for each seed whose run fails the trained-run premise of
    claims.md (:func:`closerlook.verdicts.run_trained`: same rule, same threshold); diverged runs
    are marked by their status already."""
    k = V.read_num_classes((layout or {}).get("data_info"))
    out: dict[str, list[str]] = {}
    for label, insts in (metrics or {}).items():
        out[label] = []
        for inst, path in sorted((insts or {}).items()):
            df, prob = read_table(path)
            if k and prob is None and not V.run_trained(df, prob, k, _margin(options), inst)["holds"]:
                out[label].append(UNTRAINED)
    return out


def _endpoints_untrained(tables: Mapping[str, Mapping], layout: Mapping, options: Mapping) -> list[str]:
    """``[UNTRAINED]`` when an endpoint of a path (test accuracy at t = 0 or 1) fails the trained-run premise."""
    k = V.read_num_classes((layout or {}).get("data_info"))
    out = []
    for t in tables.values():
        df = t.get("curve") if t.get("curve") is not None else t.get("line")
        if k and df is not None and "test_acc" in df.columns and len(df):
            a = df.sort_values("t")["test_acc"].to_numpy(dtype=float)
            if not V.trained(min(a[0], a[-1]), k, _margin(options), "endpoints")["holds"]:
                out.append(UNTRAINED)
    return out


def _note(ax, lines: Sequence[str]) -> None:
    """A small boxed note in the panel's corner (e.g. which runs diverged)."""
    lines = [ln for ln in lines if ln]
    if not lines:
        return
    ax.text(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=7, va="bottom", ha="left",
            color="firebrick", bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="firebrick", alpha=0.85))


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def _aggregate(series: Sequence[pd.Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align series on their index: (x, mean, min, max) across seeds, NaN-aware."""
    series = [s[~s.index.duplicated()] for s in series if s is not None and len(s)]
    if not series:
        e = np.array([])
        return e, e, e, e
    df = pd.concat(series, axis=1).sort_index()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (df.index.to_numpy(dtype=float), df.mean(axis=1, skipna=True).to_numpy(dtype=float),
                df.min(axis=1, skipna=True).to_numpy(dtype=float), df.max(axis=1, skipna=True).to_numpy(dtype=float))


def _plot_seeds(ax, series: Sequence[pd.Series], label: str, color, ls="-", marker=None, lw=1.6,
                band=True, alpha=1.0) -> None:
    """One line per run: the seed mean, with the min-max band over seeds when there are several."""
    x, mean, lo, hi = _aggregate(series)
    if x.size == 0:
        ax.plot([], [], color=color, ls=ls, label=label)  # keeps the legend entry
        return
    n = len([s for s in series if s is not None and len(s)])
    ax.plot(x, mean, color=color, ls=ls, marker=marker, lw=lw, ms=3.5, label=label + (f" (mean of {n} seeds)" if n > 1 else ""),
            alpha=alpha)
    if band and n > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


def _palette(n: int):
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", max(n, 1))


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.05)


def _logy_if_positive(ax) -> None:
    ys = []
    for ln in ax.get_lines():
        ys.extend(_finite(ln.get_ydata()))
    if ys and min(ys) > 0:
        ax.set_yscale("log")


def _series(df: pd.DataFrame | None, x: str, y: str) -> pd.Series | None:
    if df is None or x not in df.columns or y not in df.columns:
        return None
    d = df[[x, y]].dropna(subset=[x])
    return pd.Series(d[y].to_numpy(dtype=float), index=d[x].to_numpy(dtype=float))


def _legend(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, framealpha=0.85, **kw)


def _layer_table(paths: Mapping[str, Any], measure: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per inst: the rows of ``measure`` sorted by layer_index; plus the problems met."""
    out, problems = {}, []
    for inst, path in (paths or {}).items():
        df, prob = read_table(path)
        problems.append(prob)
        if df is None or "measure" not in df.columns:
            continue
        d = whole_sample(df)
        d = d[d["measure"].astype(str) == measure]
        if d.empty:
            problems.append(f"no {measure}")
            continue
        out[str(inst)] = d.sort_values("layer_index")
    return out, problems


# --------------------------------------------------------------------------- learning rates


def iters_per_epoch(metrics: pd.DataFrame | None) -> int | None:
    """Iterations per epoch: ``iteration`` at the first epoch row (iteration / epoch if epoch != 1)."""
    if metrics is None or "iteration" not in metrics.columns or "epoch" not in metrics.columns:
        return None
    d = metrics[(metrics["epoch"] > 0) & metrics["iteration"].notna()]
    if d.empty:
        return None
    row = d.iloc[0]
    ipe = float(row["iteration"]) / float(row["epoch"])
    return max(int(round(ipe)), 1) if math.isfinite(ipe) and ipe > 0 else None


def lr_series(spec: Mapping | None, metrics: pd.DataFrame | None, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray, str]:
    """(iterations, lr, source): from ``schedules.lr_at`` with the run spec when possible, else metrics ``lr``."""
    ipe = iters_per_epoch(metrics)
    if spec and ipe:
        try:
            from .schedules import lr_at

            epochs = spec.get("epochs")
            total = int(round(float(epochs) * ipe)) if epochs else int(np.nanmax(metrics["iteration"].to_numpy(dtype=float)))
            step = max(1, total // max_points)
            its = np.arange(0, max(total, 1), step)
            lrs = np.array([lr_at(spec, int(i), ipe, total) for i in its], dtype=float)
            return its, lrs, "schedule"
        except Exception:  # noqa: BLE001 - fall back to the logged lr
            pass
    if metrics is not None and "lr" in metrics.columns and "iteration" in metrics.columns:
        d = metrics[["iteration", "lr"]].dropna()
        return d["iteration"].to_numpy(dtype=float), d["lr"].to_numpy(dtype=float), "metrics"
    return np.array([]), np.array([]), "none"


def _first_metrics(paths: Mapping[str, Any] | None) -> tuple[pd.DataFrame | None, list]:
    probs = []
    first = None
    for _inst, p in sorted((paths or {}).items()):
        df, prob = read_table(p)
        probs.append(prob)
        if first is None and df is not None and not df.empty:
            first = df
    return first, probs


# --------------------------------------------------------------------------- path panels


# how each path between two checkpoints is drawn: (line style, marker, legend name)
PATH_STYLES = {"curve": ("-", "o", "Bezier curve"), "line": ("--", None, "line"),
               "aligned": ("-.", None, "line to aligned end"), "repaired": (":", None, "aligned line, REPAIR"),
               "autoneb": ("-", "s", "AutoNEB")}


def _path_tables(insts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, pd.DataFrame | None]], list]:
    """Per instance, the table of every path kind it lists (curve and line always; aligned, autoneb when configured)."""
    out, probs = {}, []
    for inst, files in (insts or {}).items():
        out[str(inst)] = {}
        for kind in [k for k in PATH_STYLES if k in ("curve", "line") or k in (files or {})]:
            df, prob = read_table((files or {}).get(kind))
            probs.append(prob)
            out[str(inst)][kind] = df
    return out, probs


def _draw_pairs(ax, pairs: Mapping[str, Any], column: str, title: str, colors=None, log=True) -> list[str]:
    """Curve (solid) vs straight line (dashed) along t for every pair; returns note lines."""
    notes = []
    labels = list(pairs or {})
    colors = colors or _palette(len(labels))
    for k, label in enumerate(labels):
        tables, probs = _path_tables(pairs[label])
        name = _decorate(label, probs)
        if any(probs):
            notes.append(f"{label}: {', '.join(sorted({p for p in probs if p}))}")
        kinds = [kd for kd in PATH_STYLES if any(kd in t for t in tables.values())]
        for kind in kinds:
            ls, marker, what = PATH_STYLES[kind]
            ser = [_series(t.get(kind), "t", column) for t in tables.values()]
            _plot_seeds(ax, ser, f"{name} {what if kind not in ('curve', 'line') else kind}", colors[k % len(colors)],
                        ls=ls, marker=marker)
    if not labels:
        ax.text(0.5, 0.5, "no pairs configured", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("t along the path (0 = w1, 1 = w2)")
    ax.set_ylabel(_ylabel(column))
    ax.set_title(title)
    if log and column.endswith("loss"):
        _logy_if_positive(ax)
    _legend(ax)
    return notes


def _ylabel(column: str) -> str:
    kind = "train" if column.startswith("train") else "test (validation)"
    return f"{kind} loss (nats)" if column.endswith("loss") else f"{kind} accuracy (fraction)"


# --------------------------------------------------------------------------- figures


def fig1_robustness(layout: Mapping, options: Mapping) -> Figure:
    curves = layout.get("curves", {}) or {}
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = _palette(len(curves))
    notes = []
    for k, label in enumerate(curves):
        tables, probs = _path_tables(curves[label])
        probs = list(probs) + _endpoints_untrained(tables, layout, options)
        name = _decorate(label, probs)
        if any(probs):
            notes.append(f"{label}: {', '.join(sorted({p for p in probs if p}))}")
        c = colors[k % len(colors)]
        for ax, col in ((ax_acc, "test_acc"), (ax_loss, "train_loss")):
            _plot_seeds(ax, [_series(t["curve"], "t", col) for t in tables.values()], name, c, marker="o")
            _plot_seeds(ax, [_series(t["line"], "t", col) for t in tables.values()], "_nolegend_", c, ls=":",
                        lw=1.0, band=False, alpha=0.7)
    for ax, col in ((ax_acc, "test_acc"), (ax_loss, "train_loss")):
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("t along the path (0 = G, 1 = variant)")
        ax.set_ylabel(_ylabel(col))
    ax_acc.set_title("(a) test (validation) accuracy along the curve")
    ax_loss.set_title("(b) train loss along the curve")
    _logy_if_positive(ax_loss)
    extra = [Line2D([], [], color="grey", ls="-", marker="o", ms=3, label="trained curve"),
             Line2D([], [], color="grey", ls=":", label="straight line")]
    for ax in (ax_acc, ax_loss):
        h, lab = ax.get_legend_handles_labels()
        ax.legend(h + extra, lab + [e.get_label() for e in extra], fontsize=7, framealpha=0.85)
    _note(ax_acc, notes)
    if not curves:
        ax_acc.text(0.5, 0.5, "no curves configured", transform=ax_acc.transAxes, ha="center")
    fig.suptitle("Fig. 1 - mode connectivity between the reference recipe G and variants A-F")
    return fig


def _sgdr_restarts(spec: Mapping | None, max_epoch: float) -> list[float]:
    if not spec or (spec.get("schedule") or {}).get("name") != "sgdr":
        return []
    sch = spec["schedule"]
    t, length, ends = 0.0, float(sch.get("T0", 1)), []
    while t + length < max_epoch + 1e-9 and len(ends) < 100:
        t += length
        ends.append(t)
        length *= float(sch.get("Tmult", 1))
    return ends


def fig2_sgdr(layout: Mapping, options: Mapping) -> Figure:
    metrics = layout.get("metrics", {}) or {}
    specs = layout.get("specs", {}) or {}
    fig = Figure(figsize=(15, 8.6), layout="constrained")
    axes = fig.subplots(2, 3)
    ax_a, ax_b, ax_c = axes[0]
    ax_d, ax_e, ax_f = axes[1]
    colors = {"SGDR": "tab:blue", "SGD": "tab:orange"}
    notes_a, notes_b = [], []
    max_epoch = 0.0
    untrained = untrained_marks(metrics, layout, options)
    for run in ("SGDR", "SGD"):
        dfs, probs = read_tables(metrics.get(run, {}))
        probs = list(probs) + untrained.get(run, [])
        name = _decorate(run, probs)
        if any(probs):
            notes_a.append(f"{run}: {', '.join(sorted({p for p in probs if p}))}")
        ser = [_series(d, "epoch", "test_acc") for d in dfs]
        _plot_seeds(ax_a, ser, name, colors[run], marker="o", lw=2.0 if run == "SGDR" else 1.2,
                    alpha=1.0 if run == "SGDR" else 0.6)
        for d in dfs:
            if d is not None and "epoch" in d.columns and d["epoch"].notna().any():
                max_epoch = max(max_epoch, float(d["epoch"].max()))
        first, _ = _first_metrics(metrics.get(run, {}) or {})
        its, lrs, src = lr_series(specs.get(run), first)
        if its.size:
            ax_b.plot(its, np.where(lrs > 0, lrs, np.nan), color=colors[run], lw=1.5,
                      label=f"{name} ({'from run spec' if src == 'schedule' else 'logged per epoch'})",
                      drawstyle="steps-post" if src == "metrics" else "default")
        else:
            notes_b.append(f"{run}: no schedule or metrics")
    for e in _sgdr_restarts(specs.get("SGDR"), max_epoch):
        ax_a.axvline(e, color="tab:blue", lw=0.7, ls=":", alpha=0.7)
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel(_ylabel("test_acc"))
    ax_a.set_title("(a) test (validation) accuracy; dotted: SGDR restarts")
    _legend(ax_a)
    _note(ax_a, notes_a)
    ax_b.set_xlabel("iteration")
    ax_b.set_ylabel("learning rate")
    ax_b.set_title("(b) learning-rate schedules (log scale)")
    _logy_if_positive(ax_b)
    _legend(ax_b)
    _note(ax_b, notes_b)

    _note(ax_c, _draw_pairs(ax_c, layout.get("sgdr_pairs", {}), "train_loss",
                            "(c) SGDR iterates: curve (solid) vs line (dashed)"))
    _note(ax_d, _draw_pairs(ax_d, layout.get("sgd_pairs", {}), "train_loss",
                            "(d) step-decay SGD iterates: curve vs line"))
    _note(ax_e, _draw_pairs(ax_e, layout.get("reference_pairs", {}), "train_loss",
                            "(e) reference: two seeds of one recipe", colors=["dimgray", "black", "silver"]))

    _barrier_table(ax_f, layout)
    fig.suptitle("Fig. 2 - SGDR vs step-decay SGD seen through mode connectivity")
    return fig


def _barrier_table(ax_f, layout: Mapping) -> None:
    """(f) the numbers the claims use: barrier heights in nats (aligned / AutoNEB columns when a pair has them)."""
    rows, extra = [], []
    for group, key in (("SGDR", "sgdr_pairs"), ("SGD", "sgd_pairs"), ("ref", "reference_pairs")):
        for label, insts in (layout.get(key, {}) or {}).items():
            tables, probs = _path_tables(insts)
            for inst, t in tables.items():
                extra += [k for k in ("aligned", "autoneb") if k in t and k not in extra]
                rows.append([group, f"{label}/{inst}", _fmt(path_barrier(t["line"])), _fmt(path_barrier(t["curve"]))]
                            + [t.get(k) for k in ("aligned", "autoneb")])
    rows = [r[:4] + [_fmt(path_barrier(df)) for k, df in zip(("aligned", "autoneb"), r[4:]) if k in extra] for r in rows]
    ax_f.axis("off")
    ax_f.set_title("(f) barrier heights, train loss (nats)")
    if rows:
        names = {"aligned": "aligned line", "autoneb": "AutoNEB excess"}
        cols = ["runs", "pair / seed", "line barrier", "curve excess"] + [names[k] for k in ("aligned", "autoneb") if k in extra]
        width = 0.44 / (len(cols) - 2)
        tab = ax_f.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="left",
                         colWidths=[0.12, 0.44] + [width] * (len(cols) - 2))
        tab.auto_set_font_size(False)
        tab.set_fontsize(7.5)
        tab.scale(1.0, 1.3)
    ax_f.text(0.0, 0.02, "barrier = max over t of the loss - max(loss at t=0, t=1);\n"
              "nan = path diverged or missing", transform=ax_f.transAxes, fontsize=7, va="bottom")


def _fmt(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3f}"


def bezier(p0, p1, p2, n: int = 101) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * np.asarray(p1) + t ** 2 * np.asarray(p2)


def plane_overlay_points(points: pd.DataFrame | None) -> tuple[dict, pd.DataFrame | None, float]:
    """From a plane's points table: the anchors' (u, v), the projected trajectory in epoch order, its max rel. distance."""
    anchors, traj, max_rel = {}, None, float("nan")
    if points is not None and {"label", "u", "v"} <= set(points.columns):
        pts = points.copy()
        pts["label"] = pts["label"].astype(str)
        for a in ANCHORS:
            r = pts[pts["label"] == a]
            if not r.empty and np.isfinite(r[["u", "v"]].to_numpy(dtype=float)).all():
                anchors[a] = r[["u", "v"]].to_numpy(dtype=float)[0]
        traj = pts[~pts["label"].isin(ANCHORS)].copy()
        traj = traj.iloc[sorted(range(len(traj)), key=lambda i: epoch_key(traj["label"].iloc[i]))]
        if "rel_distance" in traj.columns and np.isfinite(traj["rel_distance"].to_numpy(dtype=float)).any():
            max_rel = float(np.nanmax(traj["rel_distance"].to_numpy(dtype=float)))
    return anchors, traj, max_rel


def log_contour(fig, ax, grid: pd.DataFrame | None, col: str, levels: int = 18) -> list[str]:
    """Filled log-scale contours of ``col`` over a (u, v) grid table, with a colour bar; returns notes."""
    notes = []
    if grid is not None and {"u", "v", col} <= set(grid.columns) and np.isfinite(grid[col]).any():
        U, V, Z = plane_arrays(grid, col)
        zf = _finite(Z)
        zpos = zf[zf > 0]
        if zpos.size:
            lo, hi = float(zpos.min()), float(zpos.max())
            if hi <= lo * 1.0001:
                hi = lo * 1.01
            lv = np.geomspace(lo, hi, int(levels))
            Zm = np.ma.masked_invalid(np.where(Z > 0, Z, np.nan))
            cs = ax.contourf(U, V, Zm, levels=lv, norm=mcolors.LogNorm(lo, hi), cmap="viridis_r", extend="neither")
            ax.contour(U, V, Zm, levels=lv[::3], colors="white", linewidths=0.4, alpha=0.6)
            cb = fig.colorbar(cs, ax=ax, format="%.3g")
            cb.set_label(f"{_ylabel(col)}, log scale")
            if not np.isfinite(Z).all():
                notes.append(f"{int((~np.isfinite(Z)).sum())} grid points diverged (white)")
        else:
            notes.append("no positive finite loss on the grid")
    else:
        notes.append("no finite values on the grid")
    return notes


def draw_plane_overlay(ax, anchors: Mapping, traj: pd.DataFrame | None) -> list[str]:
    """The trained Bezier curve, the straight line, the anchors and the projected trajectory; returns notes."""
    notes = []
    if {"w1", "w2", "bend"} <= set(anchors):
        b = bezier(anchors["w1"], anchors["bend"], anchors["w2"])
        ax.plot(b[:, 0], b[:, 1], color="black", lw=1.3, ls="-", label="trained curve (Bezier)",
                path_effects=[patheffects.withStroke(linewidth=3.2, foreground="white")])
        ax.plot(*np.array([anchors["w1"], anchors["w2"]]).T, color="0.25", lw=1.0, ls="--", label="straight line")
    for a, mk in (("w1", "o"), ("w2", "s"), ("bend", "^")):
        if a in anchors:
            ax.plot(*anchors[a], marker=mk, ms=9, color="red" if a != "bend" else "orange", mec="black",
                    ls="none", label={"bend": "bend (control point)"}.get(a, a))
            ax.annotate(a, anchors[a], xytext=(6, 6), textcoords="offset points", fontsize=8, color="black",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7, lw=0))
    if traj is not None and len(traj):
        xy = traj[["u", "v"]].to_numpy(dtype=float)
        ok = np.isfinite(xy).all(axis=1)
        ax.plot(xy[ok, 0], xy[ok, 1], color="magenta", marker="o", ms=4, lw=1.3, label="SGDR trajectory (projected)")
        for (u, v), lab, good in zip(xy, traj["label"], ok):
            if good:
                ax.annotate(str(lab), (u, v), xytext=(4, -10), textcoords="offset points", fontsize=7, color="darkmagenta",
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.6, lw=0))
        if (~ok).any():
            notes.append("not projected: " + ", ".join(traj["label"][~ok].astype(str)))
    ax.set_xlabel("u (plane coordinate, weight units)")
    ax.set_ylabel("v (plane coordinate, weight units)")
    return notes


def fig3_plane(layout: Mapping, options: Mapping) -> Figure:
    grid, gprob = read_table(layout.get("grid"))
    points, pprob = read_table(layout.get("points"))
    fig = Figure(figsize=(13, 5.4), layout="constrained")
    axes = fig.subplots(1, 2)
    anchors, traj, max_rel = plane_overlay_points(points)
    for ax, col, title in ((axes[0], "train_loss", "(a) train loss"), (axes[1], "test_loss", "(b) test (validation) loss")):
        notes = [f"grid: {gprob}" if gprob else "", f"points: {pprob}" if pprob else ""]
        notes += log_contour(fig, ax, grid, col, int(options.get("levels", 18)))
        notes += draw_plane_overlay(ax, anchors, traj)
        ax.set_title(title)
        _legend(ax, loc="upper right")
        _note(ax, notes)
    rel = f"max distance of projected iterates from the plane: {100 * max_rel:.1f} % of ||w - w1||" if np.isfinite(max_rel) else "no projected iterates"
    bad = [f"{run}: {UNTRAINED}" for run, m in untrained_marks(layout.get("metrics"), layout, options).items() if m]
    rel += "".join(f"; {b}" for b in bad)
    fig.suptitle(f"Fig. 3 - loss surface on the plane through w1, w2 and the curve's bend\n{rel}")
    return fig


def _run_roles(specs: Mapping[str, Mapping] | None) -> dict[str, float]:
    """Iterations to mark per run: end of warmup or of freezing."""
    out = {}
    for label, spec in (specs or {}).items():
        spec = spec or {}
        n = ((spec.get("warmup") or {}).get("iterations") or 0)
        f = ((spec.get("freeze") or {}).get("iterations") or 0)
        if n or f:
            out[label] = float(max(n, f))
    return out


def _layer_positions(per_label: Mapping[str, tuple]) -> tuple[dict[int, str], dict[int, int]]:
    layer_names: dict[int, str] = {}
    for tabs, _ in per_label.values():
        for d in tabs.values():
            for i, n in zip(d["layer_index"], d["layer"]):
                if np.isfinite(i):
                    layer_names.setdefault(int(i), str(n))
    order = sorted(layer_names)
    return layer_names, {i: k for k, i in enumerate(order)}


def _by_layer(d: pd.DataFrame, column: str, pos: Mapping[int, int]) -> pd.Series:
    return pd.Series(d[column].to_numpy(dtype=float), index=[pos.get(int(i), np.nan) for i in d["layer_index"]])


def _chance_band(ax, tabs_all: Sequence[pd.DataFrame], pos: Mapping[int, int]) -> None:
    """The shuffle-chance level as a band: min to max over the K shuffles (and over seeds and runs)."""
    cols = [c for c in ("chance_low", "chance_high") if all(c in d.columns for d in tabs_all)]
    if len(cols) == 2 and tabs_all:
        x, _, lo, _ = _aggregate([_by_layer(d, "chance_low", pos) for d in tabs_all])
        _, _, _, hi = _aggregate([_by_layer(d, "chance_high", pos) for d in tabs_all])
        if x.size and np.isfinite(hi).any():
            ax.fill_between(x, lo, hi, color="grey", alpha=0.3, lw=0, label="chance (one side shuffled: min-max of the shuffles)")
            return
    ch = [_by_layer(d, "chance", pos) for d in tabs_all if "chance" in d.columns]
    x, m, _, _ = _aggregate(ch)
    if x.size and np.isfinite(m).any():
        ax.plot(x, m, color="grey", ls="--", lw=1.0, alpha=0.8, label="chance (one side shuffled)")


def _similarity_panel(ax, sim: Mapping[str, Mapping[str, Any]], measure: str, colors, title: str,
                      ylabel: str | None = None, marks: Mapping[str, list] | None = None,
                      baseline: Mapping[str, Any] | None = None) -> None:
    """Per-layer ``measure`` per run (mean over seeds, min-max band), the chance band, the random-init baseline."""
    notes = []
    per_label = {label: _layer_table(sim[label], measure) for label in sim or {}}
    base = _layer_table(baseline, measure) if baseline else ({}, [])
    layer_names, pos = _layer_positions({**per_label, "_baseline": base})
    for k, (label, (tabs, probs)) in enumerate(per_label.items()):
        probs = list(probs) + list((marks or {}).get(label, []))
        if any(probs):
            notes.append(f"{label}: {', '.join(sorted({p for p in probs if p}))}")
        ser = [_by_layer(d, "value", pos) for d in tabs.values()]
        c = colors[k % len(colors)]
        _plot_seeds(ax, ser, _decorate(label, probs), c, marker="o")
        if len(ser) > 1:  # the individual seeds as points
            for sr in ser:
                ax.plot(sr.index, sr.to_numpy(), ls="none", marker=".", color=c, alpha=0.5)
    _chance_band(ax, [d for tabs, _ in per_label.values() for d in tabs.values()], pos)
    if base[0]:
        x, m, _, _ = _aggregate([_by_layer(d, "value", pos) for d in base[0].values()])
        ax.plot(x, m, color="black", ls=":", lw=1.2, marker="x", ms=4, label="random init (two untrained seeds)")
    if layer_names:
        ax.set_xticks(range(len(layer_names)))
        ax.set_xticklabels([layer_names[i] for i in sorted(layer_names)], rotation=40, ha="right", fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no '{measure}' values", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("layer (input -> output)")
    ax.set_ylabel(ylabel or f"{measure} similarity")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    _legend(ax)
    _note(ax, notes)


def _metrics_panels(ax_acc, ax_lr, metrics: Mapping, specs: Mapping, colors,
                    untrained: Mapping[str, list] | None = None) -> None:
    notes_acc, marks = [], _run_roles(specs)
    for k, label in enumerate(metrics or {}):
        dfs, probs = read_tables(metrics[label])
        probs = list(probs) + list((untrained or {}).get(label, []))
        name = _decorate(label, probs)
        if any(probs):
            notes_acc.append(f"{label}: {', '.join(sorted({p for p in probs if p}))}")
        c = colors[k % len(colors)]
        _plot_seeds(ax_acc, [_series(d, "epoch", "test_acc") for d in dfs], name, c, marker="o")
        if ax_lr is not None:
            first = next((d for d in dfs if d is not None and not d.empty), None)
            its, lrs, src = lr_series((specs or {}).get(label), first)
            if its.size:
                ax_lr.plot(its, lrs, color=c, lw=2.2 - 0.4 * (k % 3), ls=("-", "--", "-.", ":")[k % 4], label=name, drawstyle="steps-post" if src == "metrics" else "default")
            if label in marks:
                ax_lr.axvline(marks[label], color=c, ls=":", lw=1.0)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(_ylabel("test_acc"))
    _legend(ax_acc)
    _note(ax_acc, notes_acc)
    if ax_lr is not None:
        # batch sizes differ 10x: a symlog x keeps the short warmup ramp of a large-batch run visible
        ax_lr.set_xscale("symlog", linthresh=10)
        ax_lr.set_xlabel("iteration (linear below 10, log above)")
        ax_lr.set_ylabel("learning rate")
        _legend(ax_lr)


def _warmup_like(layout: Mapping, options: Mapping, fig_title: str) -> Figure:
    measure = str(options.get("measure", "cca_mean"))
    companion = str(options.get("companion_measure", "linear_cka"))
    labels = list(dict.fromkeys(list(layout.get("metrics", {}) or {}) + list(layout.get("similarity", {}) or {})))
    pal = _palette(len(labels))
    colors = {lab: pal[i % len(pal)] for i, lab in enumerate(labels)}
    fig = Figure(figsize=(12, 9), layout="constrained")
    (ax_acc, ax_lr), (ax_sim, ax_cka) = fig.subplots(2, 2)
    metrics = layout.get("metrics", {}) or {}
    sim = layout.get("similarity", {}) or {}
    marks = untrained_marks(metrics, layout, options)
    _metrics_panels(ax_acc, ax_lr, metrics, layout.get("specs", {}) or {}, [colors[lab] for lab in metrics], marks)
    ax_acc.set_title("(a) test (validation) accuracy")
    ax_lr.set_title("(b) learning rate per iteration; dotted: end of warmup / freezing")
    kw = dict(marks=marks, baseline=layout.get("baseline"))
    _similarity_panel(ax_sim, sim, measure, [colors[lab] for lab in sim],
                      f"(c) {measure}: iteration 0 vs end of warmup, same run", **kw)
    _similarity_panel(ax_cka, sim, companion, [colors[lab] for lab in sim], f"(d) companion: {companion}", **kw)
    fig.suptitle(fig_title)
    return fig


def fig4_warmup(layout: Mapping, options: Mapping) -> Figure:
    return _warmup_like(layout, options, "Fig. 4 - large-batch training with and without learning-rate warmup")


def fig5_freeze(layout: Mapping, options: Mapping) -> Figure:
    return _warmup_like(layout, options, "Fig. 5 - freezing the FC layers instead of warming up")


def fig6_distill(layout: Mapping, options: Mapping) -> Figure:
    measure = str(options.get("measure", "cca_mean"))
    companion = str(options.get("companion_measure", "linear_cka"))
    sim = layout.get("similarity", {}) or {}
    metrics = layout.get("metrics", {}) or {}
    labels = list(dict.fromkeys(list(sim) + list(metrics)))
    pal = _palette(len(labels))
    colors = {lab: pal[i % len(pal)] for i, lab in enumerate(labels)}
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax_sim, ax_cka, ax_acc = fig.subplots(1, 3)
    marks = untrained_marks(metrics, layout, options)
    kw = dict(marks=marks, baseline=layout.get("baseline"))
    _similarity_panel(ax_sim, sim, measure, [colors[lab] for lab in sim], f"(a) {measure}: student vs teacher", **kw)
    _similarity_panel(ax_cka, sim, companion, [colors[lab] for lab in sim], f"(b) companion: {companion}", **kw)
    if metrics:
        _metrics_panels(ax_acc, None, metrics, {}, [colors[lab] for lab in metrics], marks)
    else:
        ax_acc.text(0.5, 0.5, "no metrics", transform=ax_acc.transAxes, ha="center")
    ax_acc.set_title("(c) students' test (validation) accuracy")
    fig.suptitle("Fig. 6 - what distillation transfers: per-layer similarity of students to the teacher")
    return fig


BUILDERS: dict[str, Callable[[Mapping, Mapping], Figure]] = {
    "fig1_robustness": fig1_robustness,
    "fig2_sgdr": fig2_sgdr,
    "fig3_plane": fig3_plane,
    "fig4_warmup": fig4_warmup,
    "fig5_freeze": fig5_freeze,
    "fig6_distill": fig6_distill,
}


def _fig9(layout: Mapping, options: Mapping) -> Figure:
    from .figures_ensembles import fig9_ensembles  # (it draws with this module's helpers)

    return fig9_ensembles(layout, options)


BUILDERS["fig9_ensembles"] = _fig9
BUILDERS["fig6_distill"] = __import__("closerlook.figures_fidelity").figures_fidelity.with_fidelity_panel(fig6_distill)
BUILDERS["fig10_warmup_sharpness"] = lambda lay, opt: __import__("closerlook.figures_sharpness_trace").figures_sharpness_trace.fig10_warmup_sharpness(lay, opt)


def build_figure(name: str, layout: Mapping, options: Mapping | None = None) -> Figure:
    """Build (not save) figure ``name``; raises ValueError for an unknown name."""
    from .figures_lenses import BUILDERS as LENS_BUILDERS  # draws with this module's helpers: imported late

    builders = {**BUILDERS, **LENS_BUILDERS}
    if name not in builders:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    _style()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return builders[name](layout or {}, dict(options or {}))


def save_figure(fig: Figure, outputs: Sequence[str | Path], dpi: float = DEFAULT_DPI) -> list[Path]:
    """Save ``fig`` to every path in ``outputs`` (format from the suffix), atomically."""
    written = []
    for out in outputs:
        out = Path(out)
        fmt = out.suffix.lstrip(".").lower() or "png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(out)
    return written


def make_figure(name: str, layout: Mapping, options: Mapping | None, outputs: Sequence[str | Path]) -> Figure:
    """Build figure ``name`` from ``layout`` and write it to ``outputs``.

    ``options`` = ``config["figures"][name]`` merged with ``{format, dpi}``. When ``outputs``
    is a single stem without suffix, one file per ``options["format"]`` is written.
    Returns the Figure (for inspection).
    """
    options = dict(options or {})
    dpi = float(options.get("dpi", DEFAULT_DPI))
    outs = [Path(o) for o in ([outputs] if isinstance(outputs, (str, Path)) else outputs)]
    expanded = []
    for o in outs:
        if o.suffix:
            expanded.append(o)
        else:
            expanded.extend(o.with_suffix("." + f) for f in options.get("format", FIGURE_FORMATS))
    fig = build_figure(name, layout, options)
    save_figure(fig, expanded, dpi=dpi)
    return fig
