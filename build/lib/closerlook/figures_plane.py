"""Fig. 3 (the loss plane through w1, w2 and a bend) and its drawing helpers, which the lens
figure (fig7) reuses for its planes."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import patheffects
from matplotlib.figure import Figure

from .tables import ANCHORS, epoch_key, plane_arrays, read_table
from .figures_common import UNTRAINED, _finite, _legend, _note, _ylabel, untrained_marks


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
