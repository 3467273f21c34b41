"""What every figure module draws with: the diverged / untrained marks, seed means with bands, notes,
legends, palette and style, learning-rate series. The figure modules import it (and never each
other's privates), so the figures form no import cycle."""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import verdicts as V  # noqa: E402
from .schedules import lr_at  # noqa: E402
from .tables import read_table  # noqa: E402


DEFAULT_DPI = 150


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


def _ylabel(column: str) -> str:
    kind = "train" if column.startswith("train") else "test (validation)"
    return f"{kind} loss (nats)" if column.endswith("loss") else f"{kind} accuracy (fraction)"


def _fmt(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3f}"
