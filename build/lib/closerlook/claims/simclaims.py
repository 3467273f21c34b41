"""Claims 5a/5b, 6 and 7 (issues 29.3-4, 24.5): accuracy effects with their sampling error; the similarity
effects judged on every measure that passes its positive control (claims 5b and 6 on change detection, claim
7 on layer identification); claim 7's premise that distillation took effect (interface B, fidelity.csv)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import verdicts as V
from ..tables import read_table
from ..verdicts import REPRODUCED, Verdict
from . import _common as K
from . import _similarity as S

_num = V.num


def _acc_gap(v: Verdict, layout: Mapping, a: float, b: float) -> float:
    n = K.test_images(layout)
    return float(v.rules["acc_noise_z"]) * V.acc_diff_se(a, b, n) if n else float("nan")


def _at_iteration(path: Any, it: int) -> tuple[float, str, bool]:
    """(test accuracy at the logged row nearest iteration ``it``, which row, diverged by then)."""
    df, prob = read_table(path)
    if df is None or "test_acc" not in df.columns or "iteration" not in df.columns or df.empty:
        return float("nan"), f"no iteration-indexed metrics ({prob or 'no iteration column'})", prob == "diverged"
    d = df.sort_values("iteration")
    i = int(np.argmin(np.abs(d["iteration"].to_numpy(dtype=float) - it)))
    upto = d.iloc[: i + 1]
    div = ("status" in d.columns and (upto["status"].astype(str) == "diverged").any()) or \
        not np.isfinite(upto["test_acc"].to_numpy(dtype=float)).all()
    return float(d["test_acc"].iloc[i]), f"logged iteration {int(d['iteration'].iloc[i])} (compared: {it})", bool(div)


def claim5(layout: Mapping, rules: Mapping, inputs: Mapping, texts: Mapping) -> list[dict]:
    layout = layout or {}
    va, vb = Verdict("5a", texts["5a"], rules), Verdict("5b", texts["5b"], rules)
    measure = str(layout.get("measure") or rules["measure"])
    k, gap, acc_gap, z = (int(rules["deep_layers"]), float(rules["deep_min_gap"]), float(rules["acc_min_gap"]),
                          float(rules["acc_noise_z"]))
    rl = S.roles(layout)
    va.measured["roles"] = vb.measured["roles"] = dict(rl)
    nw, w = rl["nowarm"], rl["warm"]
    rule_a = (f"premises: LB warmup trained; LB no warmup not diverged (ending at chance is the effect's extreme). "
              f"Rule: final test accuracy (LB warmup) - (LB no warmup) > {acc_gap:g}, whole range (n <= 3) or "
              f"t-interval (n > 3), widened by {z:g} x its sampling SE (inside: 'within measurement noise')")
    rule_b = (f"judged only where 5a holds (the benefit being explained must exist). premises: the warmup run at the "
              f"compared checkpoint (end of warmup) above chance + margin (keeping the run stable is what warmup is "
              f"for); the no-warmup run only not diverged there; chance levels computed; deep (last {k}) and shallow "
              f"(first {k}) layers left after excluding layers with chance within {rules['chance_exclude_within']:g} "
              f"of 1 or NaN; the change-detection positive control (judged on every measure that passes it; "
              f"passing measures that disagree: inconclusive 'measure-dependent'). Rule, calibrated scale (raw "
              f"reported beside): depth profile P = mean similarity (deep) - (shallow), iteration 0 vs end of "
              f"warmup; P(LB warmup) - P(LB no warmup) > {gap:g} over seeds and over probe subsamples; and, its own "
              f"effect, shallow layers alike: |mean shallow similarity (LB warmup) - (LB no warmup)| <= {gap:g}")
    ok = va.premise("runs identified (LB no warmup, LB warmup)", bool(nw and w), str(rl), "from specs or labels")
    vb.premise("runs identified (LB no warmup, LB warmup)", bool(nw and w), str(rl), "from specs or labels")
    if not ok:
        return [va.entry(rule_a), vb.entry(rule_b)]
    sim, metrics = layout.get("similarity") or {}, layout.get("metrics") or {}
    # 5a
    K.runs_trained(va, metrics, [w], layout)
    accs, noise = [], []
    for inst in sorted(set(metrics.get(nw) or {}) & set(metrics.get(w) or {})):
        va.seed(inst)
        df, prob = read_table(metrics[nw][inst])
        va.premise(f"LB no warmup not diverged: {inst}", prob is None, prob or "ok", "finite metrics")
        a, b = S.final_acc(metrics[w][inst]), S.final_acc(metrics[nw][inst])
        accs.append(a - b)
        noise.append(_acc_gap(va, layout, a, b))
        va.measured[inst] = {"final_test_acc": {w: _num(a), nw: _num(b)}, "gap_noise_half_width": _num(noise[-1])}
    if not accs:
        va.missing("metrics", f"no seed shared by {nw} and {w}")
    nz = max((x for x in noise if math.isfinite(x)), default=float("nan"))
    va.check(va.effect(f"final test accuracy {w} - {nw}", accs), acc_gap, "above",
             noise=nz if math.isfinite(nz) else None, noise_basis=V.ACC_NOISE_BASIS)
    ea = va.entry(rule_a)
    # 5b
    vb.premise("claim 5a holds (LB without warmup ends less accurate)", ea["verdict"] == REPRODUCED, ea["verdict"],
               "5a reproduced")
    wspec = (layout.get("specs") or {}).get(w) or {}
    it = int((wspec.get("warmup") or {}).get("iterations") or 0)
    kc = K.classes(layout)
    marg = rules.get("warmup_min_acc_above_chance")
    marg = float(rules["min_acc_above_chance"] if marg is None else marg)
    seeds = sorted(set(sim.get(nw) or {}) & set(sim.get(w) or {}))
    for inst in seeds:
        vb.seed(inst)
        acc, where, div = _at_iteration(S.match_inst(metrics.get(w), inst), it)
        vb.add(V.trained(acc, kc, marg, f"LB warmup not in a collapse at the compared checkpoint: {inst} ({where})",
                         diverged=div))
        _, where_n, div_n = _at_iteration(S.match_inst(metrics.get(nw), inst), it)
        vb.premise(f"LB no warmup not diverged at the compared checkpoint: {inst}", not div_n,
                   "diverged" if div_n else "ok", "finite metrics up to the compared checkpoint")
    if not seeds:
        vb.missing("similarity", f"no seed shared by {nw} and {w}")
    measures, _ = S.gated_measures(vb, inputs, "change_detection", measure)

    def judge(m: str) -> None:
        diffs, shallow = {}, []
        for inst in seeds:
            ta, tb = S.sim_pair(vb, sim, (w, nw), (inst, inst), m)
            d = S.profile_diff(vb, ta, tb, k, False, f"{inst} ({m})") if ta is not None and tb is not None else None
            if d is not None:
                diffs[inst] = d
                shallow.append(abs(S.shallow_mean(ta, d[2]) - S.shallow_mean(tb, d[2])))
        S.judge_profile(vb, diffs, f"depth profile P({w}) - P({nw}), {m}", gap)
        vb.check(vb.effect(f"shallow layers alike: |shallow mean {w} - {nw}|, calibrated {m}", shallow), gap, "below")
        S.baseline(vb, layout, m)

    S.per_measure(vb, measures, judge)
    S.report_failing(vb, judge)
    return [ea, vb.entry(rule_b)]


def claim6(layout: Mapping, rules: Mapping, inputs: Mapping, text: str) -> dict:
    v, layout = Verdict("6", text, rules), layout or {}
    measure = str(layout.get("measure") or rules["measure"])
    frac, acc_gap, gap, k, z = (float(rules["freeze_close_frac"]), float(rules["acc_min_gap"]),
                                float(rules["deep_min_gap"]), int(rules["deep_layers"]), float(rules["acc_noise_z"]))
    rule = (f"premises: the three runs trained; warmup's accuracy gain (warm - no warmup) > {acc_gap:g} over its whole "
            f"range widened by {z:g} x its sampling SE (something to recover); the change-detection positive control "
            f"for the CCA side (every passing measure judged). Rule: recovered fraction (frozen - no warmup) / (warm - "
            f"no warmup) > {frac:g}, and the CCA side on the calibrated scale (raw beside): depth profile P(frozen FC) "
            f"- P(LB warmup), iteration 0 vs end of warmup/freezing, > -{gap:g}, whole range (n <= 3) or t-interval "
            f"(n > 3). The recovered fraction's sampling error is not propagated (a ratio of two noisy gaps)")
    rl = S.roles(layout)
    v.measured["roles"] = dict(rl)
    nw, w, fr = rl["nowarm"], rl["warm"], rl["frozen"]
    if not v.premise("runs identified (no warmup, warmup, frozen FC)", bool(nw and w and fr), str(rl), "from specs or labels"):
        return v.entry(rule)
    metrics, sim = layout.get("metrics") or {}, layout.get("similarity") or {}
    K.runs_trained(v, metrics, [nw, w, fr], layout)
    seeds = sorted(set(metrics.get(nw) or {}) & set(metrics.get(w) or {}) & set(metrics.get(fr) or {}))
    gains, fracs, noise = [], [], []
    for inst in seeds:
        v.seed(inst)
        a = {lab: S.final_acc(metrics[lab][inst]) for lab in (nw, w, fr)}
        gains.append(a[w] - a[nw])
        noise.append(_acc_gap(v, layout, a[w], a[nw]))
        fracs.append((a[fr] - a[nw]) / gains[-1] if gains[-1] > 0 else float("nan"))
        v.measured[inst] = {"final_test_acc": {lab: _num(x) for lab, x in a.items()}, "recovered_fraction": _num(fracs[-1])}
    g = V.spread(f"warmup's accuracy gain {w} - {nw}", gains, float(rules["interval_level"]))
    nz = max((x for x in noise if math.isfinite(x)), default=0.0)
    low = g["low"] - nz if V.finite(g["low"]) else None
    g["noise"] = {"half_width": _num(nz), "basis": V.ACC_NOISE_BASIS}
    v.premise("warmup helps at this scale", V.finite(low) and low > acc_gap, low,
              f"low end of the gain's range - {nz:.3g} (sampling noise) > {acc_gap:g}")
    v.check(v.effect(f"recovered fraction ({fr} - {nw}) / ({w} - {nw})", fracs), frac, "above")
    measures, _ = S.gated_measures(v, inputs, "change_detection", measure)

    def judge(m: str) -> None:
        diffs = {}
        for inst in seeds:
            ta, tb = S.sim_pair(v, sim, (fr, w), (inst, inst), m)
            d = S.profile_diff(v, ta, tb, k, False, f"{inst} ({m})") if ta is not None and tb is not None else None
            if d is not None:
                diffs[inst] = d
        S.judge_profile(v, diffs, f"depth profile P({fr}) - P({w}), {m}", -gap)

    S.per_measure(v, measures, judge)
    S.report_failing(v, judge)
    v.effects.append(g)
    return v.entry(rule)


def students(sim: Mapping) -> tuple[str | None, str | None, list[tuple[str, str]], str]:
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


def _run_roles(layout: Mapping, dist: str | None, indep: str | None) -> dict:
    """(label, inst) -> "teacher (run/seed)" / "distilled student (..)" / "independent student (..)": the teacher is
    the run whose checkpoint the distilled run's spec names."""
    teacher = ((((layout.get("specs") or {}).get(dist) or {}).get("distill") or {}).get("teacher"))
    tdir = str(Path(teacher).parent) if isinstance(teacher, str) else None
    out = {}
    for label, insts in (layout.get("metrics") or {}).items():
        for inst, p in (insts or {}).items():
            run = f"{Path(str(p)).parent.parent.name}/{inst}"
            if tdir and str(Path(str(p)).parent) == tdir:
                out[(label, inst)] = f"teacher ({run})"
            elif label == dist:
                out[(label, inst)] = f"distilled student ({run})"
            elif label == indep:
                out[(label, inst)] = f"independent student ({run})"
    return out


def fidelity_premise(v: Verdict, inputs: Mapping) -> list:
    """Interface B: on the test split, the distilled student's top-1 agreement with the teacher exceeds the
    independent student's by more than its test-set sampling error (``acc_noise_z`` x :func:`verdicts.acc_diff_se`:
    a premise within noise is not a checked premise) and its KL(teacher || student) is lower, on every seed."""
    name = "distillation took effect (fidelity to the teacher, test split)"
    z = float(v.rules.get("acc_noise_z", 1.96))
    rule = f"distilled - independent: agreement - {z:g} SE (test-set sampling) > 0 and KL < 0 on every seed"
    path = (inputs or {}).get("fidelity")
    if not path:
        v.premise(name, False, "fidelity not measured", rule)
        return []
    df, prob = K.read_plain(path)
    if df is None or prob is not None or not {"student", "seed", "split", "agreement", "kl"} <= set(df.columns):
        v.premise(name, False, f"fidelity.csv {prob or 'without its columns'}", rule)
        return []
    d = df[df["split"].astype(str) == "test"]
    if "status" in d.columns:
        bad = d[d["status"].astype(str) != "ok"]
        if not bad.empty:
            v.premise(name, False, f"diverged: {', '.join(f'{r.student}/{r.seed}' for r in bad.itertuples())}", rule)
            return []
    cols = ("agreement", "kl", "n_images") if "n_images" in d.columns else ("agreement", "kl")
    piv = {c: d.pivot_table(index="seed", columns="student", values=c, aggfunc="first") for c in cols}
    if not {"distilled", "independent"} <= set(piv["agreement"].columns):
        v.premise(name, False, "fidelity not measured for both students", rule)
        return []
    da = (piv["agreement"]["distilled"] - piv["agreement"]["independent"]).dropna()
    dk = (piv["kl"]["distilled"] - piv["kl"]["independent"]).dropna()
    ea, ek = V.spread("top-1 agreement with the teacher, distilled - independent", da), V.spread(
        "KL(teacher || student) at T = 1, distilled - independent (nats)", dk)
    v.measured["fidelity (test split)"] = {c: {str(s): {k: _num(x) for k, x in row.items()} for s, row in piv[c].iterrows()}
                                           for c in piv}
    a = piv["agreement"]
    n = piv["n_images"]["distilled"] if "n_images" in piv else pd.Series(float("nan"), index=a.index)
    se = pd.Series({sd: V.acc_diff_se(float(a.at[sd, "distilled"]), float(a.at[sd, "independent"]), float(n.get(sd, float("nan"))))
                    for sd in da.index}, dtype=float)
    low = da - z * se   # NaN (n unknown) fails: the noise is not known
    holds = len(da) > 0 and bool((low > 0).all()) and len(dk) > 0 and bool((dk < 0).all())
    v.premise(name, holds, f"agreement {V.effect_text(ea)} (+-{z:g} SE: {', '.join(f'{x:.3g}' for x in z * se)}); "
              f"KL {V.effect_text(ek)}", rule)
    return [ea, ek]


def claim7(layout: Mapping, rules: Mapping, inputs: Mapping, text: str) -> dict:
    v, layout = Verdict("7", text, rules), layout or {}
    measure = str(layout.get("measure") or rules["measure"])
    k, gap, no_out = int(rules["deep_layers"]), float(rules["deep_min_gap"]), bool(rules["distill_exclude_output"])
    sim = layout.get("similarity") or {}
    dist, indep, pairs, note = students(sim)
    v.measured["roles"] = {"distilled": dist, "independent": indep, **({"pairing": note} if note else {})}
    out = " (the output layer excluded: distillation matches the logits by construction)" if no_out else ""
    rule = (f"premises: teacher and both students trained; distillation took effect (the distilled student's top-1 "
            f"agreement with the teacher higher and KL(teacher || student) lower than the independent's, test split, "
            f"every seed); the layer-identification positive control (every passing measure judged; disagreeing: "
            f"'measure-dependent'); chance levels computed; deep (last {k}{out}) and shallow (first {k}) layers left. "
            f"Rule, calibrated scale (raw beside): depth profile P = mean similarity to the teacher (deep) - "
            f"(shallow); P(distilled) - P(independent) > {gap:g} over seeds and over probe subsamples, whole range "
            f"(n <= 3) or t-interval (n > 3)")
    if not v.premise("students identified (distilled, independent)", bool(pairs), f"{dist}, {indep}", "two labelled comparisons"):
        return v.entry(rule)
    K.runs_trained(v, layout.get("metrics") or {}, list(layout.get("metrics") or {}), layout,
                   role=_run_roles(layout, dist, indep))
    fid = fidelity_premise(v, inputs)
    measures, _ = S.gated_measures(v, inputs, "identification", measure)

    def judge(m: str) -> None:
        diffs = {}
        for a_inst, b_inst in pairs:
            name = a_inst if a_inst == b_inst else f"{a_inst}~{b_inst}"
            v.seed(name)
            ta, tb = S.sim_pair(v, sim, (dist, indep), (a_inst, b_inst), m)
            d = S.profile_diff(v, ta, tb, k, no_out, f"{name} ({m})") if ta is not None and tb is not None else None
            if d is not None:
                diffs[name] = d
        S.judge_profile(v, diffs, f"depth profile P({dist}) - P({indep}), {m}", gap)
        S.baseline(v, layout, m)

    S.per_measure(v, measures, judge)
    S.report_failing(v, judge)
    v.effects += fid  # the premise's numbers, after the judged effects
    return v.entry(rule)
