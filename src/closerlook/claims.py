"""The paper's seven claims as checks: premises first, then effects with their spread, then verdicts.

:func:`evaluate` ``(layouts, rules)`` reads the same tables as the figures (``layouts`` =
``{figure name: layout}`` from :func:`closerlook.config.figure_layout`) and returns::

    {"rules": {...}, "summary": {"reproduced": n, "not reproduced": n, "inconclusive": n},
     "claims": [entry, ...], "beyond": [entry, ...]}

with every entry in the contract of :mod:`closerlook.verdicts` (``verdict``, ``premises``,
``effects``, ``rule``, ``reason``, ``measured``). ``summary`` counts the paper's claims;
``beyond`` (only with a ``fig9_ensembles`` layout) is the ensemble comparison of
:func:`closerlook.ensembles.evaluate_beyond`. :func:`write_reports` writes ``claims.json``
and ``claims.md`` atomically; :func:`to_markdown` renders ``result["claims"]`` and any other
list of entries in ``result`` (e.g. ``result["beyond"]``) with the same table and sections.

Premises (a failed one gives ``inconclusive``; thresholds in ``config["claims"]``, defaults
:data:`closerlook.verdicts.DEFAULT_RULES`):

- every run and endpoint involved trained: not diverged, test accuracy > 1/num_classes +
  ``min_acc_above_chance`` (the number of classes from the data info);
- claims 1-2 and 4: the positive control (two seeds of one recipe) shows a line barrier >
  ``barrier_min_nats`` and a curve keeping at most ``curve_excess_frac`` of it (the instrument
  works: claim 4's curves also join models of different seeds); claims 1-2: each pair's straight
  line shows a barrier (else "premise absent at this scale");
- claim 3: every projected iterate within ``plane_max_rel_distance`` x ||w - w1|| of the plane;
- claims 5-7: chance levels computed; at least one deep and one shallow layer left after
  excluding those whose chance level is within ``chance_exclude_within`` of 1.

A unit (pair, curve, seed) failing its own premise is reported and left out; the claim is
inconclusive when fewer than ``min_pairs`` (default: all) units are left.

Effects and rules (each effect over seeds: range for n <= 3, t-interval for n > 3; a check
holds when the whole range is on the passing side, fails when it is all on the other side):

1-2. curve excess / line barrier per pair (train loss, BN recomputed) <= ``curve_excess_frac``.
3. max over intermediate iterates of (the iterate's own train loss - the fitted curve's max
   train loss), nats, > ``climb_min_nats``.
4. accuracy points of the curve below its weaker endpoint <= ``robust_max_drop_points`` per
   curve (the straight line's drop is reported as the contrast).
5. depth profile P = mean calibrated similarity of the deep layers - of the shallow layers
   (deep = last ``deep_layers``, shallow = first ``deep_layers``; calibrated = (v - c) / (1 - c)
   with c the shuffle chance at that sample size): P(LB warmup) - P(LB no warmup) >
   ``deep_min_gap``, over seeds and over probe subsamples; final accuracy gap > ``acc_min_gap``.
6. premise: warmup's accuracy gain > ``acc_min_gap``; recovered fraction (frozen - nowarm) /
   (warm - nowarm) > ``freeze_close_frac``; CCA side: P(frozen FC) - P(LB warmup) > -``deep_min_gap``.
7. P(distilled vs teacher) - P(independent vs teacher) > ``deep_min_gap``, the output layer
   left out of "deep" when ``distill_exclude_output``.

The runs' roles in Figs. 4-5 (LB no warmup / LB warmup / LB frozen FC / small batch) are read
from the run specs (warmup iterations > 0, freeze set, largest batch), falling back to the labels.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import verdicts as V
from .io import atomic_write_json, atomic_write_text
from .tables import ANCHORS, epoch_key, path_barrier, plane_arrays, read_table, whole_sample
from .verdicts import DEFAULT_RULES, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict  # noqa: F401 (API)

CLAIMS = {
    1: "Between SGDR iterates the straight line shows a loss barrier; the trained curve shows none "
       "(max loss on the curve close to the endpoints').",
    2: "The same holds between step-decay SGD iterates around a decay, so a straight-line barrier is no "
       "evidence that SGDR found separate minima.",
    3: "On the Fig. 3 plane the SGDR trajectory crosses high-loss regions and ends in the connected basin.",
    4: "Curves between models trained with different recipes keep accuracy high along their whole length.",
    5: "Without warmup the deep/FC layers change most in the first iterations (lowest CCA to initialisation); "
       "shallow layers alike across runs; LB without warmup ends less accurate.",
    6: "Freezing the FC layers early, without warmup, gets close to the warmup run.",
    7: "A distilled student is more similar to the teacher than an independent one mainly in the deeper layers.",
}
_num = V.num


# --------------------------------------------------------------------------- shared premises


def _classes(layout: Mapping) -> int | None:
    return V.read_num_classes((layout or {}).get("data_info"))


def _runs_trained(v: Verdict, metrics: Mapping, labels: Sequence[str], layout: Mapping, blocking=True) -> dict:
    """Trained premise for every seed of ``labels`` in ``metrics``; returns {(label, inst): holds}."""
    k, margin = _classes(layout), float(v.rules["min_acc_above_chance"])
    out = {}
    for label in labels:
        insts = (metrics or {}).get(label) or {}
        if not insts:
            v.missing(f"{label} metrics", "missing")
        for inst, path in sorted(insts.items()):
            df, prob = read_table(path)
            out[(label, inst)] = v.add(V.run_trained(df, prob, k, margin, f"trained: {label}/{inst}"), blocking)
    return out


def _path(files: Mapping | None, kind: str, where: str, v: Verdict) -> pd.DataFrame | None:
    df, prob = read_table((files or {}).get(kind))
    if prob:
        v.missing(f"{where} {kind}", prob)
        return None
    return df


def _ends(df: pd.DataFrame | None, column: str) -> tuple[float, float]:
    if df is None or column not in df.columns or "t" not in df.columns or df.empty:
        return float("nan"), float("nan")
    d = df.sort_values("t")
    return float(d[column].iloc[0]), float(d[column].iloc[-1])


def _endpoints_trained(v: Verdict, df: pd.DataFrame | None, where: str, layout: Mapping) -> bool:
    """Unit premise: both endpoints of a path (its test accuracy at t = 0 and 1) trained."""
    a0, a1 = _ends(df, "test_acc")
    worse = min(a0, a1) if math.isfinite(a0) and math.isfinite(a1) else float("nan")
    rec = V.trained(worse, _classes(layout), float(v.rules["min_acc_above_chance"]), f"endpoints trained: {where}")
    return v.add(rec, blocking=False)


def _worst_first(v: Verdict, start: int, key=lambda e: -(e["estimate"] if e["estimate"] is not None else -math.inf)):
    """Order the effects added since ``start`` so the main (worst) one comes first."""
    v.effects[start:] = sorted(v.effects[start:], key=key)


# --------------------------------------------------------------------------- claims 1, 2: barriers


def _control(v: Verdict, reference: Mapping | None) -> None:
    """Blocking premise: the positive control shows a line barrier and a curve that removes it."""
    bmin, frac = float(v.rules["barrier_min_nats"]), float(v.rules["curve_excess_frac"])
    rule = f"line barrier > {bmin:g} nats and curve excess <= {frac:g} x line barrier"
    name = "positive control (two seeds of one recipe) detects and removes a barrier"
    if not any((reference or {}).values()):
        v.premise(name, False, "no reference pair configured", rule)
        return
    refs = v.measured.setdefault("positive control", {})
    for label, insts in reference.items():
        for inst, files in (insts or {}).items():
            line, _ = read_table((files or {}).get("line"))
            curve, _ = read_table((files or {}).get("curve"))
            lb, cb = path_barrier(line), path_barrier(curve)
            ok = math.isfinite(lb) and math.isfinite(cb) and lb > bmin and cb <= frac * lb
            refs[f"{label}/{inst}"] = {"line_barrier_nats": _num(lb), "curve_excess_nats": _num(cb)}
            v.premise(f"{name}: {label}/{inst}", ok, f"line {_num(lb)}, curve {_num(cb)}", rule)


def _pair(v: Verdict, files: Mapping, where: str, layout: Mapping) -> tuple[float | None, float]:
    """One pair's numbers into ``measured``; (its excess fraction when its unit premises hold, its line barrier)."""
    bmin = float(v.rules["barrier_min_nats"])
    line, curve = _path(files, "line", where, v), _path(files, "curve", where, v)
    if line is None or curve is None:
        return None, float("nan")
    lb, cb = path_barrier(line), path_barrier(curve)
    v.measured[where] = {"line_barrier_nats": _num(lb), "curve_excess_nats": _num(cb),
                         "endpoint_train_loss": [_num(x) for x in _ends(line, "train_loss")],
                         "endpoint_test_acc": [_num(x) for x in _ends(line, "test_acc")]}
    trained = _endpoints_trained(v, line, where, layout)
    barrier = v.premise(f"line barrier: {where}", math.isfinite(lb) and lb > bmin, lb, f"> {bmin:g} nats", blocking=False)
    if not (math.isfinite(lb) and math.isfinite(cb)):
        v.missing(f"{where} path", "NaN train loss")
        return None, lb
    v.measured[where]["excess_fraction"] = _num(cb / lb) if lb > 0 else None
    return (cb / lb if trained and barrier else None), lb


def _barrier_claim(cid: int, pairs: Mapping, layout: Mapping, run: str, rules: Mapping) -> dict:
    v = Verdict(cid, CLAIMS[cid], rules)
    _runs_trained(v, layout.get("metrics"), [run], layout)
    _control(v, layout.get("reference_pairs"))
    units, kept, barriers = [], {}, {}
    for label, insts in (pairs or {}).items():
        for inst, files in (insts or {}).items():
            v.seed(inst)
            units.append(f"{label}/{inst}")
            frac, lb = _pair(v, files, f"{label}/{inst}", layout)
            barriers.setdefault(label, []).append(lb)
            if frac is not None:
                kept.setdefault(label, []).append(frac)
    if not units:
        v.missing("pairs", "none configured")
    no_barrier = [p for p in v.premises if p["name"].startswith("line barrier") and not p["holds"]]
    note = "no straight-line barrier to explain away: premise absent at this scale" if no_barrier else ""
    v.enough([x for f in kept.values() for x in f], units, "pairs", note)
    lim = float(rules["curve_excess_frac"])
    for label, fracs in kept.items():
        v.check(v.effect(f"curve excess / line barrier, {label}", fracs), lim, "below")
    _worst_first(v, 0)
    for label, lbs in barriers.items():  # the premise's own number, shown even when no pair is judged
        v.effect(f"line barrier (nats, premise), {label}", lbs)
    rule = (f"premises: {run} trained; the positive control shows a line barrier > {rules['barrier_min_nats']:g} nats "
            f"and a curve keeping <= {lim:g} of it; each pair's line barrier > {rules['barrier_min_nats']:g} nats "
            f"(else premise absent at this scale). Rule: per pair, curve excess / line barrier over seeds, whole "
            f"range (n <= 3) or t-interval (n > 3) <= {lim:g}")
    return v.entry(rule)


# --------------------------------------------------------------------------- claim 3: plane


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


def _trajectory(pts: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Projected iterates in epoch order, and the labels of those between w1 and w2 (not at an anchor)."""
    pts = pts.copy()
    pts["label"] = pts["label"].astype(str)
    a = {x: pts[pts["label"] == x][["u", "v"]].to_numpy(dtype=float) for x in ("w1", "w2")}
    traj = pts[~pts["label"].isin(ANCHORS)]
    traj = traj.iloc[sorted(range(len(traj)), key=lambda i: epoch_key(traj["label"].iloc[i]))]
    if any(len(x) == 0 for x in a.values()):
        return traj, []
    tol = 1e-3 * (float(np.hypot(*(a["w2"][0] - a["w1"][0]))) or 1.0)
    inter = [r["label"] for _, r in traj.iterrows()
             if min(np.hypot(r["u"] - a[x][0][0], r["v"] - a[x][0][1]) for x in a) > tol or r["distance"] > tol]
    return traj, inter


def _plane_measured(traj: pd.DataFrame, grid: pd.DataFrame | None) -> dict:
    U = Vg = Z = None
    if grid is not None and {"u", "v", "train_loss"} <= set(grid.columns):
        U, Vg, Z = plane_arrays(grid, "train_loss")
    out = {}
    for _, r in traj.iterrows():
        plane = bilinear(U, Vg, Z, float(r["u"]), float(r["v"])) if U is not None else float("nan")
        out[r["label"]] = {"own_train_loss": _num(r.get("train_loss")), "plane_train_loss_at_projection": _num(plane),
                           "rel_distance": _num(r.get("rel_distance"))}
    return out


def _claim3(layout: Mapping, rules: Mapping) -> dict:
    v = Verdict(3, CLAIMS[3], rules)
    layout = layout or {}
    lim, dmax = float(rules["climb_min_nats"]), float(rules["plane_max_rel_distance"])
    rule = (f"premises: the projected run trained; every projected iterate within {dmax:g} x ||w - w1|| of the plane. "
            f"Rule: max over the iterates between w1 and w2 of (the iterate's own train loss - the fitted curve's "
            f"max train loss) > {lim:g} nats")
    _runs_trained(v, layout.get("metrics"), list(layout.get("metrics") or {}), layout)
    if not layout.get("metrics"):
        v.missing("projected run's metrics", "not in the layout")
    pts, curve = _path(layout, "points", "plane", v), _path(layout, "curve", "plane", v)
    grid, _ = read_table(layout.get("grid"))
    if pts is None or curve is None:
        return v.entry(rule)
    if not {"label", "u", "v", "rel_distance", "train_loss"} <= set(pts.columns):
        v.missing("plane points.csv", "no own train_loss (an older plane table)")
        return v.entry(rule)
    traj, inter = _trajectory(pts)
    v.seed("plane")
    rel = traj["rel_distance"].to_numpy(dtype=float)
    worst = float(np.max(rel)) if rel.size and np.isfinite(rel).all() else float("nan")
    v.premise("projections on the plane", math.isfinite(worst) and worst <= dmax, worst, f"max rel_distance <= {dmax:g}")
    v.premise("iterates between w1 and w2 projected", bool(inter), len(inter), ">= 1")
    cmax = float(curve["train_loss"].max()) if "train_loss" in curve.columns else float("nan")
    own = traj.set_index("label")["train_loss"].astype(float)
    v.measured.update({"curve_max_train_loss": _num(cmax), "iterates": _plane_measured(traj, grid),
                       "intermediate": inter})
    if inter:
        climb = float(own[inter].max() - cmax)
        v.measured.update({"climb_nats": _num(climb), "at": str(own[inter].idxmax())})
        v.check(v.effect("climb: max own train loss of an intermediate iterate - curve max (nats)", [climb]),
                lim, "above")
    return v.entry(rule)


# --------------------------------------------------------------------------- claim 4


def _claim4(layout: Mapping, rules: Mapping, reference: Mapping | None = None) -> dict:
    """``reference``: Fig. 2's two-seed pairs. Fig. 1's curves join models of different seeds too, so a curve
    fit that cannot remove the control's barrier says nothing about them (e.g. too few fitting epochs)."""
    v = Verdict(4, CLAIMS[4], rules)
    _control(v, reference)
    lim = float(rules["robust_max_drop_points"])
    units, kept, line_drops = [], {}, []
    for label, insts in ((layout or {}).get("curves") or {}).items():
        for inst, files in (insts or {}).items():
            where = f"{label}/{inst}"
            v.seed(inst)
            units.append(where)
            curve, line = _path(files, "curve", where, v), _path(files, "line", where, v)
            if curve is None or "test_acc" not in curve.columns:
                continue
            a = curve.sort_values("t")["test_acc"].to_numpy(dtype=float)
            ok = _endpoints_trained(v, curve, where, layout)
            if not np.isfinite(a).all():
                v.missing(f"{where} curve", "NaN accuracy")
                continue
            drop = 100 * (min(a[0], a[-1]) - a.min())
            ldrop = 100 * (min(a[0], a[-1]) - float(line["test_acc"].min())) if line is not None else float("nan")
            v.measured[where] = {"min_curve_test_acc": _num(a.min()), "endpoint_test_acc": [_num(a[0]), _num(a[-1])],
                                 "curve_drop_points": _num(drop), "line_drop_points (contrast)": _num(ldrop)}
            if ok:
                kept.setdefault(label, []).append(drop)
                line_drops.append(ldrop)
    if not units:
        v.missing("curves", "none configured")
    v.enough([x for d in kept.values() for x in d], units, "curves")
    for label, drops in kept.items():
        v.check(v.effect(f"accuracy points below the weaker endpoint, {label}", drops), lim, "below")
    _worst_first(v, 0)
    v.effect("straight line's drop below the weaker endpoint, all curves (contrast, not judged)", line_drops,
             kind="range")
    rule = (f"premises: the positive control (Fig. 2's two-seed pair) shows the curve fit removes a barrier "
            f"(as claim 1); both endpoints of every curve trained. Rule: per curve, min(endpoint test accuracy) - min_t "
            f"curve test accuracy, in accuracy points, over seeds: whole range (n <= 3) or t-interval (n > 3) "
            f"<= {lim:g} points; the straight line's drop is the contrast")
    return v.entry(rule)


# --------------------------------------------------------------------------- claims 5-7: similarity


def _roles(layout: Mapping) -> dict[str, str | None]:
    """Map role -> label: nowarm, warm, frozen, small (from specs; labels as fallback)."""
    specs = (layout or {}).get("specs", {}) or {}
    labels = list(dict.fromkeys(list((layout or {}).get("similarity", {}) or {}) + list((layout or {}).get("metrics", {}) or {})
                                + list(specs)))
    roles: dict[str, str | None] = {"nowarm": None, "warm": None, "frozen": None, "small": None}
    if specs and all(lab in specs for lab in labels):
        batches = {lab: float((specs[lab] or {}).get("batch_size") or 0) for lab in labels}
        big = max(batches.values()) if batches else 0
        for lab in labels:
            s = specs[lab] or {}
            role = ("warm" if ((s.get("warmup") or {}).get("iterations") or 0) > 0 else "frozen" if s.get("freeze")
                    else "small" if batches[lab] < big else "nowarm")
            roles[role] = roles[role] or lab
        return roles
    for lab in labels:
        low = lab.lower()
        role = ("frozen" if ("freez" in low or "frozen" in low) else "nowarm" if re.search(r"no[ _-]?warm", low)
                else "warm" if "warm" in low else "small" if ("sb" in low or "small" in low) else None)
        if role:
            roles[role] = roles[role] or lab
    return roles


def _match_inst(paths: Mapping | None, inst: str) -> Any:
    """The file of ``inst``, or the only one when a run has a single instance (e.g. a fixed-seed comparison)."""
    paths = paths or {}
    if inst in paths:
        return paths[inst]
    return next(iter(paths.values())) if len(paths) == 1 else None


def _cal(path: Any, measure: str, where: str, v: Verdict) -> dict | None:
    """One comparison's ``measure``: calibrated values [layer_index x sample] (layers whose chance is within
    ``chance_exclude_within`` of 1 excluded), plus the whole-sample value, chance and p-value per layer."""
    df, prob = read_table(path)
    if prob or df is None:
        v.missing(f"{where} similarity", prob or "missing")
        return None
    d = df[df["measure"].astype(str) == measure] if "measure" in df.columns else df.iloc[0:0]
    if d.empty or "chance" not in d.columns:
        v.missing(f"{where} similarity", f"no '{measure}' rows with a chance column")
        return None
    d = d.assign(sample=d["sample"].astype(str) if "sample" in d.columns else "all")
    d = d.assign(cal=V.calibrated(d["value"], d["chance"], float(v.rules["chance_exclude_within"])))
    cal = d.pivot_table(index="layer_index", columns="sample", values="cal", aggfunc="first", dropna=False)
    whole = whole_sample(d).drop_duplicates("layer_index").set_index("layer_index").sort_index()
    if not np.isfinite(whole["chance"].to_numpy(dtype=float)).all():
        v.premise(f"chance level computed: {where}", False, "NaN", "similarity.chance: true")
        return None
    near_one = whole.index[~np.isfinite(whole["cal"].to_numpy(dtype=float))].tolist()
    return {"cal": cal.sort_index(), "whole": whole, "excluded": near_one, "names": whole["layer"].astype(str).to_dict()}


def _depth_sets(layers: Sequence[int], k: int, exclude_output: bool) -> tuple[list[int], list[int]]:
    order = sorted(layers)
    deep_pool = order[:-1] if exclude_output and len(order) > 1 else order
    return order[:k], deep_pool[-k:]


def _profile(t: Mapping, shallow: Sequence[int], deep: Sequence[int]) -> pd.Series:
    """Per sample: mean calibrated similarity of the deep layers - of the shallow layers (excluded layers dropped)."""
    cal = t["cal"].drop(index=[i for i in t["excluded"] if i in t["cal"].index])
    d = [i for i in deep if i in cal.index]
    s = [i for i in shallow if i in cal.index]
    if not d or not s:
        return pd.Series(dtype=float)
    return cal.loc[d].mean(axis=0) - cal.loc[s].mean(axis=0)


def _layer_report(t: Mapping) -> dict:
    w = t["whole"]
    return {t["names"][i]: {"value": _num(w.loc[i, "value"]), "chance": _num(w.loc[i, "chance"]),
                            "calibrated": _num(w.loc[i, "cal"]),
                            "p_value": _num(w.loc[i, "p_value"]) if "p_value" in w.columns else None,
                            **({"excluded": "chance within reach of 1"} if i in t["excluded"] else {})}
            for i in w.index}


def _baseline(v: Verdict, layout: Mapping, measure: str) -> None:
    """The random-initialisation null (two untrained networks of different seeds), reported beside chance."""
    for inst, path in sorted(((layout or {}).get("baseline") or {}).items()):
        df, prob = read_table(path)
        d = whole_sample(df)
        if prob or d is None or "measure" not in d.columns:
            v.measured[f"random-init baseline {inst}"] = prob or "missing"
            continue
        d = d[d["measure"].astype(str) == measure]
        v.measured[f"random-init baseline {inst} ({measure}, two untrained seeds)"] = {
            str(r["layer"]): {"value": _num(r["value"]), "chance": _num(r.get("chance"))} for _, r in d.iterrows()}


def _profile_diff(v: Verdict, a: Mapping, b: Mapping, k: int, exclude_output: bool, where: str) -> pd.Series | None:
    """P(a) - P(b) per sample ("all", "s0", ...), with a blocking premise that both layer sets are non-empty."""
    layers = sorted(set(a["cal"].index) & set(b["cal"].index))
    shallow, deep = _depth_sets(layers, k, exclude_output)
    excl = set(a["excluded"]) | set(b["excluded"])
    left = ([i for i in shallow if i not in excl], [i for i in deep if i not in excl])
    names = {**b["names"], **a["names"]}
    v.measured.setdefault("layer sets", {})[where] = {"shallow": [names.get(i) for i in left[0]],
                                                      "deep": [names.get(i) for i in left[1]],
                                                      "excluded (chance near 1)": [names.get(i) for i in sorted(excl)]}
    if not v.premise(f"deep and shallow layers left: {where}", all(left), sum(map(len, left)), ">= 1 of each"):
        return None
    return (_profile(a, shallow, deep) - _profile(b, shallow, deep)).dropna()


def _judge_profile(v: Verdict, diffs: Mapping[str, pd.Series], name: str, threshold: float) -> None:
    """Effects over seeds (whole probe set) and over probe subsamples (pooled over seeds); both judged."""
    whole = [float(d["all"]) for d in diffs.values() if "all" in d.index]
    subs = [float(x) for d in diffs.values() for s, x in d.items() if s != "all"]
    v.check(v.effect(name, whole), threshold, "above")
    if subs:
        v.check(v.effect(f"{name}, over probe subsamples", subs, kind="range"), threshold, "above")


def _final_acc(path: Any) -> float:
    df, prob = read_table(path)
    if df is None or "test_acc" not in df.columns or prob not in (None, "diverged"):
        return float("nan")
    d = df.sort_values("epoch") if "epoch" in df.columns else df
    return float(d["test_acc"].iloc[-1])


def _sim_pair(v: Verdict, sim: Mapping, labels: tuple[str, str], insts: tuple[str, str], measure: str):
    """Calibrated tables of two comparisons (labels[0] at insts[0], labels[1] at insts[1]), per-layer report."""
    ta = _cal(_match_inst(sim.get(labels[0]), insts[0]), measure, f"{labels[0]}/{insts[0]}", v)
    tb = _cal(_match_inst(sim.get(labels[1]), insts[1]), measure, f"{labels[1]}/{insts[1]}", v)
    if ta is not None and tb is not None:
        v.measured.setdefault("per layer", {})[insts[0]] = {labels[0]: _layer_report(ta), labels[1]: _layer_report(tb)}
    return ta, tb


def _claim5(layout: Mapping, rules: Mapping) -> dict:
    v, layout = Verdict(5, CLAIMS[5], rules), layout or {}
    measure = str(layout.get("measure") or rules["measure"])
    k, gap, acc_gap = int(rules["deep_layers"]), float(rules["deep_min_gap"]), float(rules["acc_min_gap"])
    roles = _roles(layout)
    v.measured["roles"] = dict(roles)
    nw, w = roles["nowarm"], roles["warm"]
    rule = (f"premises: every Fig. 4 run trained; chance levels computed; deep (last {k}) and shallow (first {k}) "
            f"layers left after excluding layers with chance within {rules['chance_exclude_within']:g} of 1. Rule: "
            f"depth profile P = mean calibrated {measure} (deep) - (shallow), iteration 0 vs end of warmup; "
            f"P(LB warmup) - P(LB no warmup) > {gap:g} over seeds and over probe subsamples, and final test "
            f"accuracy(LB warmup) - (LB no warmup) > {acc_gap:g}, whole range (n <= 3) or t-interval (n > 3)")
    if not v.premise("runs identified (LB no warmup, LB warmup)", bool(nw and w), str(roles), "from specs or labels"):
        return v.entry(rule)
    sim, metrics = layout.get("similarity") or {}, layout.get("metrics") or {}
    _runs_trained(v, metrics, list(metrics), layout)
    diffs, accs = {}, []
    seeds = sorted(set(sim.get(nw) or {}) & set(sim.get(w) or {}))
    if not seeds:
        v.missing("similarity", f"no seed shared by {nw} and {w}")
    for inst in seeds:
        v.seed(inst)
        ta, tb = _sim_pair(v, sim, (w, nw), (inst, inst), measure)
        d = _profile_diff(v, ta, tb, k, False, inst) if ta is not None and tb is not None else None
        if d is not None:
            diffs[inst] = d
        accs.append(_final_acc(_match_inst(metrics.get(w), inst)) - _final_acc(_match_inst(metrics.get(nw), inst)))
    _judge_profile(v, diffs, f"depth profile P({w}) - P({nw}), calibrated {measure}", gap)
    v.check(v.effect(f"final test accuracy {w} - {nw}", accs), acc_gap, "above")
    _baseline(v, layout, measure)
    return v.entry(rule)


def _claim6(layout: Mapping, rules: Mapping) -> dict:
    v, layout = Verdict(6, CLAIMS[6], rules), layout or {}
    measure = str(layout.get("measure") or rules["measure"])
    frac, acc_gap, gap, k = (float(rules["freeze_close_frac"]), float(rules["acc_min_gap"]),
                             float(rules["deep_min_gap"]), int(rules["deep_layers"]))
    rule = (f"premises: the three runs trained; warmup's accuracy gain (warm - no warmup) > {acc_gap:g} over its "
            f"whole range (something to recover). Rule: recovered fraction (frozen - no warmup) / (warm - no warmup) "
            f"> {frac:g}, and the CCA side: depth profile P(frozen FC) - P(LB warmup) (calibrated {measure}, "
            f"iteration 0 vs end of warmup/freezing) > -{gap:g}, whole range (n <= 3) or t-interval (n > 3)")
    roles = _roles(layout)
    v.measured["roles"] = dict(roles)
    nw, w, fr = roles["nowarm"], roles["warm"], roles["frozen"]
    if not v.premise("runs identified (no warmup, warmup, frozen FC)", bool(nw and w and fr), str(roles), "from specs or labels"):
        return v.entry(rule)
    metrics, sim = layout.get("metrics") or {}, layout.get("similarity") or {}
    _runs_trained(v, metrics, [nw, w, fr], layout)
    seeds = sorted(set(metrics.get(nw) or {}) & set(metrics.get(w) or {}) & set(metrics.get(fr) or {}))
    gains, fracs, diffs = [], [], {}
    for inst in seeds:
        v.seed(inst)
        a = {lab: _final_acc(metrics[lab][inst]) for lab in (nw, w, fr)}
        gains.append(a[w] - a[nw])
        fracs.append((a[fr] - a[nw]) / gains[-1] if gains[-1] > 0 else float("nan"))
        v.measured[inst] = {"final_test_acc": {lab: _num(x) for lab, x in a.items()}, "recovered_fraction": _num(fracs[-1])}
        ta, tb = _sim_pair(v, sim, (fr, w), (inst, inst), measure)
        d = _profile_diff(v, ta, tb, k, False, inst) if ta is not None and tb is not None else None
        if d is not None:
            diffs[inst] = d
    g = V.spread(f"warmup's accuracy gain {w} - {nw}", gains, float(rules["interval_level"]))
    v.premise("warmup helps at this scale", V.finite(g["low"]) and g["low"] > acc_gap, g["low"],
              f"low end of the gain's range > {acc_gap:g}")
    v.check(v.effect(f"recovered fraction ({fr} - {nw}) / ({w} - {nw})", fracs), frac, "above")
    _judge_profile(v, diffs, f"depth profile P({fr}) - P({w}), calibrated {measure}", -gap)
    v.effects.append(g)
    return v.entry(rule)


def _students(sim: Mapping) -> tuple[str | None, str | None, list[tuple[str, str]], str]:
    labels = list(sim)
    dist = next((lab for lab in labels if "distil" in lab.lower()), labels[0] if labels else None)
    indep = next((lab for lab in labels if lab != dist), None)
    if not dist or not indep:
        return dist, indep, [], ""
    d_insts, i_insts = sorted(sim[dist] or {}), sorted(sim[indep] or {})
    pairs = [(s, s) for s in d_insts if s in i_insts]
    note = ""
    if not pairs and len(d_insts) == len(i_insts):
        pairs = list(zip(d_insts, i_insts))
        note = "students' instances paired in sorted order: " + ", ".join(f"{a}~{b}" for a, b in pairs)
    return dist, indep, pairs, note


def _claim7(layout: Mapping, rules: Mapping) -> dict:
    v, layout = Verdict(7, CLAIMS[7], rules), layout or {}
    measure = str(layout.get("measure") or rules["measure"])
    k, gap, no_out = int(rules["deep_layers"]), float(rules["deep_min_gap"]), bool(rules["distill_exclude_output"])
    sim = layout.get("similarity") or {}
    dist, indep, pairs, note = _students(sim)
    v.measured["roles"] = {"distilled": dist, "independent": indep, **({"pairing": note} if note else {})}
    out = " (the output layer excluded: distillation matches the logits by construction)" if no_out else ""
    rule = (f"premises: both students (and the teacher's run) trained; chance levels computed; deep (last {k}{out}) "
            f"and shallow (first {k}) layers left. Rule: depth profile P = mean calibrated {measure} to the teacher "
            f"(deep) - (shallow); P(distilled) - P(independent) > {gap:g} over seeds and over probe subsamples, "
            "whole range (n <= 3) or t-interval (n > 3)")
    if not v.premise("students identified (distilled, independent)", bool(pairs), f"{dist}, {indep}", "two labelled comparisons"):
        return v.entry(rule)
    _runs_trained(v, layout.get("metrics") or {}, list(layout.get("metrics") or {}), layout)
    diffs = {}
    for a_inst, b_inst in pairs:
        name = a_inst if a_inst == b_inst else f"{a_inst}~{b_inst}"
        v.seed(name)
        ta, tb = _sim_pair(v, sim, (dist, indep), (a_inst, b_inst), measure)
        d = _profile_diff(v, ta, tb, k, no_out, name) if ta is not None and tb is not None else None
        if d is not None:
            diffs[name] = d
    _judge_profile(v, diffs, f"depth profile P({dist}) - P({indep}), calibrated {measure}", gap)
    _baseline(v, layout, measure)
    return v.entry(rule)


# --------------------------------------------------------------------------- API


def evaluate(layouts: Mapping[str, Mapping], rules: Mapping | None) -> dict:
    """Evaluate the seven claims; see the module docstring for the premises, rules and the result format."""
    r = V.rules_with_defaults(rules)
    layouts = layouts or {}
    f2 = layouts.get("fig2_sgdr", {}) or {}
    results = [
        _barrier_claim(1, f2.get("sgdr_pairs", {}), f2, "SGDR", r),
        _barrier_claim(2, f2.get("sgd_pairs", {}), f2, "SGD", r),
        _claim3(layouts.get("fig3_plane", {}) or {}, r),
        _claim4(layouts.get("fig1_robustness", {}) or {}, r, f2.get("reference_pairs")),
        _claim5(layouts.get("fig4_warmup", {}) or {}, r),
        _claim6(layouts.get("fig5_freeze", {}) or {}, r),
        _claim7(layouts.get("fig6_distill", {}) or {}, r),
    ]
    out = {"rules": r, "summary": V.summary(results), "claims": results}  # summary: the paper's claims only
    if layouts.get("fig9_ensembles"):
        from .ensembles import evaluate_beyond  # only here: claims alone stay free of torch

        out["beyond"] = evaluate_beyond(layouts["fig9_ensembles"], r)
    from .explanations import evaluate_beyond as explain  # fidelity, warmup sharpness (issue 27)

    if extra := explain(layouts, rules, results):
        out.setdefault("beyond", []).extend(extra)
    return out


def to_markdown(result: Mapping) -> str:
    """``claims.md``: the opening table(s) (every list of entries in ``result``: ``claims``, ``beyond``, ...),
    one section per entry, the rules (:func:`closerlook.verdicts.to_markdown`)."""
    return V.to_markdown(result, "Claims of Gotmare et al. (ICLR 2019): verdicts")


def write_reports(result: Mapping, json_path: str | Path, md_path: str | Path) -> None:
    """Write ``claims.json`` (the dict) and ``claims.md`` (:func:`to_markdown`), atomically."""
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, to_markdown(result))
