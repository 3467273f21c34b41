"""The older lenses beside the paper's: fig7_lenses and fig8_sharpness, from the lens and sharpness tables.

Registered in :data:`closerlook.figures.BUILDERS` (same entry point, same robustness: a
missing or diverged table is drawn as far as it is finite and named in a note).

``layout`` (all leaves are file paths, from :func:`closerlook.config.figure_layout`):

- ``fig7_lenses``: ``{"paths": {"curve": csv, "line": csv}, "plane": {"grid": csv, "points": csv},
  "slices": {"w1"|"w2": {"slice1d": csv, "slice2d": csv}}, "pca": csv, "trajectory": csv,
  "views": csv, "pca_grid": csv, "perplexity": float}``
- ``fig8_sharpness``: ``{"paths": {"curve": csv, "line": csv}, "checkpoints": {label: csv}}``
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figures_common import _legend, _note, _palette, _ylabel
from .figures_plane import draw_plane_overlay, log_contour, plane_overlay_points
from .tables import read_table

PATH_STYLE = {"curve": ("black", "-", "o", "trained curve"), "line": ("0.35", "--", "s", "straight line")}


def _shares(views: pd.DataFrame | None) -> dict[str, float]:
    if views is None or not {"view", "variance_share"} <= set(views.columns):
        return {}
    return {str(v): float(s) for v, s in zip(views["view"], views["variance_share"])}


def _pct(share: float | None) -> str:
    if share is None or not np.isfinite(share):
        return "n/a"
    return f"{100 * share:.1f} %" if abs(share) >= 1e-3 else f"{100 * share:.1g} %"  # random views keep ~1e-5


def _line_row(axes, layout: Mapping, shares: Mapping) -> None:
    """Row 1: the straight line (and the trained curve beside it): loss and accuracy along t."""
    tabs = {k: read_table((layout.get("paths") or {}).get(k)) for k in ("curve", "line")}
    notes = [f"{k}: {p}" for k, (_, p) in tabs.items() if p]
    for ax, cols, title in ((axes[0], ("train_loss", "test_loss"), "(a) straight line: loss along t"),
                            (axes[1], ("train_acc", "test_acc"), "(b) straight line: accuracy along t")):
        for k, (df, _p) in tabs.items():
            if df is None or "t" not in df.columns:
                continue
            color, ls, mk, label = PATH_STYLE[k]
            for col, alpha in zip(cols, (1.0, 0.55)):
                if col in df.columns:
                    ax.plot(df["t"], df[col], color=color, ls=ls, marker=mk, ms=3, alpha=alpha,
                            label=f"{label}, {_ylabel(col).split(' (')[0]}")
        ax.set_xlabel("t (w1 at 0, w2 at 1)")
        ax.set_ylabel("loss (nats)" if "loss" in cols[0] else "accuracy")
        ax.set_title(title)
        _legend(ax)
        _note(ax, notes)
    axes[2].axis("off")
    lines = ["Share of the SGDR trajectory's variance", "(squared distance to its final point)",
             "in each view's span:", ""]
    lines += [f"{v}: {_pct(s)}" for v, s in shares.items()]
    axes[2].text(0.02, 0.98, "\n".join(lines) if shares else "views table missing", transform=axes[2].transAxes,
                 va="top", ha="left", fontsize=9, family="monospace")
    axes[2].set_title(f"(c) straight line keeps {_pct(shares.get('straight line w1-w2'))} of the trajectory")


def _slice_row(fig, axes, layout: Mapping, shares: Mapping, levels: int) -> None:
    """Row 2: filter-normalised random slices: 1-D around both endpoints, 2-D around each."""
    sl = layout.get("slices") or {}
    ax = axes[0]
    notes = []
    for end, color in (("w1", "tab:red"), ("w2", "tab:blue")):
        df, prob = read_table((sl.get(end) or {}).get("slice1d"))
        if prob:
            notes.append(f"{end}: {prob}")
        if df is not None and {"alpha", "train_loss"} <= set(df.columns):
            ax.plot(df["alpha"], df["train_loss"], color=color, marker="o", ms=3, label=f"around {end}, train")
            if "test_loss" in df.columns:
                ax.plot(df["alpha"], df["test_loss"], color=color, ls="--", alpha=0.6, label=f"around {end}, test")
    ax.set_yscale("log")
    ax.set_xlabel("alpha (filter-normalised direction d0)")
    ax.set_ylabel("loss (nats), log scale")
    ax.set_title("(d) filter-normalised 1-D slices")
    _legend(ax)
    _note(ax, notes)
    for ax, end, letter in ((axes[1], "w1", "e"), (axes[2], "w2", "f")):
        df, prob = read_table((sl.get(end) or {}).get("slice2d"))
        n = [f"slice: {prob}" if prob else ""] + log_contour(fig, ax, df, "train_loss", levels)
        ax.plot(0, 0, marker="*", ms=12, color="red", mec="black", ls="none", label=end)
        ax.set_xlabel("u (direction d0)")
        ax.set_ylabel("v (direction d1)")
        ax.set_title(f"({letter}) filter-normalised 2-D slice around {end}: train loss\n"
                     f"(keeps {_pct(shares.get(f'random 2-D at {end}'))} of the trajectory)")
        _legend(ax, loc="upper right")
        _note(ax, n)


def _pca_row(fig, axes, layout: Mapping, shares: Mapping, levels: int) -> None:
    """Row 3: the trajectory by dimensionality reduction: PCA plane with its loss surface, t-SNE, the spectrum."""
    pca, pprob = read_table(layout.get("pca"))
    traj, tprob = read_table(layout.get("trajectory"))
    grid, gprob = read_table(layout.get("pca_grid"))
    ev = pca["explained"].to_numpy(dtype=float) if pca is not None and "explained" in pca.columns else np.array([])
    ax = axes[0]
    notes = [f"{k}: {p}" for k, p in (("pca", pprob), ("trajectory", tprob), ("grid", gprob)) if p]
    notes += log_contour(fig, ax, grid, "train_loss", levels)
    ok = traj is not None and {"pc1", "pc2"} <= set(traj.columns)
    if ok:
        ax.plot(traj["pc1"], traj["pc2"], color="magenta", marker="o", ms=3, lw=1.0, label="SGDR trajectory")
        ax.plot(0, 0, marker="*", ms=12, color="red", mec="black", ls="none", label="final checkpoint (origin)")
    ax.set_xlabel(f"PC1 ({_pct(ev[0]) if ev.size > 0 else 'n/a'} of the variance)")
    ax.set_ylabel(f"PC2 ({_pct(ev[1]) if ev.size > 1 else 'n/a'} of the variance)")
    ax.set_title(f"(g) PCA plane of the trajectory: train loss\n(keeps {_pct(shares.get('PCA plane (top 2)'))})")
    _legend(ax, loc="upper right")
    _note(ax, notes)
    ax = axes[1]
    if ok and "tsne1" in traj.columns and np.isfinite(traj["tsne1"].to_numpy(dtype=float)).any():
        it = traj["iteration"].to_numpy(dtype=float) if "iteration" in traj.columns else np.arange(len(traj))
        sc = ax.scatter(traj["tsne1"], traj["tsne2"], c=it, cmap="plasma", s=18)
        ax.plot(traj["tsne1"], traj["tsne2"], color="0.6", lw=0.6, zorder=0)
        fig.colorbar(sc, ax=ax).set_label("training iteration")
        ax.set_title(f"(h) t-SNE of the {len(traj)} checkpoints (perplexity {layout.get('perplexity', 'n/a')})")
    else:
        n = len(traj) if traj is not None else 0
        ax.text(0.5, 0.5, f"t-SNE not drawn: perplexity {layout.get('perplexity')} needs N > 3 x perplexity\n"
                f"({n} checkpoints)", transform=ax.transAxes, ha="center", va="center", fontsize=8)
        ax.set_title("(h) t-SNE of the checkpoints")
    ax.set_xlabel("t-SNE 1 (no units)")
    ax.set_ylabel("t-SNE 2 (no units)")
    ax = axes[2]
    k = min(10, ev.size)
    if k:
        ax.bar(np.arange(1, k + 1), ev[:k], color="tab:purple", label="per axis")
        ax.plot(np.arange(1, k + 1), np.cumsum(ev[:k]), color="black", marker="o", ms=3, label="cumulative")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("PCA axis")
    ax.set_ylabel("share of the trajectory's variance")
    ax.set_title("(i) explained variance per PCA axis")
    _legend(ax)


def _plane_row(fig, axes, layout: Mapping, shares: Mapping, levels: int) -> None:
    """Row 4: Fig. 3's curve plane (mode connectivity) beside them, and every view's variance share."""
    pl = layout.get("plane") or {}
    grid, gprob = read_table(pl.get("grid"))
    points, pprob = read_table(pl.get("points"))
    anchors, traj, _ = plane_overlay_points(points)
    for ax, col, letter in ((axes[0], "train_loss", "j"), (axes[1], "test_loss", "k")):
        notes = [f"grid: {gprob}" if gprob else "", f"points: {pprob}" if pprob else ""]
        notes += log_contour(fig, ax, grid, col, levels) + draw_plane_overlay(ax, anchors, traj)
        ax.set_title(f"({letter}) Fig. 3 curve plane: {_ylabel(col).split(' (')[0]}\n"
                     f"(keeps {_pct(shares.get('curve plane (Fig. 3)'))} of the trajectory)")
        _legend(ax, loc="upper right")
        _note(ax, notes)
    ax = axes[2]
    if shares:
        names = list(shares)
        vals = [shares[v] if np.isfinite(shares[v]) else 0.0 for v in names]
        ax.barh(range(len(names)), vals, color=_palette(len(names)))
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {_pct(v)}", va="center", fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("share of the trajectory's variance in the view's span")
    ax.set_ylabel("view")
    ax.set_title("(l) how much of the trajectory each view keeps")


def fig7_lenses(layout: Mapping, options: Mapping) -> Figure:
    views, vprob = read_table(layout.get("views"))
    shares = _shares(views)
    levels = int(options.get("levels", 18))
    fig = Figure(figsize=(17, 20), layout="constrained")
    rows = fig.subplots(4, 3)
    _line_row(rows[0], layout, shares)
    _slice_row(fig, rows[1], layout, shares, levels)
    _pca_row(fig, rows[2], layout, shares, levels)
    _plane_row(fig, rows[3], layout, shares, levels)
    if vprob:
        _note(rows[3][2], [f"views: {vprob}"])
    fig.suptitle("Fig. 7 - the older lenses on the SGDR pair of Fig. 3: straight line, filter-normalised random "
                 "slices (Li et al.), trajectory PCA / t-SNE,\nand the curve plane of mode connectivity; "
                 "BN statistics recomputed at every point")
    return fig


# --------------------------------------------------------------------------- sharpness

SHARP_PANELS = (("lambda_max", "lambda_max (largest Hessian eigenvalue)"),
                ("lambda_min", "lambda_min (smallest Hessian eigenvalue)"),
                ("trace", "Hutchinson trace (+- 2 SE)"),
                ("lambda_max_scaled", "lambda_max x ||w||^2 (scale-aware)"))


def _path_panels(axes, layout: Mapping) -> None:
    tabs = {k: read_table((layout.get("paths") or {}).get(k)) for k in ("curve", "line")}
    notes = [f"{k}: {p}" for k, (_, p) in tabs.items() if p]
    for ax, (col, title), letter in zip(axes, SHARP_PANELS, "abcd"):
        for k, (df, _p) in tabs.items():
            if df is None or col not in df.columns:
                continue
            color, ls, mk, label = PATH_STYLE[k]
            ax.plot(df["t"], df[col], color=color, ls=ls, marker=mk, ms=4, label=label)
            if col == "trace" and "trace_se" in df.columns:
                ax.fill_between(df["t"], df[col] - 2 * df["trace_se"], df[col] + 2 * df["trace_se"], color=color,
                                alpha=0.15, lw=0)
        if col == "lambda_min":
            ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("t along the path (w1 at 0, w2 at 1)")
        ax.set_ylabel(col)
        ax.set_title(f"({letter}) {title}")
        _legend(ax)
        _note(ax, notes)


def _checkpoint_panels(axes, layout: Mapping) -> None:
    rows, notes = [], []
    for label, path in (layout.get("checkpoints") or {}).items():
        df, prob = read_table(path)
        if prob:
            notes.append(f"{label}: {prob}")
        if df is not None and not df.empty:
            rows.append((label, df.iloc[0]))
    labels = [lab for lab, _ in rows]
    colors = _palette(len(labels))
    for ax, cols, title, letter in ((axes[0], ("lambda_max", "lambda_min"), "Hessian extremes", "e"),
                                    (axes[1], ("trace",), "Hutchinson trace (+- 2 SE)", "f"),
                                    (axes[2], ("lambda_max_scaled",), "lambda_max x ||w||^2", "g")):
        width = 0.8 / len(cols)
        for j, col in enumerate(cols):
            vals = [float(r.get(col, np.nan)) for _, r in rows]
            err = [2 * float(r.get("trace_se", np.nan)) for _, r in rows] if col == "trace" else None
            ax.bar(np.arange(len(rows)) + (j - (len(cols) - 1) / 2) * width, vals, width, yerr=err, capsize=3,
                   color=colors, alpha=1.0 if j == 0 else 0.45, edgecolor="black", label=col)
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel(" / ".join(cols))
        ax.set_title(f"({letter}) at the configured checkpoints: {title}")
        if len(cols) > 1:
            _legend(ax)
        _note(ax, notes)


def fig8_sharpness(layout: Mapping, options: Mapping) -> Figure:
    fig = Figure(figsize=(17, 9), layout="constrained")
    top = fig.subfigures(2, 1)
    _path_panels(top[0].subplots(1, 4), layout)
    _checkpoint_panels(top[1].subplots(1, 3), layout)
    fig.suptitle("Fig. 8 - sharpness along the SGDR curve and line (top) and at chosen checkpoints (bottom); "
                 "training loss on a fixed subset, eval mode, BN recomputed")
    return fig


BUILDERS: dict[str, Callable[[Mapping, Mapping], Figure]] = {"fig7_lenses": fig7_lenses, "fig8_sharpness": fig8_sharpness}
