"""Claims 1 and 2 in two rows each (issue 29.1): (a) the straight line between the iterates shows a barrier
(the effect; premises: endpoints trained, the line evaluated at >= ``line_min_points`` t values, and for SGDR
the restart moved the run: its training loss rose by >= ``restart_min_rise_nats``); (b) the fitted curve removes
it, judged only on the pairs where (a) holds, premise "fit converged" per pair, and its negative outcome gated by
the two-seed positive control (a curve that removes its own barrier needs no control)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .. import verdicts as V
from ..tables import read_table
from ..verdicts import Verdict
from . import _common as K

_num = V.num


def restart_epochs(spec: Mapping | None, last_epoch: int) -> list[int] | None:
    """The epochs that end an SGDR cycle (a restart follows each), up to ``last_epoch``; None for another schedule."""
    s = (spec or {}).get("schedule") or {}
    if str(s.get("name", "")).lower() != "sgdr":
        return None
    t0, tm = float(s.get("T0", 1)), float(s.get("Tmult", 1))
    out, e, cyc = [], 0.0, t0
    while e + cyc < last_epoch + 1e-9 and cyc > 0:
        e += cyc
        out.append(int(round(e)))
        cyc *= tm
    return out


def restart_rise(metrics_path: Any, spec: Mapping | None, label: str, start_loss: float = float("nan")) -> tuple[float, str]:
    """Largest rise of the training loss across a restart between the pair's endpoints: the logged (epoch-mean)
    loss of epoch e+1 - that of epoch e, e a cycle end with a <= e < b from the label ``...w<a>-w<b>`` (every
    restart when not named). When e is the first epoch its mean includes the untrained start, so "before" is then
    the pair's own start loss (``start_loss``: the line at t = 0, evaluated at w_e) when the pair starts at e."""
    df, prob = read_table(metrics_path)
    if df is None or prob not in (None,) or not {"epoch", "train_loss"} <= set(df.columns):
        return float("nan"), f"SGDR metrics {prob or 'without epoch/train_loss'}"
    d = df.sort_values("epoch").set_index("epoch")["train_loss"].astype(float)
    rs = restart_epochs(spec, int(d.index.max()))
    if rs is None:
        return float("nan"), "not an SGDR schedule"
    ab = K.epochs_in_label(label)
    rs = [e for e in rs if (ab is None or ab[0] <= e < ab[1]) and e in d.index and e + 1 in d.index]
    if not rs:
        return float("nan"), "no restart between the endpoints with a logged epoch after it"
    first = int(d.index.min())
    rises, how = {}, {}
    for e in rs:
        if e > first:
            rises[e], how[e] = float(d[e + 1] - d[e]), "epoch means"
        elif ab is not None and ab[0] == e and math.isfinite(start_loss):
            rises[e], how[e] = float(d[e + 1] - start_loss), "epoch mean after - the line's start loss"
    if not rises:
        return float("nan"), "not known: the only restart ends the first epoch (its mean includes the untrained start)"
    e = max(rises, key=rises.get)
    return rises[e], f"restart after epoch {e}; {how[e]}"


def _unit_a(v: Verdict, files: Mapping, where: str, layout: Mapping, sgdr: tuple | None) -> tuple[dict, bool]:
    """Claim (a) for one pair: its numbers into ``measured``; (barriers of line and curve, unit premises held)."""
    line = K.path(files, "line", where, v)
    if line is None:
        return {}, False
    curve, _ = read_table((files or {}).get("curve"))
    lb, cb = K.barriers(line), K.barriers(curve)
    n_pts = int(np.isfinite(line["train_loss"].to_numpy(dtype=float)).sum()) if "train_loss" in line.columns else 0
    v.measured[where] = {
        "line_barrier_nats (above higher endpoint)": _num(lb["endpoint_max"]),
        "line_barrier_nats (above interpolation)": _num(lb["interpolation"]),
        "curve_barrier_nats (above higher endpoint)": _num(cb["endpoint_max"]),
        "curve_barrier_nats (above interpolation)": _num(cb["interpolation"]),
        "line_points": n_pts, "endpoint_train_loss": [_num(x) for x in K.ends(line, "train_loss")],
        "endpoint_test_acc": [_num(x) for x in K.ends(line, "test_acc")]}
    ok = K.endpoints_trained(v, line, where, layout)
    need = int(v.rules["line_min_points"])
    ok = v.premise(f"line evaluated at enough points: {where}", n_pts >= need, n_pts,
                   f">= {need} finite t values (fewer can miss a barrier)", blocking=False) and ok
    if sgdr is not None:
        metrics, spec, inst, label = sgdr
        m = _match(metrics, inst)
        rise, at = restart_rise(m, spec, label, K.ends(line, "train_loss")[0])
        marg = float(v.rules["restart_min_rise_nats"])
        v.measured[where]["restart_rise_nats"] = _num(rise)
        ok = v.premise(f"restart moved the run: {where}", math.isfinite(rise) and rise >= marg,
                       f"{_fmt(rise)} ({at})" if math.isfinite(rise) else at,
                       f"training loss after the restart - before >= {marg:g} nats", blocking=False) and ok
    if not math.isfinite(lb[K.judged(v)]):
        v.missing(f"{where} line", "NaN train loss")
        ok = False
    return {"line": lb, "curve": cb}, ok


def _match(paths: Mapping | None, inst: str) -> Any:
    paths = paths or {}
    return paths.get(inst) or (next(iter(paths.values())) if len(paths) == 1 else None)


def barrier_claims(cid: int, pairs: Mapping, layout: Mapping, run: str, rules: Mapping, texts: Mapping) -> list[dict]:
    """Rows ``<cid>a`` and ``<cid>b``."""
    va, vb = Verdict(f"{cid}a", texts[f"{cid}a"], rules), Verdict(f"{cid}b", texts[f"{cid}b"], rules)
    bmin, frac = float(rules["barrier_min_nats"]), float(rules["curve_excess_frac"])
    K.runs_trained(va, layout.get("metrics"), [run], layout)
    K.runs_trained(vb, layout.get("metrics"), [run], layout)
    j = K.judged(va)
    units_a, units_b, bars, other, kept, kept_nats = [], [], {}, {}, {}, {}
    for label, insts in (pairs or {}).items():
        for inst, files in (insts or {}).items():
            where = f"{label}/{inst}"
            va.seed(inst)
            units_a.append(where)
            sgdr = ((layout.get("metrics") or {}).get(run), (layout.get("specs") or {}).get(run), inst, label) \
                if cid == 1 else None
            b, ok = _unit_a(va, files, where, layout, sgdr)
            if not ok:
                continue
            lb, cb = b["line"][j], b["curve"][j]
            bars.setdefault(label, []).append(lb)
            other.setdefault(label, []).append(b["line"]["endpoint_max" if j == "interpolation" else "interpolation"])
            # (b): only where (a) holds for this pair
            vb.seed(inst)
            units_b.append(where)
            if not vb.premise(f"line barrier (claim {cid}a holds): {where}", lb > bmin, lb, f"> {bmin:g} nats",
                              blocking=False):
                continue
            if not math.isfinite(cb):
                vb.missing(f"{where} curve", "missing or NaN train loss")
                continue
            vb.measured[where] = {"line_barrier_nats": _num(lb), "curve_barrier_nats": _num(cb),
                                  "kept_fraction": _num(cb / lb)}
            if not K.converged_premise(vb, files, where, K.removes(vb, lb, cb)):
                continue
            kept.setdefault(label, []).append(cb / lb)
            kept_nats.setdefault(label, []).append(cb)
    va.measured.setdefault("barrier judged", K.BARRIER_WORDS[j])
    if not units_a:
        va.missing("pairs", "none configured")
    va.enough([x for f in bars.values() for x in f], units_a, "pairs")
    for label, lbs in bars.items():
        va.check(va.effect(f"line barrier (nats, judged), {label}", lbs), bmin, "above")
    K.worst_first(va, 0, key=lambda e: e["estimate"] if e["estimate"] is not None else math.inf)
    for label, lbs in other.items():
        va.effect(f"line barrier (nats, other definition, not judged), {label}", lbs)
    extra = (f"; the SGDR restart between the iterates moved the run (training loss rise >= "
             f"{rules['restart_min_rise_nats']:g} nats)") if cid == 1 else ""
    rule_a = (f"premises: {run} trained; per pair, both endpoints trained, the line evaluated at >= "
              f"{rules['line_min_points']} points{extra}. Rule: per pair, the line barrier over seeds > {bmin:g} nats, "
              f"whole range (n <= 3) or t-interval (n > 3); {K.barrier_text(va)}. A line needs no fitted curve, so "
              f"this row does not depend on the positive control")
    if not units_a:
        vb.missing("pairs", "none configured")
    vb.premise(f"pairs whose claim {cid}a premises hold", bool(units_b), len(units_b), ">= 1")
    vb.enough([x for f in kept.values() for x in f], units_b, "pairs")
    K.control_gate(vb, layout.get("reference_pairs"), "barrier")
    for label, fracs in kept.items():
        vb.check(vb.effect(f"curve barrier / line barrier, {label}", fracs), frac, "below")
    K.worst_first(vb, 0)
    for label, nats in kept_nats.items():
        vb.check(vb.effect(f"curve barrier (nats, absolute floor), {label}", nats), bmin, "below")
    rule_b = (f"judged only on the pairs where claim {cid}a holds (line barrier > {bmin:g} nats). premises: {run} "
              f"trained; per pair, the curve fit converged (stopped by its stopping rule, not the epochs cap) or "
              f"already removed the barrier; a NEGATIVE outcome also needs the two-seed positive control to hold (its "
              f"curve keeps <= {frac:g} of its line barrier and < {bmin:g} nats). Rule: per pair, curve barrier / line "
              f"barrier <= {frac:g} AND curve barrier < {bmin:g} nats (the absolute floor), whole range (n <= 3) or "
              f"t-interval (n > 3); {K.barrier_text(vb)}")
    return [va.entry(rule_a), vb.entry(rule_b)]


def _fmt(x: Any) -> str:
    return K._fmt(x)
