"""Figs. 4-6 (what warmup, freezing and distillation change): per-layer similarity panels with
chance bands and the random-initialisation baseline, beside the runs' accuracy and learning rate."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .tables import read_table, read_tables, whole_sample
from .figures_common import (
    _aggregate, _decorate, _legend, _note, _palette, _plot_seeds, _series, _ylabel, lr_series,
    untrained_marks,
)


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
