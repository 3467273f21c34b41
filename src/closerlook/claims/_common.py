"""What the claims share: the trained-run premises, path tables and their two barrier definitions, the
accuracy noise, the positive control and the "fit converged" premise (interfaces C of the team contract)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import verdicts as V
from ..tables import path_barrier, read_plain, read_table  # noqa: F401 (read_plain: claims' text-column tables)
from ..verdicts import Verdict

_num = V.num


def classes(layout: Mapping) -> int | None:
    return V.read_num_classes((layout or {}).get("data_info"))


def test_images(layout: Mapping) -> int | None:
    return V.read_test_images((layout or {}).get("data_info"))


def loss_max(v: Verdict) -> Any:
    return v.rules.get("train_loss_max")


def runs_trained(v: Verdict, metrics: Mapping, labels: Sequence[str], layout: Mapping, blocking=True,
                 role: Mapping | None = None) -> dict:
    """Trained premise for every seed of ``labels`` in ``metrics``; returns {(label, inst): holds}.
    ``role`` (optional): (label, inst) -> the name the premise row gives that run (e.g. "teacher")."""
    k, margin = classes(layout), float(v.rules["min_acc_above_chance"])
    out = {}
    for label in labels:
        insts = (metrics or {}).get(label) or {}
        if not insts:
            v.missing(f"{label} metrics", "missing")
        distilled = bool((((layout or {}).get("specs") or {}).get(label) or {}).get("distill"))
        for inst, path in sorted(insts.items()):
            df, prob = read_table(path)
            column, lmax, note = _loss_bar(v, df, distilled)
            name = ((role or {}).get((label, inst)) or f"{label}/{inst}") + note
            out[(label, inst)] = v.add(V.run_trained(df, prob, k, margin, f"trained: {name}", lmax, column), blocking)
    return out


def _loss_bar(v: Verdict, df: pd.DataFrame | None, distilled: bool) -> tuple[str, Any, str]:
    """(column, bar, note) of a run's training-loss premise. A distilled run's train_loss is alpha T^2 KL +
    (1 - alpha) CE (closerlook.train), to which no cross-entropy bar applies: it is judged on its hard-label
    cross-entropy (train_ce) where its metrics have one, else on test accuracy alone, and the row says which."""
    if not distilled or loss_max(v) is None:
        return "train_loss", loss_max(v), ""
    if df is not None and "train_ce" in df.columns and np.isfinite(pd.to_numeric(df["train_ce"], errors="coerce")).any():
        return "train_ce", loss_max(v), " (train loss: its hard-label cross-entropy, not the distillation objective)"
    return "train_loss", None, " (train loss not judged: a distillation objective)"


def path(files: Mapping | None, kind: str, where: str, v: Verdict) -> pd.DataFrame | None:
    df, prob = read_table((files or {}).get(kind))
    if prob:
        v.missing(f"{where} {kind}", prob)
        return None
    return df


def ends(df: pd.DataFrame | None, column: str) -> tuple[float, float]:
    if df is None or column not in df.columns or "t" not in df.columns or df.empty:
        return float("nan"), float("nan")
    d = df.sort_values("t")
    return float(d[column].iloc[0]), float(d[column].iloc[-1])


def endpoints_trained(v: Verdict, df: pd.DataFrame | None, where: str, layout: Mapping) -> bool:
    """Unit premise: both endpoints of a path (test accuracy at t = 0 and 1; with ``train_loss_max`` also
    their train loss) trained."""
    a0, a1 = ends(df, "test_acc")
    l0, l1 = ends(df, "train_loss")
    worse = min(a0, a1) if math.isfinite(a0) and math.isfinite(a1) else float("nan")
    lw = max(l0, l1) if math.isfinite(l0) and math.isfinite(l1) else float("nan")
    rec = V.trained(worse, classes(layout), float(v.rules["min_acc_above_chance"]), f"endpoints trained: {where}",
                    train_loss=lw, train_loss_max=loss_max(v))
    return v.add(rec, blocking=False)




def worst_first(v: Verdict, start: int, key=lambda e: -(e["estimate"] if e["estimate"] is not None else -math.inf)):
    """Order the effects added since ``start`` so the main (worst) one comes first."""
    v.effects[start:] = sorted(v.effects[start:], key=key)


# --------------------------------------------------------------------------- barriers


def interp_barrier(df: pd.DataFrame | None, column: str = "train_loss") -> float:
    """max_t [L(t) - ((1 - t) L(0) + t L(1))]: the bump above the straight interpolation of the endpoint
    losses (unlike :func:`closerlook.tables.path_barrier`, a bump between endpoints of unequal loss shows)."""
    if df is None or column not in df.columns or "t" not in df.columns or df.empty:
        return float("nan")
    d = df.sort_values("t")
    t, y = d["t"].to_numpy(dtype=float), d[column].to_numpy(dtype=float)
    if not np.isfinite(y).all() or t.size < 2 or t[-1] == t[0]:
        return float("nan")
    s = (t - t[0]) / (t[-1] - t[0])
    return float(np.max(y - ((1 - s) * y[0] + s * y[-1])))


def barriers(df: pd.DataFrame | None) -> dict:
    return {"endpoint_max": path_barrier(df), "interpolation": interp_barrier(df)}


def judged(v: Verdict) -> str:
    d = str(v.rules.get("barrier_definition", "interpolation"))
    return d if d in ("endpoint_max", "interpolation") else "interpolation"


BARRIER_WORDS = {"endpoint_max": "above the higher endpoint (max_t L(t) - max(L0, L1))",
                 "interpolation": "above the endpoints' linear interpolation (max_t L(t) - ((1 - t) L0 + t L1))"}


def barrier_text(v: Verdict) -> str:
    j = judged(v)
    other = "endpoint_max" if j == "interpolation" else "interpolation"
    return f"barrier judged {BARRIER_WORDS[j]}; the other definition, {BARRIER_WORDS[other]}, reported beside it"


def removes(v: Verdict, line_b: float, curve_b: float) -> bool:
    """A curve removes a line barrier: it keeps <= curve_excess_frac of it AND less than barrier_min_nats (the
    absolute floor: a 4-nat line with a 1-nat curve is no "no barrier")."""
    frac, bmin = float(v.rules["curve_excess_frac"]), float(v.rules["barrier_min_nats"])
    return (math.isfinite(line_b) and math.isfinite(curve_b) and line_b > 0 and curve_b <= frac * line_b
            and curve_b < bmin)


def fit_converged(files: Mapping | None) -> tuple[bool | None, str]:
    """Interface C: the curve's metrics.csv (beside curve.csv) ``stopped`` on its last row. (None, why) when
    not known (no table, no column)."""
    f = (files or {}).get("fit_metrics") or ((files or {}).get("curve") and str(Path(files["curve"]).parent / "metrics.csv"))
    if not f:
        return None, "not known: no curve metrics.csv"
    df, prob = read_table(f)
    if df is None or prob not in (None, "diverged"):
        return None, f"not known: curve metrics.csv {prob or 'missing'}"
    if "stopped" not in df.columns or df.empty:
        return None, "not known: curve metrics.csv has no 'stopped' column (fit without the stopping rule)"
    last = df.sort_values("epoch").iloc[-1] if "epoch" in df.columns else df.iloc[-1]
    val = str(last["stopped"]).strip().lower() in ("true", "1", "1.0", "yes")
    return val, ("stopped by the rule" if val else "cap (epochs) reached")


def converged_premise(v: Verdict, files: Mapping | None, where: str, removed: bool) -> bool:
    """Unit premise "fit converged" (issue 24.2): stopped by the rule, or the curve already removed the barrier
    (a low path found is a finding whatever the budget)."""
    ok, why = fit_converged(files)
    holds = bool(ok) or removed
    value = why + ("; the curve already removed the barrier" if removed and not ok else "")
    return v.premise(f"fit converged: {where}", holds, value,
                     "stopped by the stopping rule (not the epochs cap), or the curve removed the barrier", blocking=False)


def control_pairs(reference: Mapping | None) -> list[tuple[str, Mapping]]:
    return [(f"{label}/{inst}", files) for label, insts in (reference or {}).items()
            for inst, files in (insts or {}).items()]


def control_gate(v: Verdict, reference: Mapping | None, quantity: str) -> bool:
    """The two-seed positive control as a premise of NEGATIVE outcomes (issue 24.3), judged on the quantity the
    claim judges: ``"barrier"`` (claims 1b-2b: the control's curve keeps <= curve_excess_frac of its line barrier
    AND less than barrier_min_nats) or ``"accuracy"`` (claim 4: accuracy points along the control curve below its
    weaker endpoint <= robust_max_drop_points)."""
    bmin, frac = float(v.rules["barrier_min_nats"]), float(v.rules["curve_excess_frac"])
    lim = float(v.rules["robust_max_drop_points"])
    name = "positive control (two seeds of one recipe)"
    if quantity == "barrier":
        rule = (f"its line barrier > {bmin:g} nats and its curve keeps <= {frac:g} of it and < {bmin:g} nats "
                f"({BARRIER_WORDS[judged(v)]})")
    else:
        rule = f"accuracy points along its curve below the weaker endpoint <= {lim:g}"
    pairs = control_pairs(reference)
    if not pairs:
        return v.gate(name, False, "no reference pair configured", rule)
    refs = v.measured.setdefault("positive control", {})
    ok_all = True
    for where, files in pairs:
        line, _ = read_table((files or {}).get("line"))
        curve, _ = read_table((files or {}).get("curve"))
        lb, cb = barriers(line)[judged(v)], barriers(curve)[judged(v)]
        rec = {"line_barrier_nats": _num(lb), "curve_barrier_nats": _num(cb)}
        if quantity == "barrier":
            ok = math.isfinite(lb) and lb > bmin and removes(v, lb, cb)
            value = f"line {_fmt(lb)}, curve {_fmt(cb)}"
        else:
            drop = acc_drop(curve)
            rec["curve_drop_points"] = _num(drop)
            ok = math.isfinite(drop) and drop <= lim
            value = f"curve drop {_fmt(drop)} points"
        refs[where] = rec
        ok_all = v.gate(f"{name}: {where}", ok, value, rule) and ok_all
    return ok_all


def acc_drop(curve: pd.DataFrame | None) -> float:
    """Accuracy points of a path below its weaker endpoint (100 x (min(a0, a1) - min_t a(t)))."""
    if curve is None or "test_acc" not in curve.columns or "t" not in curve.columns or curve.empty:
        return float("nan")
    a = curve.sort_values("t")["test_acc"].to_numpy(dtype=float)
    if not np.isfinite(a).all():
        return float("nan")
    return float(100 * (min(a[0], a[-1]) - a.min()))


def _fmt(x: Any) -> str:
    return V._fmt(_num(x) if isinstance(x, float) else x)


def epochs_in_label(label: str) -> tuple[int, int] | None:
    """(a, b) from a curve label like ``sgdr-w1-w3`` (its endpoints' epochs), else None."""
    m = re.findall(r"w(\d+)", str(label))
    return (int(m[0]), int(m[1])) if len(m) >= 2 else None
