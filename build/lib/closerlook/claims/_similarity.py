"""Shared machinery of claims 5-7: chance-calibrated tables, depth profiles (calibrated scale judged, raw
scale reported beside it, sign differences flagged), layers excluded said where they are excluded (issue 29.6-7),
permutation p-values shown only with >= ``p_value_min_shuffles`` shuffles, and the positive-control gating rule
(interface A: claims 5-6 on change detection, claim 7 on layer identification)."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import verdicts as V
from ..tables import read_table, whole_sample
from ..verdicts import Verdict
from . import _common as K

_num = V.num
NAN_WHY = "NaN value (e.g. a subsample narrower than the layer)"
NEAR_ONE = "chance within reach of 1"


def roles(layout: Mapping) -> dict[str, str | None]:
    """Map role -> label: nowarm, warm, frozen, small (from specs; labels as fallback)."""
    specs = (layout or {}).get("specs", {}) or {}
    labels = list(dict.fromkeys(list((layout or {}).get("similarity", {}) or {}) + list((layout or {}).get("metrics", {}) or {})
                                + list(specs)))
    out: dict[str, str | None] = {"nowarm": None, "warm": None, "frozen": None, "small": None}
    if specs and all(lab in specs for lab in labels):
        batches = {lab: float((specs[lab] or {}).get("batch_size") or 0) for lab in labels}
        big = max(batches.values()) if batches else 0
        for lab in labels:
            s = specs[lab] or {}
            role = ("warm" if ((s.get("warmup") or {}).get("iterations") or 0) > 0 else "frozen" if s.get("freeze")
                    else "small" if batches[lab] < big else "nowarm")
            out[role] = out[role] or lab
        return out
    for lab in labels:
        low = lab.lower()
        role = ("frozen" if ("freez" in low or "frozen" in low) else "nowarm" if re.search(r"no[ _-]?warm", low)
                else "warm" if "warm" in low else "small" if ("sb" in low or "small" in low) else None)
        if role:
            out[role] = out[role] or lab
    return out


def match_inst(paths: Mapping | None, inst: str) -> Any:
    """The file of ``inst``, or the only one when a run has a single instance (e.g. a fixed-seed comparison)."""
    paths = paths or {}
    if inst in paths:
        return paths[inst]
    return next(iter(paths.values())) if len(paths) == 1 else None


def cal_table(path: Any, measure: str, where: str, v: Verdict) -> dict | None:
    """One comparison's ``measure``: calibrated and raw values [layer_index x sample], the whole-sample rows, the
    layers excluded (chance within ``chance_exclude_within`` of 1, or NaN) with the reason."""
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
    raw = d.pivot_table(index="layer_index", columns="sample", values="value", aggfunc="first", dropna=False)
    whole = whole_sample(d).drop_duplicates("layer_index").set_index("layer_index").sort_index()
    if not np.isfinite(whole["chance"].to_numpy(dtype=float)).all():
        v.premise(f"chance level computed: {where}", False, "NaN", "similarity.chance: true")
        return None
    c = whole["chance"].to_numpy(dtype=float)
    near = set(whole.index[1.0 - c <= float(v.rules["chance_exclude_within"])].tolist())
    nan = set(whole.index[~np.isfinite(whole["value"].to_numpy(dtype=float))].tolist()) - near
    excluded = {i: NEAR_ONE for i in near} | {i: NAN_WHY for i in nan}
    sub_nan = {s: [i for i in cal.index if i not in excluded and not np.isfinite(cal.loc[i, s])]
               for s in cal.columns if s != "all"}
    k = int(d["n_shuffles"].max()) if "n_shuffles" in d.columns and d["n_shuffles"].notna().any() else None
    return {"cal": cal.sort_index(), "raw": raw.sort_index(), "whole": whole, "excluded": excluded,
            "sub_nan": {s: x for s, x in sub_nan.items() if x}, "shuffles": k,
            "names": whole["layer"].astype(str).to_dict()}


def p_shown(t: Mapping, rules: Mapping) -> tuple[bool, str]:
    """Show permutation p-values only with >= p_value_min_shuffles shuffles K (the floor is 1/(K+1)); K from an
    ``n_shuffles`` column, else known to be large enough only when some p-value is <= 1/(need+1)."""
    need = int(rules.get("p_value_min_shuffles", 99))
    w = t["whole"]
    if t.get("shuffles") is not None:
        k = t["shuffles"]
        return k >= need, f"K = {k} shuffles"
    if "p_value" not in w.columns or not np.isfinite(w["p_value"].to_numpy(dtype=float)).any():
        return False, "no p-values"
    pmin = float(np.nanmin(w["p_value"].to_numpy(dtype=float)))
    kmax = int(round(1.0 / pmin)) - 1
    return pmin <= 1.0 / (need + 1) + 1e-12, f"K <= {kmax} shuffles (smallest p-value {pmin:.3g} = its floor or above)"


def layer_report(t: Mapping, rules: Mapping) -> dict:
    w = t["whole"]
    show, why = p_shown(t, rules)
    need = int(rules.get("p_value_min_shuffles", 99))
    out = {}
    for i in w.index:
        r = {"value (raw)": _num(w.loc[i, "value"]), "chance": _num(w.loc[i, "chance"]),
             "calibrated": _num(w.loc[i, "cal"])}
        r["p_value"] = (_num(w.loc[i, "p_value"]) if show and "p_value" in w.columns
                        else f"not shown: {why}; needs >= {need}")
        if i in t["excluded"]:
            r["excluded"] = t["excluded"][i]
        out[t["names"][i]] = r
    return out


def depth_sets(layers: Sequence[int], k: int, exclude_output: bool) -> tuple[list[int], list[int]]:
    order = sorted(layers)
    deep_pool = order[:-1] if exclude_output and len(order) > 1 else order
    return order[:k], deep_pool[-k:]


def _profile(t: Mapping, key: str, shallow: Sequence[int], deep: Sequence[int]) -> pd.Series:
    """Per sample: mean similarity (``key``: cal or raw) of the deep layers - of the shallow layers."""
    tab = t[key].drop(index=[i for i in t["excluded"] if i in t[key].index])
    d = [i for i in deep if i in tab.index]
    s = [i for i in shallow if i in tab.index]
    if not d or not s:
        return pd.Series(dtype=float)
    return tab.loc[d].mean(axis=0) - tab.loc[s].mean(axis=0)


def shallow_mean(t: Mapping, shallow: Sequence[int]) -> float:
    tab = t["cal"].drop(index=[i for i in t["excluded"] if i in t["cal"].index])
    s = [i for i in shallow if i in tab.index]
    return float(tab.loc[s, "all"].mean()) if s and "all" in tab.columns else float("nan")


def profile_diff(v: Verdict, a: Mapping, b: Mapping, k: int, exclude_output: bool, where: str):
    """(P(a) - P(b) calibrated, the same on the raw scale, the shallow set) per sample ("all", "s0", ...); a
    blocking premise that both layer sets are non-empty, whose value says when fewer layers than configured
    are left and why."""
    layers = sorted(set(a["cal"].index) & set(b["cal"].index))
    shallow, deep = depth_sets(layers, k, exclude_output)
    excl = {**b["excluded"], **a["excluded"]}
    left = ([i for i in shallow if i not in excl], [i for i in deep if i not in excl])
    names = {**b["names"], **a["names"]}
    sets = v.measured.setdefault("layer sets", {})
    sets[where] = {"shallow": [names.get(i) for i in left[0]], "deep": [names.get(i) for i in left[1]],
                   "excluded": {names.get(i): why for i, why in sorted(excl.items())}}
    if NEAR_ONE in excl.values():
        sets[where]["excluded (chance near 1)"] = [names.get(i) for i, w in sorted(excl.items()) if w == NEAR_ONE]
    subnan = {s: [names.get(i) for i in x] for t in (a, b) for s, x in t["sub_nan"].items()}
    if subnan:
        sets[where]["NaN in probe subsamples (left out of that subsample's mean)"] = subnan
    gone = [f"{names.get(i)} ({excl[i]})" for i in shallow + deep if i in excl]
    value = (f"shallow {len(left[0])} of {len(shallow)}, deep {len(left[1])} of {len(deep)}"
             + (f"; excluded: {', '.join(gone)}" if gone else ""))
    if not v.premise(f"deep and shallow layers left: {where}", all(left), value,
                     f">= 1 of each (configured: {k} each)"):
        return None
    return ((_profile(a, "cal", shallow, deep) - _profile(b, "cal", shallow, deep)).dropna(),
            (_profile(a, "raw", shallow, deep) - _profile(b, "raw", shallow, deep)).dropna(), left[0])


def judge_profile(v: Verdict, diffs: Mapping[str, tuple], name: str, threshold: float) -> None:
    """Effects over seeds (whole probe set) and over probe subsamples (pooled over seeds), both judged on the
    calibrated scale; the raw scale beside it, not judged; a sign that differs between the two is flagged."""
    whole = [float(d[0]["all"]) for d in diffs.values() if "all" in d[0].index]
    subs = [float(x) for d in diffs.values() for s, x in d[0].items() if s != "all"]
    raw = [float(d[1]["all"]) for d in diffs.values() if "all" in d[1].index]
    e = v.effect(f"{name} (calibrated, judged)", whole)
    v.check(e, threshold, "above")
    if subs:
        v.check(v.effect(f"{name}, over probe subsamples (calibrated)", subs, kind="range"), threshold, "above")
    r = v.effect(f"{name} (raw scale, not judged)", raw)
    if V.finite(e.get("estimate")) and V.finite(r.get("estimate")) and np.sign(e["estimate"]) != np.sign(r["estimate"]):
        v.note(f"{name}: the calibrated ({e['estimate']:+.3g}) and raw ({r['estimate']:+.3g}) scales differ in sign")


def baseline(v: Verdict, layout: Mapping, measure: str) -> None:
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


def gated_measures(v: Verdict, inputs: Mapping, control: str, default: str) -> tuple[list[str], bool]:
    """Interface A's gating rule: the measures whose ``control`` passes (each judged), and whether any does.
    Key absent -> blocking premise "positive control not configured"; no passing measure -> blocking premise
    naming the control. Either way the default measure is still computed so its numbers show."""
    name = f"positive control ({control.replace('_', ' ')}) passed by a measure"
    path = (inputs or {}).get("controls")
    if not path:
        v.premise(name, False, "positive control not configured", "controls.csv (similarity controls)")
        return [default], False
    df, prob = K.read_plain(path)
    rows = df[df["control"].astype(str) == control] if df is not None and "control" in df.columns else None
    if prob or rows is None or rows.empty:
        v.premise(name, False, "positive control not configured" if rows is not None else (prob or "missing"),
                  f"{control} rows in controls.csv")
        return [default], False
    passing = []
    v.measured["measures failing their control (reported, not judged)"] = []
    for _, r in rows.iterrows():
        ok = str(r.get("passes")).strip().lower() in ("true", "1", "1.0", "yes")
        v.premises.append(V.premise_record(f"{control.replace('_', ' ')} control: {r['measure']}", ok,
                                           r.get("statistic"), f"{r.get('rule', '')} (threshold {r.get('threshold')})"))
        if ok:
            passing.append(str(r["measure"]))
        else:
            v.measured["measures failing their control (reported, not judged)"].append(str(r["measure"]))
    v.measured.setdefault("positive control", {})[control] = {str(r["measure"]): {
        "passes": str(r.get("passes")), "statistic": _num(r.get("statistic")), "threshold": _num(r.get("threshold"))}
        for _, r in rows.iterrows()}
    if not v.premise(name, bool(passing), ", ".join(passing) or f"none of {', '.join(map(str, rows['measure']))}",
                     f">= 1 measure passing the {control.replace('_', ' ')} control"):
        return [default], False
    return passing, True


def per_measure(v: Verdict, measures: Sequence[str], judge: Callable[[str], None]) -> None:
    """Judge every measure (``judge(measure)`` adds its checks); passing measures that disagree -> blocking
    premise "measures agree" failing: inconclusive "measure-dependent", each measure's result shown."""
    results = {}
    for m in measures:
        start = len(v.outcomes())
        judge(m)
        out = v.outcomes(start)
        results[m] = ("fails" if False in out else "undecided" if (None in out or not out) else "holds")
    if len(measures) > 1:
        decided = {r for r in results.values() if r != "undecided"}
        v.premise("measures agree (else measure-dependent)", len(decided) <= 1,
                  "; ".join(f"{m}: {r}" for m, r in results.items()), "every judged measure gives the same outcome")
    v.measured["per measure"] = results


def report_failing(v: Verdict, judge: Callable[[str], None]) -> None:
    """Issue 29.3: every configured measure is reported; those failing their control are computed (effects marked
    "not judged") but add no check, premise or verdict."""
    for m in v.measured.get("measures failing their control (reported, not judged)") or []:
        n_checks, n_eff, n_prem = len(v.outcomes()), len(v.effects), len(v.premises)
        blocking, units = list(v._blocking), list(v._unit_failures)
        judge(m)
        del v._checks[n_checks:]
        del v.premises[n_prem:]
        v._blocking[:], v._unit_failures[:] = blocking, units
        for e in v.effects[n_eff:]:
            e["name"] += f" [not judged: {m} fails its positive control]"


def final_acc(path: Any) -> float:
    df, prob = read_table(path)
    if df is None or "test_acc" not in df.columns or prob not in (None, "diverged"):
        return float("nan")
    d = df.sort_values("epoch") if "epoch" in df.columns else df
    return float(d["test_acc"].iloc[-1])


def sim_pair(v: Verdict, sim: Mapping, labels: tuple[str, str], insts: tuple[str, str], measure: str):
    """Calibrated tables of two comparisons (labels[0] at insts[0], labels[1] at insts[1]), per-layer report."""
    ta = cal_table(match_inst(sim.get(labels[0]), insts[0]), measure, f"{labels[0]}/{insts[0]}", v)
    tb = cal_table(match_inst(sim.get(labels[1]), insts[1]), measure, f"{labels[1]}/{insts[1]}", v)
    if ta is not None and tb is not None:
        v.measured.setdefault("per layer", {}).setdefault(measure, {})[insts[0]] = {
            labels[0]: layer_report(ta, v.rules), labels[1]: layer_report(tb, v.rules)}
    return ta, tb
