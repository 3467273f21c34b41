"""Figs. 1-2 (paths between checkpoints): loss / accuracy along curves and lines, SGDR vs SGD with
the barrier table; aligned and AutoNEB paths when a pair lists them."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .tables import path_barrier, read_table, read_tables
from .figures_common import (
    _decorate, _endpoints_untrained, _first_metrics, _fmt, _legend, _logy_if_positive, _note, _palette,
    _plot_seeds, _series, _ylabel, lr_series, untrained_marks,
)


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
