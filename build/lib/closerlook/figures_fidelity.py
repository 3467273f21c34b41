"""Fig. 6's fidelity panel (distillation as fidelity, Stanton et al. 2021; :mod:`closerlook.fidelity`).

:func:`with_fidelity_panel` wraps the fig6_distill builder: where the layout carries ``fidelity`` (the
``fidelity.csv`` of :func:`closerlook.config.fidelity_pairs`), one more column is added to the right of the
figure: top-1 agreement with the teacher per student (bars: mean over seeds; dots: seeds) on the test set
and on the training images, each bar labelled with its mean KL(teacher || student) at T = 1. A missing or
diverged table is named in the panel, never raised.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from .fidelity import SPLITS, STUDENTS

COLORS = {"distilled": "tab:blue", "independent": "tab:orange"}


def _add_column(fig: Figure):
    """A new axes in a new column right of the figure's grid (the existing axes keep their cells)."""
    axes = [a for a in fig.axes if a.get_subplotspec() is not None]
    if not axes:
        return fig.add_subplot(1, 1, 1)
    old = axes[0].get_subplotspec().get_gridspec()
    nrows, ncols = old.get_geometry()
    gs = GridSpec(nrows, ncols + 1, figure=fig)
    for a in axes:
        ss = a.get_subplotspec()
        if ss.get_gridspec() is not old:
            continue
        r0, r1 = ss.rowspan.start, ss.rowspan.stop
        c0, c1 = ss.colspan.start, ss.colspan.stop
        a.set_subplotspec(gs[r0:r1, c0:c1])
    w, h = fig.get_size_inches()
    fig.set_size_inches(w * (ncols + 1) / ncols, h)
    return fig.add_subplot(gs[:, ncols])


def fidelity_panel(ax, path) -> None:
    from .explanations import read_fidelity

    df, prob = read_fidelity(path)
    if df is None or not {"student", "split", "agreement", "kl", "status"} <= set(df.columns):
        ax.text(0.5, 0.5, f"fidelity: {prob or 'no table'}", transform=ax.transAxes, ha="center")
        ax.set_title("(d) fidelity to the teacher")
        return
    width = 0.38
    for j, st in enumerate(STUDENTS):
        for i, sp in enumerate(SPLITS):
            rows = df[(df["student"] == st) & (df["split"] == sp)]
            ok = rows[rows["status"].astype(str) == "ok"]
            x = i + (j - 0.5) * width
            if ok.empty:
                ax.text(x, 0.02, "diverged" if len(rows) else "n/a", rotation=90, ha="center", fontsize=7)
                continue
            ag, kl = ok["agreement"].to_numpy(float), ok["kl"].to_numpy(float)
            ax.bar(x, ag.mean(), width, color=COLORS[st], alpha=0.75, label=st if i == 0 else None)
            ax.plot(np.full(ag.size, x), ag, "k.", ms=4)
            ax.text(x, ag.mean() + 0.01, f"KL {kl.mean():.3g}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(SPLITS)), ["test set", "training images"])
    ax.set_ylim(0, 1.15)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_ylabel("top-1 agreement with the teacher")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("(d) fidelity: top-1 agreement, KL(t || s) at T = 1")


def with_fidelity_panel(builder: Callable[[Mapping, Mapping], Figure]) -> Callable[[Mapping, Mapping], Figure]:
    """fig6_distill's builder with the fidelity panel added where the layout has ``fidelity``."""

    def build(layout: Mapping, options: Mapping) -> Figure:
        fig = builder(layout, options)
        if (layout or {}).get("fidelity"):
            fidelity_panel(_add_column(fig), layout["fidelity"])
        return fig

    build.__doc__ = builder.__doc__
    build.__name__ = getattr(builder, "__name__", "fig6_distill")
    return build
