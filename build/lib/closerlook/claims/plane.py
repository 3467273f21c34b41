"""Claim 3 judged on the plane (issue 29.2): the plane's train loss at the projection of each iterate between
w1 and w2 above the fitted curve's max train loss. The loss at a projected point is the plane stage's own
evaluation there (``points.csv`` column ``plane_train_loss``) when present, else a bilinear interpolation of the
grid (said in the verdict). The distance premise divides each iterate's distance to the plane by ||w2 - w1||
(the plane's own scale; dividing by ||w - w1|| put the iterate just after a restart far off the plane by
construction). The iterates' own losses are reported, not judged; "ends in the connected basin" is stated, not
judged: the last projected iterate is the curve's end point w2, an anchor of the plane."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .. import verdicts as V
from ..tables import ANCHORS, epoch_key, plane_arrays, read_table
from ..verdicts import Verdict
from . import _common as K

_num = V.num
OWN_COLUMN = "plane_train_loss"  # the plane stage's loss evaluated at each projected point (when it provides it)


def bilinear(U: np.ndarray, V_: np.ndarray, Z: np.ndarray, u: float, v: float) -> float:
    """Bilinear interpolation of Z[v, u] on the regular grid; NaN outside it (no clamping) and NaN-propagating."""
    if not (math.isfinite(u) and math.isfinite(v)) or U.size < 2 or V_.size < 2:
        return float("nan")
    if not (U[0] <= u <= U[-1] and V_[0] <= v <= V_[-1]):
        return float("nan")
    i = int(np.clip(np.searchsorted(U, u) - 1, 0, U.size - 2))
    j = int(np.clip(np.searchsorted(V_, v) - 1, 0, V_.size - 2))
    fu = (u - U[i]) / (U[i + 1] - U[i])
    fv = (v - V_[j]) / (V_[j + 1] - V_[j])
    return float(Z[j, i] * (1 - fu) * (1 - fv) + Z[j, i + 1] * fu * (1 - fv) + Z[j + 1, i] * (1 - fu) * fv
                 + Z[j + 1, i + 1] * fu * fv)


def trajectory(pts: pd.DataFrame) -> tuple[pd.DataFrame, list[str], float]:
    """Projected iterates in epoch order, the labels of those between w1 and w2 (not at an anchor), ||w2 - w1||."""
    pts = pts.copy()
    pts["label"] = pts["label"].astype(str)
    a = {x: pts[pts["label"] == x][["u", "v"]].to_numpy(dtype=float) for x in ("w1", "w2")}
    traj = pts[~pts["label"].isin(ANCHORS)]
    traj = traj.iloc[sorted(range(len(traj)), key=lambda i: epoch_key(traj["label"].iloc[i]))]
    if any(len(x) == 0 for x in a.values()):
        return traj, [], float("nan")
    span = float(np.hypot(*(a["w2"][0] - a["w1"][0])))
    tol = 1e-3 * (span or 1.0)
    dist = traj["distance"] if "distance" in traj.columns else pd.Series(0.0, index=traj.index)
    inter = [r["label"] for (_, r), d in zip(traj.iterrows(), dist)
             if min(np.hypot(r["u"] - a[x][0][0], r["v"] - a[x][0][1]) for x in a) > tol or d > tol]
    return traj, inter, span


def plane_losses(traj: pd.DataFrame, grid: pd.DataFrame | None) -> tuple[dict, str]:
    """{label: plane train loss at its projection} and how it was obtained."""
    if OWN_COLUMN in traj.columns and np.isfinite(traj[OWN_COLUMN].to_numpy(dtype=float)).any():
        return {r["label"]: float(r[OWN_COLUMN]) for _, r in traj.iterrows()}, "evaluated at each projected point"
    U = Vg = Z = None
    if grid is not None and {"u", "v", "train_loss"} <= set(grid.columns):
        U, Vg, Z = plane_arrays(grid, "train_loss")
    out = {r["label"]: bilinear(U, Vg, Z, float(r["u"]), float(r["v"])) if U is not None else float("nan")
           for _, r in traj.iterrows()}
    return out, (f"interpolated bilinearly from the grid (the plane stage does not evaluate the projected points; "
                 f"a '{OWN_COLUMN}' column in points.csv, the loss at each projection, would remove the "
                 f"interpolation error)")


def claim3(layout: Mapping, rules: Mapping, text: str, planes: Mapping | None = None) -> dict:
    """``layout``: the fig3_plane layout (its first curve instance); ``planes`` (optional, config claims
    ``plane_instances: all``): {instance: layout} of every instance of the plane's curve, judged over instances."""
    v = Verdict("3", text, rules)
    lim, dmax = float(rules["climb_min_nats"]), float(rules["plane_max_rel_distance"])
    planes = dict(planes) if planes else {"plane": layout or {}}
    rule = (f"premises: the projected run trained; every projected iterate within {dmax:g} x ||w2 - w1|| of the "
            f"plane (else the plane view is unfaithful). Rule: max over the iterates between w1 and w2 of (the "
            f"plane's train loss at the iterate's projection - the fitted curve's max train loss) > {lim:g} nats, "
            f"over planes ({len(planes)} configured; one plane: n = 1, no spread). Reported, not judged: each "
            f"iterate's own loss climb (near-certain after a restart), and 'ends in the connected basin' (the last "
            f"iterate is w2, an anchor of the plane: it cannot fail as configured)")
    climbs, own = [], []
    for inst, lay in planes.items():
        c = _one_plane(v, lay or {}, inst, dmax, multi=len(planes) > 1)
        if c is not None:
            climbs.append(c[0])
            own.append(c[1])
    if climbs:
        v.check(v.effect("climb: max plane train loss at an intermediate projection - curve max (nats)", climbs),
                lim, "above")
        v.effect("own climb: max own train loss of an intermediate iterate - curve max (nats, not judged)", own)
    return v.entry(rule)


def _one_plane(v: Verdict, layout: Mapping, inst: str, dmax: float, multi: bool) -> tuple[float, float] | None:
    """One plane's premises and numbers (into ``measured``, under ``inst`` when there are several)."""
    sfx = f": {inst}" if multi else ""
    K.runs_trained(v, layout.get("metrics"), list(layout.get("metrics") or {}), layout)
    if not layout.get("metrics"):
        v.missing(f"projected run's metrics{sfx}", "not in the layout")
    pts, curve = K.path(layout, "points", f"plane{sfx}", v), K.path(layout, "curve", f"plane{sfx}", v)
    grid, _ = read_table(layout.get("grid"))
    if pts is None or curve is None:
        return None
    if not {"label", "u", "v", "distance", "train_loss"} <= set(pts.columns):
        v.missing(f"plane points.csv{sfx}", "no distance / own train_loss (an older plane table)")
        return None
    traj, inter, span = trajectory(pts)
    v.seed(inst)
    dist = traj["distance"].to_numpy(dtype=float) / span if span and math.isfinite(span) else np.array([np.nan])
    worst = float(np.max(dist)) if dist.size and np.isfinite(dist).all() else float("nan")
    on = v.premise(f"projections on the plane (distance / ||w2 - w1||){sfx}", math.isfinite(worst) and worst <= dmax,
                   worst, f"max <= {dmax:g}")
    if not on:
        v.note("the plane view is unfaithful: an iterate lies farther off the plane than the premise allows")
    v.premise(f"iterates between w1 and w2 projected{sfx}", bool(inter), len(inter), ">= 1")
    cmax = float(curve["train_loss"].max()) if "train_loss" in curve.columns else float("nan")
    _converged_gate(v, layout, curve, sfx)
    own = traj.set_index("label")["train_loss"].astype(float)
    plane, how = plane_losses(traj, grid)
    m = v.measured.setdefault(inst, {}) if multi else v.measured
    m.update({
        "curve_max_train_loss": _num(cmax), "plane loss at the projections": how, "norm_w2_minus_w1": _num(span),
        "iterates": {r["label"]: {"own_train_loss": _num(r["train_loss"]),
                                  "plane_train_loss_at_projection": _num(plane.get(r["label"])),
                                  "distance_over_norm_w2_w1": _num(r["distance"] / span if span else float("nan")),
                                  "rel_distance (over ||w - w1||, old premise)": _num(r.get("rel_distance"))}
                     for _, r in traj.iterrows()},
        "intermediate": inter,
        "ends in the connected basin": "not judged: the last projected iterate is w2, an anchor of the plane"})
    if OWN_COLUMN not in traj.columns:
        v.note("plane loss at the projections interpolated from the grid")
    if not inter:
        return None
    above = {lab: plane[lab] - cmax for lab in inter}
    at = max(above, key=lambda k: above[k] if math.isfinite(above[k]) else -math.inf)
    oc = float(own[inter].max() - cmax)
    m.update({"plane_climb_nats": _num(above[at]), "at": str(at), "own_climb_nats (reported, not judged)": _num(oc)})
    return above[at], oc


def _converged_gate(v: Verdict, layout: Mapping, curve, sfx: str) -> None:
    """Issue 24.2 on claim 3: the plane is built on a fitted curve, whose max loss is the comparator; a curve cut
    by the cap keeps a higher max, so a NEGATIVE outcome needs its fit converged (or the curve to have removed
    its line's barrier, line.csv beside curve.csv)."""
    ok, why = K.fit_converged({"curve": layout.get("curve")})
    line, _ = read_table(str(Path(str(layout.get("curve"))).parent / "line.csv")) if layout.get("curve") else (None, None)
    removed = line is not None and K.removes(v, K.barriers(line)[K.judged(v)], K.barriers(curve)[K.judged(v)])
    v.gate(f"fit converged: the plane's curve{sfx}", bool(ok) or removed,
           why + ("; the curve removed its line's barrier" if removed and not ok else ""),
           "stopped by the stopping rule (not the epochs cap), or the curve removed the barrier")
