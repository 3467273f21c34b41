"""Competing explanations on the same runs, judged "Beyond the paper" (issue 27; verdicts contract of
:mod:`closerlook.verdicts`: premises, effects with their range, inconclusive when a premise fails).

* Distillation as fidelity (Stanton et al. 2021), from ``fidelity.csv`` (:mod:`closerlook.fidelity`):
  ``beyond-fidelity-raised`` (distillation raises fidelity over the independent student),
  ``beyond-fidelity-below-perfect`` (the distilled student's fidelity stays well below perfect even on
  the training images) and ``beyond-fidelity-vs-cca`` (whether fidelity and claim 7's CCA depth profile
  tell the same story).
* Warmup as sharpness reduction (Kalra & Barkeshli 2024; Cohen et al. 2021), from the runs'
  ``sharpness_trajectory.csv`` (:mod:`closerlook.sharpness_trace`): see :func:`sharpness_entries`.

Torch-free. :func:`evaluate_beyond` is the one hook claims calls; it returns the entries to append to
``result["beyond"]``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import verdicts as V
from .tables import read_plain

# This module's thresholds (config `claims:` overrides them, like verdicts.DEFAULT_RULES). Each fixed before
# any fidelity or trajectory was measured.
EXPLAIN_RULES: dict[str, Any] = {
    # an agreement effect is judged with the test set's own sampling error: the difference of two
    # agreements on n images has s.e. <= sqrt(a1 (1 - a1) / n + a2 (1 - a2) / n) (unpaired: an upper bound
    # for the paired one); the range over seeds is widened by z of them on each side
    "fidelity_z": 1.96,
    # "well below perfect": on the training images the distilled student disagrees with its teacher's top-1
    # class on at least 1 in 20 images (agreement + z s.e. <= 0.95). Stanton et al. call fidelity low where a
    # self-distilled student (capacity enough to match) leaves ~10 % of top-1 disagreement; 5 points is
    # half of that, and 5-25x the sampling error at 2,000-50,000 training images
    "fidelity_below_perfect": 0.05,
    # lr x lambda_max against the optimiser's constant: the relative tolerance of "at or below" / "exceeds".
    # None: measured, twice the batch-to-batch spread of lambda_max (:func:`measured_spread`)
    "sharpness_tol": None,
}

FIDELITY_CLAIMS = {
    "raised": "Distillation raises fidelity over the independent student: higher top-1 agreement with the teacher "
              "and lower KL(teacher || student) at T = 1 on the test set (Stanton et al. 2021)",
    "below_perfect": "The distilled student's fidelity stays well below perfect even on the training images "
                     "(Stanton et al. 2021: the student does not match the teacher where it was fitted)",
    "vs_cca": "Fidelity and the CCA depth profile tell the same story: both say distillation transferred "
              "(or both say it did not)",
}


def rules_with_defaults(rules: Mapping | None) -> dict:
    r = {**EXPLAIN_RULES, **V.rules_with_defaults(rules)}
    r.update({k: v for k, v in (rules or {}).items() if v is not None})
    return r


# --------------------------------------------------------------------------- fidelity


def read_fidelity(path: Any) -> tuple[pd.DataFrame | None, str | None]:
    """The fidelity table (every row, diverged ones kept: their status says so) or None and the problem."""
    df, problem = read_plain(path)
    if problem:
        return None, problem
    need = {"student", "seed", "split", "agreement", "kl", "n_images", "status"}
    if not need <= set(df.columns):
        return None, f"columns missing: {sorted(need - set(df.columns))}"
    df = df.copy()
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(-1).astype(int)
    for c in ("agreement", "kl", "n_images"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["student"], df["split"], df["status"] = (df[c].astype(str) for c in ("student", "split", "status"))
    return df, None


def _row(df: pd.DataFrame, student: str, seed: int, split: str) -> pd.Series | None:
    m = df[(df["student"] == student) & (df["seed"] == seed) & (df["split"] == split)]
    return m.iloc[0] if len(m) else None


def seed_pairs(df: pd.DataFrame) -> list[tuple[int, int]]:
    """(distilled seed, independent seed): equal seeds where both exist, else in sorted order."""
    d = sorted(set(df.loc[df["student"] == "distilled", "seed"]))
    i = sorted(set(df.loc[df["student"] == "independent", "seed"]))
    same = [(s, s) for s in d if s in i]
    return same or list(zip(d, i))


def agreement_se(a: float, n: float) -> float:
    return math.sqrt(max(a * (1.0 - a), 0.0) / n) if n and n > 0 else math.nan


def _with_noise(v: V.Verdict, name: str, values: Sequence[float], ses: Sequence[float], z: float) -> dict:
    """The effect's range widened by ``z`` sampling errors on each side (the record judged)."""
    vals, s = np.asarray(values, dtype=float), np.asarray(ses, dtype=float)
    e = {"name": f"{name}, range +- {z:g} s.e. (test-set sampling error)", "estimate": V.num(vals.mean()) if vals.size else None,
         "low": V.num((vals - z * s).min()) if vals.size else None,
         "high": V.num((vals + z * s).max()) if vals.size else None, "n": int(vals.size), "kind": "range"}
    v.effects.append(e)
    return e


def _fidelity_units(v: V.Verdict, df: pd.DataFrame | None, prob: str | None, students: Sequence[str],
                    splits: Sequence[str]) -> list[tuple[int, int]]:
    """Seed pairs whose rows are present and ok (each failure a non-blocking unit premise)."""
    if df is None:
        v.missing("fidelity table", prob or "missing")
        return []
    kept = []
    for sd, si in seed_pairs(df):
        name = f"distilled seed{sd} / independent seed{si}"
        rows = [_row(df, st, s, sp) for st, s in (("distilled", sd), ("independent", si)) if st in students
                for sp in splits]
        ok = all(r is not None and str(r["status"]) == "ok" for r in rows)
        if v.premise(f"{name}: fidelity rows present, not diverged", ok, "ok" if ok else "missing or diverged",
                     "fidelity.csv rows status ok", blocking=False):
            kept.append((sd, si))
            v.seed(name if sd != si else f"seed{sd}")
    v.enough(kept, [f"{a}/{b}" for a, b in seed_pairs(df)] or ["(no students)"], "seed pairs")
    return kept


def fidelity_raised(layout: Mapping, rules: Mapping) -> dict:
    r = rules_with_defaults(rules)
    z = float(r["fidelity_z"])
    v = V.Verdict("beyond-fidelity-raised", FIDELITY_CLAIMS["raised"], r)
    df, prob = read_fidelity(layout.get("fidelity"))
    kept = _fidelity_units(v, df, prob, ("distilled", "independent"), ("test", "train"))
    rule = (f"on the test set, over seed pairs: the top-1 agreement difference (distilled - independent), its range "
            f"widened by {z:g} s.e. of the difference of two agreements, lies wholly above 0, and the KL(teacher || "
            "student) difference lies wholly below 0; the training images' differences are reported, not judged")
    if not kept:
        return v.entry(rule)
    d = {sp: {c: [] for c in ("agreement", "kl", "se")} for sp in ("test", "train")}
    for sd, si in kept:
        for sp in ("test", "train"):
            a, b = _row(df, "distilled", sd, sp), _row(df, "independent", si, sp)
            d[sp]["agreement"].append(float(a["agreement"]) - float(b["agreement"]))
            d[sp]["kl"].append(float(a["kl"]) - float(b["kl"]))
            d[sp]["se"].append(math.hypot(agreement_se(float(a["agreement"]), float(a["n_images"])),
                                          agreement_se(float(b["agreement"]), float(b["n_images"]))))
    v.effect("test top-1 agreement, distilled - independent", d["test"]["agreement"], kind="range")
    e_acc = _with_noise(v, "test top-1 agreement, distilled - independent", d["test"]["agreement"], d["test"]["se"], z)
    e_kl = v.effect("test KL(teacher || student) at T = 1 (nats), distilled - independent", d["test"]["kl"], kind="range")
    v.effect("train-images top-1 agreement, distilled - independent", d["train"]["agreement"], kind="range")
    v.effect("train-images KL(teacher || student) (nats), distilled - independent", d["train"]["kl"], kind="range")
    v.check(e_acc, 0.0, "above")
    if V.finite(e_kl.get("low")) and V.finite(e_kl.get("high")):  # "lower KL": the whole range below 0
        v.check({**e_kl, "low": -e_kl["high"], "high": -e_kl["low"], "name": "minus " + e_kl["name"]}, 0.0, "above")
    v.measured = _measured(df, kept)
    if len(kept) == 1:
        v.measured["note"] = "single seed pair (n = 1): no spread over seeds; the test set's sampling error is shown"
    return v.entry(rule)


def fidelity_below_perfect(layout: Mapping, rules: Mapping) -> dict:
    r = rules_with_defaults(rules)
    z, gap = float(r["fidelity_z"]), float(r["fidelity_below_perfect"])
    v = V.Verdict("beyond-fidelity-below-perfect", FIDELITY_CLAIMS["below_perfect"], r)
    df, prob = read_fidelity(layout.get("fidelity"))
    kept = _fidelity_units(v, df, prob, ("distilled",), ("train",))
    rule = (f"level judged: the distilled student's top-1 agreement with the teacher on the training images, over seeds, "
            f"its range widened by {z:g} binomial s.e., lies wholly at or below 1 - {gap:g} = {1 - gap:g} (at least 1 in "
            f"{round(1 / gap) if gap else 'inf'} training images classified differently from the teacher; basis: "
            "closerlook.explanations.EXPLAIN_RULES); the KL on the training images is reported")
    if not kept:
        return v.entry(rule)
    rows = [_row(df, "distilled", sd, "train") for sd, _si in kept]
    ag = [float(x["agreement"]) for x in rows]
    se = [agreement_se(float(x["agreement"]), float(x["n_images"])) for x in rows]
    v.effect("distilled student's train-images top-1 agreement", ag, kind="range")
    e = _with_noise(v, "distilled student's train-images top-1 agreement", ag, se, z)
    v.effect("distilled student's train-images KL(teacher || student) (nats)", [float(x["kl"]) for x in rows], kind="range")
    v.check(e, 1.0 - gap, "below")
    v.measured = _measured(df, kept)
    return v.entry(rule)


def _measured(df: pd.DataFrame, kept: Sequence[tuple[int, int]]) -> dict:
    out = {}
    for sd, si in kept:
        for st, s in (("distilled", sd), ("independent", si)):
            for sp in ("test", "train"):
                x = _row(df, st, s, sp)
                if x is not None:
                    out[f"{st}/seed{s}/{sp}"] = {"agreement": V.num(x["agreement"]), "kl": V.num(x["kl"]),
                                                 "n_images": int(x["n_images"])}
    return out


def _depth_story(claim7: Mapping | None, gap: float) -> tuple[bool | None, str]:
    """What claim 7's depth-profile effect says: True (deep layers closer to the teacher in the distilled
    student by more than ``gap``), False (at most ``gap``), None (range straddles / not measured)."""
    effects = [e for e in (claim7 or {}).get("effects") or [] if str(e.get("name", "")).startswith("depth profile")]
    effects.sort(key=lambda e: ("cca" not in e["name"], "judged" not in e["name"]))  # the CCA one, judged, first
    if not effects:
        return None, "claim 7 has no depth-profile effect"
    e = effects[0]
    lo, hi = e.get("low"), e.get("high")
    if V.finite(lo) and V.finite(hi):
        return (True if lo > gap else False if hi <= gap else None), f"{e['name']} [{lo:.3g}, {hi:.3g}] vs {gap:g}"
    return None, f"{e['name']}: not measured"


def fidelity_vs_cca(raised: Mapping, claim7: Mapping | None, rules: Mapping) -> dict:
    r = rules_with_defaults(rules)
    v = V.Verdict("beyond-fidelity-vs-cca", FIDELITY_CLAIMS["vs_cca"], r)
    gap = float(r["deep_min_gap"])
    fid = {V.REPRODUCED: True, V.NOT_REPRODUCED: False}.get(raised.get("verdict"))
    depth, depth_txt = _depth_story(claim7, gap)
    v.premise("fidelity decided (beyond-fidelity-raised)", fid is not None, raised.get("verdict"),
              "reproduced or not reproduced")
    v.premise("CCA depth profile decided (claim 7's effect)", depth is not None, depth_txt,
              f"its whole range on one side of deep_min_gap = {gap:g}")
    rule = ("the two lenses agree when beyond-fidelity-raised's verdict (fidelity raised or not) and claim 7's depth-profile "
            "effect (deep layers closer to the teacher by more than deep_min_gap, or not) say the same; judged on the "
            "effects, so claim 7's own premises do not enter")
    e = v.entry(rule)
    e["measured"] = {"fidelity_raised": fid, "depth_profile_transferred": depth, "depth_profile": depth_txt}
    if fid is not None and depth is not None:
        same = fid == depth
        e["verdict"] = V.REPRODUCED if same else V.NOT_REPRODUCED
        word = {True: "transferred", False: "did not transfer"}
        e["reason"] = (f"fidelity says distillation {word[fid]}, the CCA depth profile says it {word[depth]}: "
                       + ("the same story" if same else "different stories"))
    return e


def fidelity_entries(layout: Mapping, rules: Mapping, claim7: Mapping | None = None) -> list[dict]:
    raised = fidelity_raised(layout, rules)
    return [raised, fidelity_below_perfect(layout, rules), fidelity_vs_cca(raised, claim7, rules)]


# --------------------------------------------------------------------------- the hook


def evaluate_beyond(layouts: Mapping[str, Mapping], rules: Mapping | None, claims: Sequence[Mapping] = ()) -> list[dict]:
    """The "Beyond the paper" entries of the competing explanations whose inputs the layouts carry."""
    out: list[dict] = []
    f6 = layouts.get("fig6_distill") or {}
    fid = f6.get("fidelity") or layouts.get("fidelity")  # fig6's layout, or the claims' own input (interface B)
    if fid:
        claim7 = next((c for c in claims if str(c.get("id")) == "7"), None)
        out += fidelity_entries({**f6, "fidelity": fid}, rules or {}, claim7)
    f10 = layouts.get("fig10_warmup_sharpness") or {}
    if f10.get("trajectories"):
        out += sharpness_entries(f10, rules or {})
    return out


# --------------------------------------------------------------------------- warmup and sharpness

SHARPNESS_CLAIMS = {
    "warmup": "With warmup, lr x lambda_max stays at or below the optimiser's stability constant at every measured "
              "iteration up to the lr peak (Kalra & Barkeshli 2024: warmup keeps the run below the edge of stability)",
    "catapult": "Without warmup, lr x lambda_max exceeds the optimiser's stability constant early and falls below it "
                "after (a catapult; Kalra & Barkeshli 2024, Lewkowycz et al. 2020)",
}


def read_trajectory(path: Any) -> tuple[pd.DataFrame | None, str | None]:
    df, problem = read_plain(path)
    if problem:
        return None, problem
    need = {"iteration", "lr", "lambda_max", "ritz_residual", "weight_decay", "constant"}
    if df.empty or not need <= set(df.columns):
        return None, "empty or columns missing"
    df = df.sort_values("iteration").reset_index(drop=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the Ritz value is a lower bound on lambda_max; + its residual an upper bound (top eigenvalue separated)
        df["ratio_low"] = df["lr"] * (df["lambda_max"] + df["weight_decay"]) / df["constant"]
        df["ratio_high"] = df["lr"] * (df["lambda_max"] + df["ritz_residual"].abs() + df["weight_decay"]) / df["constant"]
    return df, None


def _warmup_iterations(spec: Mapping | None) -> int:
    return int(((spec or {}).get("warmup") or {}).get("iterations") or 0)


def _role(spec: Mapping | None) -> str:
    if _warmup_iterations(spec) > 0:
        return "warmup"
    return "frozen" if (spec or {}).get("freeze") else "nowarmup"


def measured_spread(trajectories: Mapping[str, Mapping[str, pd.DataFrame]]) -> tuple[float | None, str]:
    """The batch-to-batch spread of lambda_max: over every run and seed, the median of |log(lambda_k+1 /
    lambda_k)| / sqrt(2) between the closest measured iterations (the early phase's spacing, 1 or 2 steps:
    the weights move little between them, so the difference is mostly the batch; what they do move makes
    the estimate conservative), i.e. the relative s.d. of one measurement."""
    diffs = []
    for seeds in trajectories.values():
        for df in seeds.values():
            d = df[(df["lambda_max"] > 0)]
            it, lam = d["iteration"].to_numpy(), d["lambda_max"].to_numpy(float)
            gaps = np.diff(it)
            if gaps.size:
                consec = gaps == gaps.min()  # the closest measured pairs (the early phase's spacing)
                diffs += list(np.abs(np.diff(np.log(lam)))[consec] / math.sqrt(2))
    if not diffs:
        return None, "no consecutive measurements"
    return float(np.median(diffs)), f"median over {len(diffs)} consecutive pairs"


def _tolerance(r: Mapping, trajs: Mapping) -> tuple[float | None, str]:
    if r.get("sharpness_tol") is not None:
        return float(r["sharpness_tol"]), f"configured {float(r['sharpness_tol']):g}"
    sd, how = measured_spread(trajs)
    if sd is None:
        return None, how
    return 2.0 * sd, f"2 x the measured batch-to-batch relative spread of lambda_max ({sd:.3g}; {how})"


def _trajectories(layout: Mapping, v_list: Sequence[V.Verdict]) -> dict:
    out: dict = {}
    for lab, seeds in (layout.get("trajectories") or {}).items():
        for inst, path in sorted(seeds.items()):
            df, prob = read_trajectory(path)
            if df is None:
                for v in v_list:
                    v.premise(f"{lab} {inst}: trajectory", False, prob, "sharpness_trajectory.csv readable", blocking=False)
                continue
            out.setdefault(lab, {})[inst] = df
    return out


def _bounded(v: V.Verdict, name: str, pairs: Sequence[tuple[float, float]]) -> dict:
    """An effect over units whose each value is bracketed (Ritz value, Ritz + residual): its range runs from the
    smallest lower bound to the largest upper bound, so a check decides only where both bounds agree."""
    lo = [a for a, _b in pairs if V.finite(a)]
    hi = [b for _a, b in pairs if V.finite(b)]
    e = {"name": f"{name} (range: lowest Ritz bound .. highest Ritz + residual bound)",
         "estimate": V.num(np.mean(lo)) if lo else None, "low": V.num(min(lo)) if lo else None,
         "high": V.num(max(hi)) if hi else None, "n": len(pairs), "kind": "range"}
    v.effects.append(e)
    return e


def sharpness_entries(layout: Mapping, rules: Mapping) -> list[dict]:
    r = rules_with_defaults(rules)
    specs = layout.get("specs") or {}
    vw = V.Verdict("beyond-warmup-sharpness", SHARPNESS_CLAIMS["warmup"], r)
    vc = V.Verdict("beyond-catapult", SHARPNESS_CLAIMS["catapult"], r)
    trajs = _trajectories(layout, [vw, vc])
    tol, tol_how = _tolerance(r, trajs)
    for v in (vw, vc):
        v.premise("tolerance", tol is not None, tol, tol_how)
        v.measured["tolerance"] = {"value": V.num(tol), "basis": tol_how}
    tol = tol if tol is not None else math.nan
    # with warmup: the upper bound (Ritz + residual) over every measured iteration before the peak
    w_units, peaks = [], []
    for lab, seeds in trajs.items():
        if _role(specs.get(lab)) != "warmup":
            continue
        peak = _warmup_iterations(specs.get(lab))
        for inst, df in seeds.items():
            d = df[(df["iteration"] < peak) & (df["lr"] > 0)]
            name = f"{lab} {inst}"
            if vw.premise(f"{name}: measured during warmup", len(d) > 0, len(d), f"rows with 0 < lr, iteration < {peak}",
                          blocking=False):
                w_units.append(name)
                vw.seed(name)
                peaks.append((float(d["ratio_low"].max()), float(d["ratio_high"].max())))
                vw.measured[name] = {"max_ratio_upper": V.num(d["ratio_high"].max()), "max_ratio_ritz": V.num(d["ratio_low"].max()),
                                     "at_iteration": int(d.loc[d["ratio_high"].idxmax(), "iteration"]), "rows": len(d)}
    vw.enough(w_units, w_units or ["(no warmup run)"], "warmup runs")
    e = _bounded(vw, "max over the warmup of lr x lambda_max / constant", peaks)
    vw.check(e, 1.0 + tol, "below")
    # without warmup: the early peak judged on the Ritz value (a lower bound: exceeding is conclusive), the fall on
    # the upper bound over the last measured iterations of the early phase
    c_units, ups, downs = [], [], []
    for lab, seeds in trajs.items():
        if _role(specs.get(lab)) != "nowarmup":
            continue
        for inst, df in seeds.items():
            name = f"{lab} {inst}"
            d = df[df["lr"] > 0].reset_index(drop=True)
            if not vc.premise(f"{name}: measured early and after", len(d) >= 4, len(d), ">= 4 rows with lr > 0",
                              blocking=False):
                continue
            k = int(d["ratio_low"].idxmax())
            after = d.iloc[k + 1:]
            if not vc.premise(f"{name}: iterations measured after the peak", len(after) >= 3, len(after), ">= 3",
                              blocking=False):
                continue
            c_units.append(name)
            vc.seed(name)
            ups.append((float(d["ratio_low"].iloc[k]), float(d["ratio_high"].iloc[k])))
            tail = after.head(3)
            downs.append((float(tail["ratio_low"].median()), float(tail["ratio_high"].median())))
            vc.measured[name] = {"peak_ratio_ritz": V.num(ups[-1][0]), "peak_iteration": int(d["iteration"].iloc[k]),
                                 "after_ratio_ritz": V.num(downs[-1][0]), "after_ratio_upper": V.num(downs[-1][1]),
                                 "after_iterations": [int(i) for i in tail["iteration"]]}
    vc.enough(c_units, c_units or ["(no run without warmup)"], "runs without warmup")
    e_up = _bounded(vc, "early peak of lr x lambda_max / constant", ups)
    e_dn = _bounded(vc, "after the peak: median of the next 3 measured lr x lambda_max / constant", downs)
    vc.check(e_up, 1.0 + tol, "above")
    vc.check(e_dn, 1.0 + tol, "below")
    for lab, seeds in trajs.items():  # reported, not judged
        if _role(specs.get(lab)) == "frozen":
            for inst, df in seeds.items():
                vc.measured[f"{lab} {inst} (reported)"] = {"peak_ratio_ritz": V.num(df["ratio_low"].max()),
                                                           "peak_iteration": int(df.loc[df["ratio_low"].idxmax(), "iteration"])}
    basis = ("lr x lambda_max against the optimiser's constant (2 plain SGD, 2 + 2 beta heavy ball, (2 + 2 beta) / "
             "(1 + 2 beta) Nesterov); lambda_max: a few Lanczos steps on the current training batch, train-mode BN, "
             "dropout off, weight decay added; the Ritz value is a lower bound, Ritz + residual an upper bound when the "
             "top eigenvalue is separated")
    return [vw.entry(f"{basis}. Judged: the whole range over runs and seeds of the upper bound's maximum before the lr "
                     f"peak lies at or below 1 + tol (tol: {tol_how})"),
            vc.entry(f"{basis}. Judged: the lower bound's early peak lies wholly above 1 + tol, and the upper bound's "
                     f"median over the next 3 measured iterations after the peak at or below 1 + tol (tol: {tol_how}); "
                     "frozen-FC runs reported, not judged")]
