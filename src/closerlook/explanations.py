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
    if not path:
        return None, "missing"
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, pd.errors.ParserError):
        return None, "unreadable"
    if df.empty:
        return None, "empty"
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
         "high": V.num((vals + z * s).max()) if vals.size else None, "n": int(vals.size), "kind": "range+noise"}
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
    for e in (claim7 or {}).get("effects") or []:
        if str(e.get("name", "")).startswith("depth profile"):
            lo, hi = e.get("low"), e.get("high")
            if V.finite(lo) and V.finite(hi):
                return (True if lo > gap else False if hi <= gap else None), f"{e['name']} [{lo:.3g}, {hi:.3g}] vs {gap:g}"
            return None, f"{e['name']}: not measured"
    return None, "claim 7 has no depth-profile effect"


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
    if f6.get("fidelity"):
        claim7 = next((c for c in claims if c.get("id") == 7), None)
        out += fidelity_entries(f6, rules or {}, claim7)
    f10 = layouts.get("fig10_warmup_sharpness") or {}
    if f10.get("trajectories"):
        from .sharpness_verdicts import sharpness_entries

        out += sharpness_entries(f10, rules or {})
    return out
