"""Fig. 10 (beyond the paper): warmup as sharpness reduction, lambda_max measured inside the large-batch runs.

``layout``: ``{"trajectories": {label: {inst: sharpness_trajectory.csv}}, "specs": {label: run_spec}, ...}``
(:func:`closerlook.config.explain_layout`). (a) the dimensionless ``lr x lambda_max / constant`` per run and
seed (line: the Ritz value, a lower bound; band up to Ritz + residual), the stability limit at 1, the end of
warmup / freezing dotted; (b) lambda_max beside the optimiser's threshold ``constant / lr`` (dashed, same
colour; infinite while lr = 0); (c) the training loss on the measured batch. A missing table is named in a
note, never raised.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

LINESTYLES = ("-", "--", ":", "-.")
COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def fig10_warmup_sharpness(layout: Mapping, options: Mapping) -> Figure:
    from .explanations import read_trajectory

    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax_r, ax_l, ax_loss = fig.subplots(1, 3)
    specs = layout.get("specs") or {}
    notes = []
    for i, (lab, seeds) in enumerate((layout.get("trajectories") or {}).items()):
        color = COLORS[i % len(COLORS)]
        sp = specs.get(lab) or {}
        mark = int((sp.get("warmup") or {}).get("iterations") or 0) or int((sp.get("freeze") or {}).get("iterations") or 0)
        if mark:
            for ax in (ax_r, ax_l, ax_loss):
                ax.axvline(mark, color=color, ls=":", lw=0.8)
        for j, (inst, path) in enumerate(sorted(seeds.items())):
            df, prob = read_trajectory(path)
            if df is None:
                notes.append(f"{lab} {inst}: {prob}")
                continue
            ls = LINESTYLES[j % len(LINESTYLES)]
            it = df["iteration"].to_numpy()
            lo, hi = (df[c].where(df[c] > 0) for c in ("ratio_low", "ratio_high"))  # lr = 0: no ratio (log axis)
            ax_r.plot(it, lo, ls + ("o" if len(it) < 30 else ""), color=color, lw=1.2, ms=3, label=f"{lab} {inst}")
            ax_r.fill_between(it, lo, hi, color=color, alpha=0.15, lw=0)
            ax_l.plot(it, df["lambda_max"], ls, color=color, lw=1.2, label=f"{lab} {inst}")
            thr = df["threshold"].replace([np.inf], np.nan) if "threshold" in df else None
            if thr is not None:
                ax_l.plot(it, thr, ls, color=color, lw=0.8, alpha=0.5)
            if "loss" in df:
                ax_loss.plot(it, df["loss"], ls, color=color, lw=1.2, label=f"{lab} {inst}")
    ax_r.axhline(1.0, color="k", lw=0.8)
    ax_r.set_yscale("log")
    ax_r.set_xlabel("iteration")
    ax_r.set_ylabel("lr x lambda_max / stability constant")
    ax_r.set_title("(a) lr x lambda_max over the optimiser's limit (1 = edge of stability)")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("iteration")
    ax_l.set_ylabel("lambda_max of the training batch")
    ax_l.set_title("(b) lambda_max (solid) and the threshold constant / lr (faint)")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss on the measured batch")
    ax_loss.set_title("(c) training loss; dotted: end of warmup / freezing")
    for ax in (ax_r, ax_l, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if notes:
        ax_loss.text(0.02, 0.02, "\n".join(notes), transform=ax_loss.transAxes, fontsize=7, va="bottom")
    fig.suptitle("Fig. 10 - warmup and sharpness: lambda_max inside the large-batch runs (train-mode BN, dropout off)")
    return fig
