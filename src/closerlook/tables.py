"""Result tables: their columns, one reader, one atomic writer, and the few numbers read off them.

Every stage writes tidy CSV tables (docs/DESIGN.md); figures and claims read only
these, through :func:`read_table`, which never raises: a missing, empty, broken
or diverged table comes back with the problem named, so a figure can still be
drawn and a claim can say why it is inconclusive.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .io import atomic_path

# training (closerlook.train), one row per epoch
# train_ce: the hard-label cross-entropy of the training batches; equal to train_loss except in a distilled run,
# whose train_loss is its distillation objective
METRICS_COLUMNS = ["epoch", "iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                   "wall_s", "images_per_s", "status", "train_ce"]
# loss/accuracy along a path (closerlook.landscape.evaluate_path), one row per t
PATH_COLUMNS = ["t", "train_loss", "train_acc", "test_loss", "test_acc", "path", "status"]
# the loss plane (closerlook.landscape.plane_grid): grid points, and anchors + projected checkpoints
GRID_COLUMNS = ["u", "v", "train_loss", "train_acc", "test_loss", "test_acc"]
# train_loss / train_acc: each point's OWN network (BN recomputed, eval mode, the plane's training images)
POINT_COLUMNS = ["label", "u", "v", "distance", "rel_distance", "train_loss", "train_acc"]
# the lenses (closerlook.lenses): a 1-D slice (2-D slices and the PCA plane's grid use GRID_COLUMNS),
# the PCA axes, the trajectory's low-dimensional coordinates, each view's share of the trajectory's variance
SLICE_COLUMNS = ["alpha", "train_loss", "train_acc", "test_loss", "test_acc"]
PCA_COLUMNS = ["axis", "eigenvalue", "explained"]
TRAJECTORY_COLUMNS = ["label", "iteration", "pc1", "pc2", "tsne1", "tsne2"]
VIEW_COLUMNS = ["view", "dims", "variance_share"]
# sharpness (closerlook.sharpness): one row per point (a t of a path, or a checkpoint)
SHARPNESS_COLUMNS = ["t", "label", "loss", "grad_norm", "lambda_max", "lambda_min", "trace", "trace_se",
                     "weight_norm_sq", "lambda_max_scaled", "status"]
ANCHORS = ("w1", "w2", "bend")
# per-layer similarity between two activation stores: one row per layer, measure and sample
# ("all" = the whole probe set, "s<b>" = subsample b), with the shuffle-chance level at that sample's size
SIMILARITY_COLUMNS = ["a", "b", "layer", "layer_index", "measure", "sample", "n_images", "dims", "value", "chance",
                      "chance_low", "chance_high", "p_value", "calibrated", "status"]
# ensembles (closerlook.ensembles): one row per method, one row per member; `members` = networks whose
# softmax is averaged (1 for SWA), `snapshots` = networks behind it (SWA: averaged weights)
ENSEMBLE_COLUMNS = ["method", "members", "snapshots", "budget_epochs", "test_acc", "test_nll", "member_acc_mean",
                    "member_acc_min", "member_nll_mean", "disagreement", "cka", "status"]
MEMBER_COLUMNS = ["method", "member", "label", "test_acc", "test_nll", "status"]
_TEXT_COLUMNS = ("status", "path", "label", "layer", "measure", "a", "b", "sample", "method", "view", "student", "split")


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """``df`` as CSV (no index), written atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_plain(path: Any) -> tuple[pd.DataFrame | None, str | None]:
    """One CSV table as written, no column coerced (for tables with text columns: controls.csv,
    fidelity.csv, sharpness_trajectory.csv): ``(df, problem)``, problem None, "missing", "empty"
    (``df`` kept when it has a header) or "unreadable". Never raises."""
    if not path or not Path(path).exists():
        return None, "missing"
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None, "empty"
    except Exception:  # noqa: BLE001 - a broken table must not stop a figure or a verdict
        return None, "unreadable"
    return (df, "empty") if df.empty else (df, None)


def read_table(path: str | Path | None) -> tuple[pd.DataFrame | None, str | None]:
    """Read one CSV table: ``(df, problem)``; problem is None, "diverged", "missing", "empty", "unreadable".

    Numeric columns are coerced (non-numbers become NaN); text columns are kept.
    A table is "diverged" when any row's status is ``diverged``. Never raises.
    """
    df, problem = read_plain(path)
    if problem:
        return df, problem
    for col in df.columns:
        if col not in _TEXT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    problem = None
    if "status" in df.columns and (df["status"].astype(str).str.lower() == "diverged").any():
        problem = "diverged"
    return df, problem


def read_tables(paths: Mapping | None) -> tuple[list, list]:
    """:func:`read_table` of every instance (sorted by name): ``(dfs, problems)``."""
    pairs = [read_table(p) for _inst, p in sorted((paths or {}).items())]
    return [d for d, _ in pairs], [q for _, q in pairs]


def path_barrier(df: pd.DataFrame | None, column: str = "train_loss") -> float:
    """max over t of ``column`` minus the max of its two endpoint values (t = min, t = max); NaN if unknown."""
    if df is None or column not in df.columns or "t" not in df.columns or df.empty:
        return float("nan")
    y = df.sort_values("t")[column].to_numpy(dtype=float)
    if not np.isfinite(y).all():
        return float("nan")
    return float(np.max(y) - max(y[0], y[-1]))


def whole_sample(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows of a similarity table computed on the whole probe set (``sample == "all"``; every row of
    a table without a ``sample`` column)."""
    if df is None or "sample" not in df.columns:
        return df
    return df[df["sample"].astype(str).isin(["all", "nan"])]


def plane_arrays(grid: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u values, v values, Z[v, u]) from the long grid table."""
    piv = grid.pivot_table(index="v", columns="u", values=column, aggfunc="mean", dropna=False)
    return piv.columns.to_numpy(dtype=float), piv.index.to_numpy(dtype=float), piv.to_numpy(dtype=float)


def epoch_key(label: Any) -> tuple[float, str]:
    """Sort key of checkpoint labels such as ``epoch74``: by the number in them, then by name."""
    m = re.search(r"(-?\d+(?:\.\d+)?)", str(label))
    return (float(m.group(1)) if m else math.inf, str(label))
