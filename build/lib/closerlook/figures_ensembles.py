"""Fig. 9 (beyond the paper): the ensemble comparison, from ``ensembles.csv`` and ``members.csv``.

``layout``: ``{"ensembles": {inst: csv}, "members": {inst: csv}}`` (:func:`closerlook.config.figure_layout`).
(a) test accuracy of each ensemble (bar) with its members' accuracies (dots) and the independent
seeds' ensemble as a reference line; (b) the same for test NLL; (c) member diversity: mean pairwise
prediction disagreement against mean pairwise penultimate-layer CKA; (d) the numbers with each
method's training budget. A missing or diverged table is named in a note, never raised.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .ensembles import LABELS, METHODS
from .figures_common import _fmt, _legend, _note, _palette
from .tables import read_table


def _tables(layout: Mapping) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[str]]:
    """The first instance's ensemble and member tables (the demo has one), and the problems met."""
    out, notes = [], []
    for key in ("ensembles", "members"):
        insts = layout.get(key) or {}
        inst, path = next(iter(sorted(insts.items())), (None, None))
        df, prob = read_table(path)
        if prob:
            notes.append(f"{key} ({inst}): {prob}")
        out.append(df if df is not None and "method" in getattr(df, "columns", []) else None)
    return out[0], out[1], notes


def _bars(ax, ens: pd.DataFrame, mem: pd.DataFrame | None, column: str, colors: dict, ylabel: str) -> None:
    methods = [m for m in METHODS if m in set(ens["method"])]
    for i, m in enumerate(methods):
        row = ens[ens["method"] == m].iloc[0]
        bad = str(row["status"]) != "ok"
        ax.bar(i, 0.0 if bad else row[column], color=colors[m], alpha=0.75,  # (named by the x ticks)
               label=LABELS[m] + " (diverged)" if bad else "_nolegend_")
        if mem is not None:
            pts = mem[mem["method"] == m][column].to_numpy(dtype=float)
            ax.plot(np.full(len(pts), i), pts, "o", color="black", ms=3.5, alpha=0.7,
                    label="members" if i == 0 else "_nolegend_")
    ref = ens[ens["method"] == "independent"]
    if not ref.empty and np.isfinite(ref[column].iloc[0]):
        ax.axhline(ref[column].iloc[0], color="grey", ls="--", lw=1.0, label="independent-seed ensemble")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([LABELS[m] for m in methods], rotation=25, ha="right", fontsize=8)
    vals = np.r_[ens[column].to_numpy(dtype=float), mem[column].to_numpy(dtype=float) if mem is not None else []]
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = vals.min(), vals.max()
        pad = max(hi - lo, 1e-3) * 0.3
        ax.set_ylim(max(lo - pad, 0.0), hi + pad)
    ax.set_xlabel("ensemble (same number of networks behind each)")
    ax.set_ylabel(ylabel)


def _diversity(ax, ens: pd.DataFrame, colors: dict) -> None:
    for m in METHODS:
        r = ens[ens["method"] == m]
        if r.empty or not np.isfinite(r[["disagreement", "cka"]].to_numpy(dtype=float)).all():
            continue
        ax.plot(r["disagreement"], r["cka"], "o", ms=9, color=colors[m], mec="black", label=LABELS[m])
    ax.set_xlabel("mean pairwise prediction disagreement (test)")
    ax.set_ylabel("mean pairwise linear CKA, penultimate layer")
    ax.set_title("(c) member diversity (SWA: one network, not shown)")
    _legend(ax)


def _table(ax, ens: pd.DataFrame) -> None:
    ax.axis("off")
    rows = [[LABELS.get(r["method"], r["method"]), f"{int(r['members'])}/{int(r['snapshots'])}", _fmt(r["budget_epochs"]),
             _fmt(r["test_acc"]), _fmt(r["test_nll"]), _fmt(r["disagreement"]), _fmt(r["cka"])] for _, r in ens.iterrows()]
    tab = ax.table(cellText=rows, colLabels=["ensemble", "members/nets", "epochs", "acc", "NLL", "disagr.", "CKA"],
                   loc="upper center", cellLoc="left", colWidths=[0.26, 0.14, 0.1, 0.12, 0.12, 0.12, 0.12])
    tab.auto_set_font_size(False)
    tab.set_fontsize(7.5)
    tab.scale(1.0, 1.3)
    ax.set_title("(d) the numbers; epochs = training behind each ensemble")


def fig9_ensembles(layout: Mapping, options: Mapping) -> Figure:
    ens, mem, notes = _tables(layout)
    fig = Figure(figsize=(13, 9), layout="constrained")
    (ax_a, ax_b), (ax_c, ax_d) = fig.subplots(2, 2)
    pal = _palette(len(METHODS))
    colors = {m: pal[i] for i, m in enumerate(METHODS)}
    if ens is None or ens.empty:
        for ax in (ax_a, ax_b, ax_c, ax_d):
            ax.text(0.5, 0.5, "no ensemble table", transform=ax.transAxes, ha="center", va="center")
    else:
        _bars(ax_a, ens, mem, "test_acc", colors, "test accuracy (fraction)")
        _bars(ax_b, ens, mem, "test_nll", colors, "test NLL (nats)")
        _diversity(ax_c, ens, colors)
        _table(ax_d, ens)
        bad = ens[ens["status"].astype(str) != "ok"]["method"].tolist()
        notes += [f"diverged: {', '.join(LABELS.get(m, m) for m in bad)} (no bar)"] if bad else []
    ax_a.set_title("(a) test accuracy: ensemble (bar), members (dots)")
    ax_b.set_title("(b) test NLL: ensemble (bar), members (dots)")
    _legend(ax_a, loc="lower right")
    _note(ax_b, notes)
    fig.suptitle("Fig. 9 - what SGDR's snapshots buy: ensembles with the same number of members")
    return fig
