"""The paper's seven claims as checks: measured numbers, rules from ``config["claims"]``, verdicts.

:func:`evaluate` ``(layouts, rules)`` reads the same tables as the figures (``layouts`` =
``{figure name: layout}``, see :mod:`closerlook.figures`) and returns::

    {"rules": {...}, "summary": {"reproduced": n, "not reproduced": n, "inconclusive": n},
     "claims": [{"id": 1..7, "claim", "measured", "rule", "verdict", "seeds", "notes"}, ...]}

Verdict logic, the same for every claim:

- every check is evaluated per pair / per seed and the claim must hold for **every** one;
- ``inconclusive`` when any needed input is missing, diverged or NaN (the reason is in
  ``notes``; checks that could be evaluated and failed are listed there too), or when a
  precondition fails (claim 6: warmup brought no gain);
- otherwise ``reproduced`` if all checks pass, ``not reproduced`` if any fails.

:func:`write_reports` writes ``claims.json`` and ``claims.md`` atomically.

Rules (defaults = config/demo.yaml). The similarity measure of claims 5 and 7 is the
layout's ``measure`` key if present, else ``rules["measure"]``, else ``cca_mean``:

1. SGDR pairs, each pair x seed: line barrier = max_t line train loss - max(line train loss at t=0, t=1)
   > ``barrier_min_nats`` AND curve excess = the same on the curve < ``curve_close_nats``.
2. The same for the step-decay SGD pairs (the different-seed reference pairs are reported, not judged).
3. Plane of Fig. 3, plane train loss L interpolated bilinearly from grid.csv: the trajectory
   points (points.csv rows other than w1/w2/bend, in epoch order) that are not at w1 or w2 are
   the "intermediate" ones. climb: max L(intermediate) >= ``plane_high_loss_factor`` x
   min(L(w1), L(w2)); ends in basin: L(last trajectory point) <= max(L(w1), L(w2)) + ``curve_close_nats``.
4. Fig. 1 curves, each curve x seed: min_t curve test accuracy >= ``robust_min_acc_ratio`` x
   min(test accuracy at t=0, t=1).
5. Fig. 4, per seed, similarity of each layer between iteration 0 and the end of warmup;
   deep = last ``deep_layers`` layers, shallow = first ``deep_layers``:
   (a) mean deep similarity(LB warmup) - mean deep similarity(LB no warmup) >= ``deep_min_gap``;
   (b) shallow spread = max over shallow layers of (max - min across all Fig. 4 runs) <= ``shallow_max_spread``;
   (c) final test accuracy(LB warmup) - final test accuracy(LB no warmup) >= ``acc_min_gap``.
6. Fig. 5, per seed, final test accuracies: gain = warm - nowarm; inconclusive if gain <= 0 or
   gain < ``acc_min_gap`` (no measurable gain to recover);
   else (frozen - nowarm) >= ``freeze_close_frac`` x gain.
7. Fig. 6, per seed: mean deep similarity(distilled, teacher) - (independent, teacher) >= ``deep_min_gap``
   AND max over shallow layers |distilled - independent| <= ``shallow_max_spread``.

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

from .tables import ANCHORS, epoch_key, path_barrier, plane_arrays, read_table
from .io import atomic_write_json, atomic_write_text

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

DEFAULT_RULES = {
    "barrier_min_nats": 0.1, "curve_close_nats": 0.1, "plane_high_loss_factor": 2.0, "robust_min_acc_ratio": 0.9,
    "deep_layers": 3, "shallow_max_spread": 0.05, "deep_min_gap": 0.05, "acc_min_gap": 0.005,
    "freeze_close_frac": 0.5, "measure": "cca_mean",
}

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


# --------------------------------------------------------------------------- helpers


def _num(x: Any) -> float | None:
    """JSON-safe number: NaN/inf -> None, numpy -> float, rounded for readability."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if math.isfinite(f) else None


class _Acc:
    """Collects per-check outcomes and problems, then decides the verdict."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.failures: list[str] = []
        self.passes = 0
        self.seeds: list[str] = []

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def check(self, ok: bool | None, what: str) -> bool | None:
        """ok None = could not be evaluated (NaN); the caller has already noted why."""
        if ok is None:
            return None
        if ok:
            self.passes += 1
        else:
            self.failures.append(what)
        return ok

    def seed(self, s: str) -> None:
        if s not in self.seeds:
            self.seeds.append(s)

    def verdict(self) -> tuple[str, str]:
        notes = []
        if self.problems:
            notes.append("inconclusive because: " + "; ".join(self.problems))
            if self.failures:
                notes.append("among the checks that could be evaluated, these failed: " + "; ".join(self.failures))
            return INCONCLUSIVE, " ".join(notes)
        if self.failures:
            return NOT_REPRODUCED, "failed: " + "; ".join(self.failures)
        if self.passes == 0:
            return INCONCLUSIVE, "nothing to evaluate"
        return REPRODUCED, f"all {self.passes} checks passed"


def _entry(cid: int, measured: dict, rule: str, acc: _Acc, extra_notes: Sequence[str] = ()) -> dict:
    verdict, notes = acc.verdict()
    parts = [n.strip().rstrip(".") for n in [notes, *extra_notes] if n and n.strip()]
    all_notes = ". ".join(parts) + ("." if parts else "")
    return {"id": cid, "claim": CLAIMS[cid], "measured": measured, "rule": rule, "verdict": verdict,
            "seeds": list(acc.seeds), "notes": all_notes}


def _endpoint(df: pd.DataFrame | None, column: str) -> tuple[float, float]:
    if df is None or column not in df.columns or "t" not in df.columns or df.empty:
        return float("nan"), float("nan")
    d = df.sort_values("t")
    return float(d[column].iloc[0]), float(d[column].iloc[-1])


def _path(files: Mapping | None, kind: str, where: str, acc: _Acc) -> pd.DataFrame | None:
    df, prob = read_table((files or {}).get(kind))
    if prob:
        acc.problem(f"{where} {kind}: {prob}")
        return None
    return df


# --------------------------------------------------------------------------- claims 1, 2: barriers


def _barrier_claim(cid: int, pairs: Mapping, rules: Mapping, reference: Mapping | None) -> dict:
    bmin, cclose = float(rules["barrier_min_nats"]), float(rules["curve_close_nats"])
    acc, measured = _Acc(), {}
    if not pairs:
        acc.problem("no pairs configured")
    for label, insts in (pairs or {}).items():
        if not insts:
            acc.problem(f"{label}: no results")
        for inst, files in (insts or {}).items():
            where = f"{label}/{inst}"
            acc.seed(str(inst))
            line, curve = _path(files, "line", where, acc), _path(files, "curve", where, acc)
            lb, cb = path_barrier(line), path_barrier(curve)
            e0, e1 = _endpoint(line, "train_loss")
            measured[where] = {"line_barrier_nats": _num(lb), "curve_excess_nats": _num(cb),
                               "endpoint_train_loss": [_num(e0), _num(e1)],
                               "line_max_train_loss": _num(line["train_loss"].max()) if line is not None and "train_loss" in line else None,
                               "curve_max_train_loss": _num(curve["train_loss"].max()) if curve is not None and "train_loss" in curve else None}
            if line is not None and not math.isfinite(lb):
                acc.problem(f"{where} line: NaN train loss")
            if curve is not None and not math.isfinite(cb):
                acc.problem(f"{where} curve: NaN train loss")
            acc.check(lb > bmin if math.isfinite(lb) else None, f"{where}: line barrier {lb:.4g} <= {bmin}")
            acc.check(cb < cclose if math.isfinite(cb) else None, f"{where}: curve excess {cb:.4g} >= {cclose}")
    extra = []
    if reference:
        refs = {}
        for label, insts in reference.items():
            for inst, files in (insts or {}).items():
                line, _ = read_table((files or {}).get("line"))
                curve, _ = read_table((files or {}).get("curve"))
                refs[f"{label}/{inst}"] = {"line_barrier_nats": _num(path_barrier(line)),
                                           "curve_excess_nats": _num(path_barrier(curve))}
        measured["reference (not judged)"] = refs
        extra.append("Reference pairs (two seeds of one recipe) are reported as a positive control, not judged.")
    rule = (f"for every pair and seed: line barrier = max_t line train loss - max(endpoint train losses) > {bmin} nats "
            f"AND curve excess = max_t curve train loss - max(endpoint train losses) < {cclose} nats; "
            f"must hold for every pair and every seed")
    return _entry(cid, measured, rule, acc, extra)


# --------------------------------------------------------------------------- claim 3: plane


def bilinear(U: np.ndarray, V: np.ndarray, Z: np.ndarray, u: float, v: float) -> float:
    """Bilinear interpolation of Z[v, u] on the regular grid (clamped at the border); NaN-propagating."""
    if not (math.isfinite(u) and math.isfinite(v)) or U.size < 2 or V.size < 2:
        return float("nan")
    u = min(max(u, U[0]), U[-1])
    v = min(max(v, V[0]), V[-1])
    i = int(np.clip(np.searchsorted(U, u) - 1, 0, U.size - 2))
    j = int(np.clip(np.searchsorted(V, v) - 1, 0, V.size - 2))
    fu = (u - U[i]) / (U[i + 1] - U[i])
    fv = (v - V[j]) / (V[j + 1] - V[j])
    z = (Z[j, i] * (1 - fu) * (1 - fv) + Z[j, i + 1] * fu * (1 - fv) + Z[j + 1, i] * (1 - fu) * fv
         + Z[j + 1, i + 1] * fu * fv)
    return float(z)


def _plane_one(layout: Mapping, rules: Mapping, where: str, acc: _Acc) -> dict:
    factor, cclose = float(rules["plane_high_loss_factor"]), float(rules["curve_close_nats"])
    grid, gp = read_table(layout.get("grid"))
    pts, pp = read_table(layout.get("points"))
    out: dict = {}
    if gp or pp or grid is None or pts is None:
        acc.problem(f"{where}: grid {gp or 'ok'}, points {pp or 'ok'}")
        return out
    if not {"u", "v", "train_loss"} <= set(grid.columns) or not {"label", "u", "v"} <= set(pts.columns):
        acc.problem(f"{where}: grid/points lack columns")
        return out
    U, V, Z = plane_arrays(grid, "train_loss")
    pts = pts.copy()
    pts["label"] = pts["label"].astype(str)
    anchors = {a: pts[pts["label"] == a][["u", "v"]].to_numpy(dtype=float) for a in ANCHORS}
    if any(len(anchors[a]) == 0 for a in ("w1", "w2")):
        acc.problem(f"{where}: points.csv lacks w1/w2")
        return out
    w1, w2 = anchors["w1"][0], anchors["w2"][0]
    L1, L2 = bilinear(U, V, Z, *w1), bilinear(U, V, Z, *w2)
    traj = pts[~pts["label"].isin(ANCHORS)]
    traj = traj.iloc[sorted(range(len(traj)), key=lambda i: epoch_key(traj["label"].iloc[i]))]
    scale = float(np.hypot(*(w2 - w1))) or 1.0
    tol = 1e-3 * scale
    per_point, inter = {}, []
    for _, r in traj.iterrows():
        p = np.array([r["u"], r["v"]], dtype=float)
        L = bilinear(U, V, Z, *p)
        at_end = bool(np.hypot(*(p - w1)) <= tol or np.hypot(*(p - w2)) <= tol)
        per_point[r["label"]] = {"plane_train_loss": _num(L), "rel_distance": _num(r.get("rel_distance")),
                                 "at_anchor": at_end}
        if not at_end:
            inter.append((r["label"], L))
    out.update({"plane_train_loss_w1": _num(L1), "plane_train_loss_w2": _num(L2), "points": per_point})
    if "rel_distance" in traj.columns and len(traj):
        out["max_rel_distance_of_projections"] = _num(np.nanmax(traj["rel_distance"].to_numpy(dtype=float)))
    if not (math.isfinite(L1) and math.isfinite(L2)):
        acc.problem(f"{where}: plane loss at w1/w2 is NaN (diverged grid points)")
        return out
    if not inter:
        acc.problem(f"{where}: no projected trajectory point between w1 and w2")
    elif not all(math.isfinite(L) for _, L in inter):
        acc.problem(f"{where}: plane loss NaN at " + ", ".join(lab for lab, L in inter if not math.isfinite(L)))
    else:
        peak_label, peak = max(inter, key=lambda x: x[1])
        ratio = peak / min(L1, L2)
        out.update({"max_intermediate_plane_loss": _num(peak), "at": peak_label, "climb_ratio": _num(ratio)})
        acc.check(ratio >= factor, f"{where}: trajectory peak {peak:.4g} is only {ratio:.3g} x min endpoint loss (< {factor})")
    if len(traj):
        last = traj.iloc[-1]
        Ll = bilinear(U, V, Z, float(last["u"]), float(last["v"]))
        out.update({"final_point": last["label"], "final_plane_loss": _num(Ll),
                    "final_excess_over_endpoints": _num(Ll - max(L1, L2))})
        if not math.isfinite(Ll):
            acc.problem(f"{where}: plane loss NaN at the final point {last['label']}")
        else:
            acc.check(Ll <= max(L1, L2) + cclose,
                      f"{where}: final point {last['label']} loss {Ll:.4g} > max endpoint loss {max(L1, L2):.4g} + {cclose}")
    if "bend" in anchors and len(anchors["bend"]):
        t = np.linspace(0, 1, 61)[:, None]
        b = (1 - t) ** 2 * w1 + 2 * t * (1 - t) * anchors["bend"][0] + t ** 2 * w2
        lb = [bilinear(U, V, Z, *p) for p in b]
        out["curve_excess_on_plane (info)"] = _num(np.max(lb) - max(L1, L2)) if np.isfinite(lb).all() else None
    return out


def _claim3(layout: Mapping, rules: Mapping) -> dict:
    acc, measured = _Acc(), {}
    if not layout:
        acc.problem("no plane configured")
    elif isinstance(layout.get("grid"), (str, Path)) or "points" in layout:
        acc.seed("plane")
        measured["plane"] = _plane_one(layout, rules, "plane", acc)
    else:  # {inst: {"grid", "points"}}
        for inst, lay in layout.items():
            acc.seed(str(inst))
            measured[str(inst)] = _plane_one(lay or {}, rules, str(inst), acc)
    factor, cclose = rules["plane_high_loss_factor"], rules["curve_close_nats"]
    rule = (f"plane train loss L bilinearly interpolated from grid.csv; intermediate trajectory points = projected "
            f"checkpoints not at w1/w2: max L(intermediate) >= {factor} x min(L(w1), L(w2)) (climbs over high loss) "
            f"AND L(last trajectory point) <= max(L(w1), L(w2)) + {cclose} nats (ends in the basin the curve connects)")
    extra = []
    for m in measured.values():
        if isinstance(m, dict) and m.get("points"):
            last = m.get("final_point")
            if last and (m["points"].get(last) or {}).get("at_anchor"):
                extra.append(f"The last trajectory point ({last}) coincides with an anchor, so 'ends in the basin' "
                             "holds by construction; the climb check carries the claim.")
            rd = m.get("max_rel_distance_of_projections")
            if rd is not None:
                extra.append(f"Projections lie up to {100 * rd:.1f} % of ||w - w1|| off the plane; plane losses at "
                             "projections are the plane's, not the iterates' own.")
    return _entry(3, measured, rule, acc, extra)


# --------------------------------------------------------------------------- claim 4


def _claim4(layout: Mapping, rules: Mapping) -> dict:
    ratio = float(rules["robust_min_acc_ratio"])
    acc, measured = _Acc(), {}
    curves = (layout or {}).get("curves", {}) or {}
    if not curves:
        acc.problem("no curves configured")
    for label, insts in curves.items():
        for inst, files in (insts or {}).items():
            where = f"{label}/{inst}"
            acc.seed(str(inst))
            curve = _path(files, "curve", where, acc)
            if curve is None:
                continue
            a = curve.sort_values("t")["test_acc"].to_numpy(dtype=float) if "test_acc" in curve else np.array([np.nan])
            if not np.isfinite(a).all() or a.size == 0:
                acc.problem(f"{where}: NaN accuracy on the curve")
                continue
            lo_end = min(a[0], a[-1])
            measured[where] = {"min_curve_test_acc": _num(a.min()), "endpoint_test_acc": [_num(a[0]), _num(a[-1])],
                               "ratio_to_min_endpoint": _num(a.min() / lo_end if lo_end > 0 else float("nan"))}
            acc.check(a.min() >= ratio * lo_end, f"{where}: min accuracy {a.min():.4g} < {ratio} x {lo_end:.4g}")
    rule = (f"for every curve and seed: min_t curve test accuracy >= {ratio} x min(test accuracy at t=0, t=1); "
            "must hold for every curve and every seed")
    return _entry(4, measured, rule, acc)


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
            if ((s.get("warmup") or {}).get("iterations") or 0) > 0:
                roles["warm"] = roles["warm"] or lab
            elif s.get("freeze"):
                roles["frozen"] = roles["frozen"] or lab
            elif batches[lab] < big:
                roles["small"] = roles["small"] or lab
            else:
                roles["nowarm"] = roles["nowarm"] or lab
        return roles
    for lab in labels:
        low = lab.lower()
        if "freez" in low or "frozen" in low:
            roles["frozen"] = roles["frozen"] or lab
        elif re.search(r"no[ _-]?warm", low):
            roles["nowarm"] = roles["nowarm"] or lab
        elif "warm" in low:
            roles["warm"] = roles["warm"] or lab
        elif "sb" in low or "small" in low:
            roles["small"] = roles["small"] or lab
    return roles


def _sim(path: Any, measure: str, where: str, acc: _Acc) -> pd.Series | None:
    """Per-layer values (index = layer_index, sorted) for ``measure``; None with a problem noted."""
    df, prob = read_table(path)
    if prob or df is None:
        acc.problem(f"{where}: similarity {prob}")
        return None
    d = df[df["measure"].astype(str) == measure] if "measure" in df.columns else df.iloc[0:0]
    if d.empty:
        acc.problem(f"{where}: no '{measure}' rows")
        return None
    s = pd.Series(d["value"].to_numpy(dtype=float), index=d["layer_index"].to_numpy(dtype=int)).sort_index()
    s = s[~s.index.duplicated()]
    if not np.isfinite(s.to_numpy()).all():
        acc.problem(f"{where}: NaN similarity")
        return None
    return s


def _final_acc(path: Any, where: str, acc: _Acc) -> float | None:
    df, prob = read_table(path)
    if prob or df is None or "test_acc" not in df.columns:
        acc.problem(f"{where}: metrics {prob or 'lack test_acc'}")
        return None
    v = float(df.sort_values("epoch")["test_acc"].iloc[-1]) if "epoch" in df.columns else float(df["test_acc"].iloc[-1])
    if not math.isfinite(v):
        acc.problem(f"{where}: final test accuracy is NaN")
        return None
    return v


def _split_layers(n_layers: int, k: int, acc: _Acc, where: str) -> tuple[slice, slice, str]:
    note = ""
    if n_layers < 1 or k < 1:
        acc.problem(f"{where}: no layers")
    elif n_layers < 2 * k:
        note = f"only {n_layers} layers: the first and last {k} overlap."
    return slice(0, k), slice(max(n_layers - k, 0), n_layers), note


def _insts(d: Mapping | None) -> list[str]:
    return sorted((d or {}).keys())


def _match_inst(paths: Mapping | None, inst: str) -> Any:
    """The file of ``inst``, or the only one when a run has a single instance (e.g. a fixed-seed comparison)."""
    paths = paths or {}
    if inst in paths:
        return paths[inst]
    if len(paths) == 1:
        return next(iter(paths.values()))
    return None


def _claim5(layout: Mapping, rules: Mapping) -> dict:
    k = int(rules["deep_layers"])
    gap_min, spread_max, acc_gap = float(rules["deep_min_gap"]), float(rules["shallow_max_spread"]), float(rules["acc_min_gap"])
    layout = layout or {}
    measure = str(layout.get("measure") or rules.get("measure") or "cca_mean")
    acc, measured, extra = _Acc(), {}, []
    sim, metrics = layout.get("similarity", {}) or {}, layout.get("metrics", {}) or {}
    roles = _roles(layout)
    measured["roles"] = dict(roles)
    nw, w = roles["nowarm"], roles["warm"]
    if not nw or not w:
        acc.problem(f"cannot tell the LB no-warmup / LB warmup runs apart (roles found: {roles})")
        return _entry(5, measured, _rule5(k, gap_min, spread_max, acc_gap, measure), acc)
    seeds = sorted(set(_insts(sim.get(nw))) & set(_insts(sim.get(w)))) or _insts(sim.get(nw))
    if not seeds:
        acc.problem("no similarity results")
    for inst in seeds:
        acc.seed(inst)
        m: dict = {}
        series = {}
        for lab in sim:
            p = _match_inst(sim[lab], inst)
            if p is None:
                if lab in (nw, w):
                    acc.problem(f"{lab}/{inst}: no similarity file")
                continue
            s = _sim(p, measure, f"{lab}/{inst}", acc)
            if s is not None:
                series[lab] = s
        if nw in series and w in series:
            n = len(series[w])
            sh, dp, note = _split_layers(n, k, acc, inst)
            if note and note not in extra:
                extra.append(note)
            deep_nw, deep_w = float(series[nw].iloc[dp].mean()), float(series[w].iloc[dp].mean())
            table = pd.concat(series, axis=1).sort_index()
            shallow = table.iloc[sh]
            spread = float((shallow.max(axis=1) - shallow.min(axis=1)).max())
            shallow_nw = float(series[nw].iloc[sh].mean())
            m.update({f"deep_mean_{measure}": {nw: _num(deep_nw), w: _num(deep_w)}, "deep_gap": _num(deep_w - deep_nw),
                      "shallow_spread_across_runs": _num(spread), "runs_in_spread": list(series),
                      f"shallow_mean_{measure}_{nw} (info)": _num(shallow_nw)})
            acc.check(deep_w - deep_nw >= gap_min, f"{inst}: deep gap {deep_w - deep_nw:.4g} < {gap_min}")
            acc.check(spread <= spread_max, f"{inst}: shallow spread {spread:.4g} > {spread_max}")
        a_nw = _final_acc(_match_inst(metrics.get(nw), inst), f"{nw}/{inst}", acc)
        a_w = _final_acc(_match_inst(metrics.get(w), inst), f"{w}/{inst}", acc)
        if a_nw is not None and a_w is not None:
            m.update({"final_test_acc": {nw: _num(a_nw), w: _num(a_w)}, "acc_gap": _num(a_w - a_nw)})
            acc.check(a_w - a_nw >= acc_gap, f"{inst}: accuracy gap {a_w - a_nw:.4g} < {acc_gap}")
        measured[inst] = m
    return _entry(5, measured, _rule5(k, gap_min, spread_max, acc_gap, measure), acc, extra)


def _rule5(k, gap, spread, acc_gap, measure) -> str:
    return (f"per seed, {measure} between iteration 0 and the end of warmup; deep = last {k} layers, shallow = first {k}: "
            f"(a) mean deep similarity(LB warmup) - mean deep similarity(LB no warmup) >= {gap}; "
            f"(b) max over shallow layers of (max - min across all Fig. 4 runs) <= {spread}; "
            f"(c) final test accuracy(LB warmup) - final test accuracy(LB no warmup) >= {acc_gap}; "
            "all three for every seed")


def _claim6(layout: Mapping, rules: Mapping) -> dict:
    frac, acc_gap = float(rules["freeze_close_frac"]), float(rules["acc_min_gap"])
    acc, measured = _Acc(), {}
    layout = layout or {}
    metrics = layout.get("metrics", {}) or {}
    roles = _roles(layout)
    measured["roles"] = dict(roles)
    rule = (f"per seed, final test accuracies: gain = acc(LB warmup) - acc(LB no warmup); inconclusive if gain <= 0 "
            f"or gain < acc_min_gap ({acc_gap}: no measurable gain to recover); "
            f"else acc(LB frozen FC) - acc(LB no warmup) >= {frac} x gain; for every seed")
    nw, w, fr = roles["nowarm"], roles["warm"], roles["frozen"]
    if not (nw and w and fr):
        acc.problem(f"cannot identify the no-warmup / warmup / frozen runs (roles found: {roles})")
        return _entry(6, measured, rule, acc)
    seeds = sorted(set(_insts(metrics.get(nw))) & set(_insts(metrics.get(w))) & set(_insts(metrics.get(fr))))
    if not seeds:
        acc.problem("no seed shared by the three runs")
    for inst in seeds:
        acc.seed(inst)
        a = {lab: _final_acc(metrics[lab][inst], f"{lab}/{inst}", acc) for lab in (nw, w, fr)}
        m = {"final_test_acc": {lab: _num(v) for lab, v in a.items()}}
        if all(v is not None for v in a.values()):
            gain, rec = a[w] - a[nw], a[fr] - a[nw]
            m.update({"warmup_gain": _num(gain), "freeze_gain": _num(rec),
                      "recovered_fraction": _num(rec / gain) if gain > 0 else None})
            if gain <= 0 or gain < acc_gap:
                acc.problem(f"{inst}: warmup brought no gain ({gain:.4g} < acc_min_gap {acc_gap}), nothing to recover")
            else:
                acc.check(rec >= frac * gain, f"{inst}: frozen FC recovers {rec / gain:.3g} of the warmup gain (< {frac})")
        measured[inst] = m
    return _entry(6, measured, rule, acc)


def _claim7(layout: Mapping, rules: Mapping) -> dict:
    k = int(rules["deep_layers"])
    gap_min, spread_max = float(rules["deep_min_gap"]), float(rules["shallow_max_spread"])
    measure = str((layout or {}).get("measure") or rules.get("measure") or "cca_mean")
    acc, measured, extra = _Acc(), {}, []
    sim = (layout or {}).get("similarity", {}) or {}
    labels = list(sim)
    dist = next((lab for lab in labels if "distil" in lab.lower()), labels[0] if labels else None)
    indep = next((lab for lab in labels if lab != dist), None)
    measured["roles"] = {"distilled": dist, "independent": indep}
    rule = (f"per seed, {measure} of each student's layer vs the teacher's same layer; deep = last {k}, shallow = first {k}: "
            f"mean deep(distilled) - mean deep(independent) >= {gap_min} AND max over shallow layers "
            f"|distilled - independent| <= {spread_max}; for every seed")
    if not dist or not indep:
        acc.problem("need a distilled and an independent student")
        return _entry(7, measured, rule, acc)
    d_insts, i_insts = _insts(sim[dist]), _insts(sim[indep])
    pairs = [(s, s) for s in d_insts if s in i_insts]
    if not pairs and len(d_insts) == len(i_insts):
        pairs = list(zip(d_insts, i_insts))
        extra.append("Students' instances paired in sorted order: " + ", ".join(f"{a}~{b}" for a, b in pairs) + ".")
    if not pairs:
        acc.problem("no matching instances of the two students")
    for a_inst, b_inst in pairs:
        name = a_inst if a_inst == b_inst else f"{a_inst}~{b_inst}"
        acc.seed(name)
        sd = _sim(sim[dist][a_inst], measure, f"{dist}/{a_inst}", acc)
        si = _sim(sim[indep][b_inst], measure, f"{indep}/{b_inst}", acc)
        if sd is None or si is None:
            continue
        sh, dp, note = _split_layers(min(len(sd), len(si)), k, acc, name)
        if note and note not in extra:
            extra.append(note)
        deep_gap = float(sd.iloc[dp].mean() - si.iloc[dp].mean())
        shallow_diff = float(np.max(np.abs(sd.iloc[sh].to_numpy() - si.iloc[sh].to_numpy())))
        measured[name] = {f"deep_mean_{measure}": {dist: _num(sd.iloc[dp].mean()), indep: _num(si.iloc[dp].mean())},
                          "deep_gap": _num(deep_gap), "shallow_max_abs_diff": _num(shallow_diff)}
        acc.check(deep_gap >= gap_min, f"{name}: deep gap {deep_gap:.4g} < {gap_min}")
        acc.check(shallow_diff <= spread_max, f"{name}: shallow difference {shallow_diff:.4g} > {spread_max}")
    return _entry(7, measured, rule, acc, extra)


# --------------------------------------------------------------------------- API


def evaluate(layouts: Mapping[str, Mapping], rules: Mapping | None) -> dict:
    """Evaluate the seven claims; see the module docstring for the rules and the result format."""
    r = dict(DEFAULT_RULES)
    r.update({k: v for k, v in (rules or {}).items() if v is not None})
    layouts = layouts or {}
    f2 = layouts.get("fig2_sgdr", {}) or {}
    results = [
        _barrier_claim(1, f2.get("sgdr_pairs", {}), r, f2.get("reference_pairs")),
        _barrier_claim(2, f2.get("sgd_pairs", {}), r, None),
        _claim3(layouts.get("fig3_plane", {}) or {}, r),
        _claim4(layouts.get("fig1_robustness", {}) or {}, r),
        _claim5(layouts.get("fig4_warmup", {}) or {}, r),
        _claim6(layouts.get("fig5_freeze", {}) or {}, r),
        _claim7(layouts.get("fig6_distill", {}) or {}, r),
    ]
    summary = {v: sum(1 for c in results if c["verdict"] == v) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    return {"rules": r, "summary": summary, "claims": results}


def _md_value(v: Any, depth: int = 0) -> list[str]:
    pad = "  " * depth
    if isinstance(v, Mapping):
        out = []
        for k, x in v.items():
            if isinstance(x, Mapping):
                out.append(f"{pad}- {k}:")
                out.extend(_md_value(x, depth + 1))
            else:
                out.append(f"{pad}- {k}: {_fmt(x)}")
        return out
    return [f"{pad}- {_fmt(v)}"]


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_fmt(y) for y in x) + "]"
    return str(x)


def to_markdown(result: Mapping) -> str:
    lines = ["# Claims of Gotmare et al. (ICLR 2019): verdicts", ""]
    s = result.get("summary", {})
    lines.append(f"Reproduced: {s.get(REPRODUCED, 0)}, not reproduced: {s.get(NOT_REPRODUCED, 0)}, "
                 f"inconclusive: {s.get(INCONCLUSIVE, 0)}. Every rule must hold for every pair and seed listed.")
    lines += ["", "| # | claim | verdict | seeds |", "|---|---|---|---|"]
    for c in result.get("claims", []):
        short = c["claim"].split(";")[0].split(" (")[0].replace("|", "/")
        lines.append(f"| {c['id']} | {short} | **{c['verdict']}** | {', '.join(c['seeds']) or '-'} |")
    lines.append("")
    for c in result.get("claims", []):
        lines += [f"## Claim {c['id']}: {c['verdict']}", "", f"**Claim.** {c['claim']}", "",
                  f"**Rule.** {c['rule']}", "", "**Measured.**", ""]
        lines += _md_value(c["measured"]) or ["- (nothing measured)"]
        lines += ["", f"**Verdict.** {c['verdict']} (seeds: {', '.join(c['seeds']) or '-'})", ""]
        if c.get("notes"):
            lines += [f"**Notes.** {c['notes']}", ""]
    lines += ["## Rules (config `claims:`)", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in result.get("rules", {}).items()]
    return "\n".join(lines) + "\n"


def write_reports(result: Mapping, json_path: str | Path, md_path: str | Path) -> None:
    """Write ``claims.json`` (the dict) and ``claims.md`` (summary table + one section per claim), atomically."""
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, to_markdown(result))
