"""Claim 4: curves between models of different recipes keep accuracy high along their whole length. The
two-seed positive control gates its negative outcome (issue 24.3: the control curve's own accuracy drop within
claim 4's threshold); "fit converged" per curve unless the curve already removed its line's barrier (24.2);
each drop carries the test set's sampling error (29.8)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .. import verdicts as V
from ..verdicts import Verdict
from . import _common as K

_num = V.num


def claim4(layout: Mapping, rules: Mapping, reference: Mapping | None, text: str) -> dict:
    """``reference``: Fig. 2's two-seed pairs. Fig. 1's curves join models of different seeds too, so a curve
    fit that cannot keep the control's accuracy says nothing about them (e.g. too few fitting epochs)."""
    v = Verdict("4", text, rules)
    lim, z = float(rules["robust_max_drop_points"]), float(rules["acc_noise_z"])
    n_test = K.test_images(layout)
    units, kept, line_drops, noise = [], {}, [], {}
    for label, insts in ((layout or {}).get("curves") or {}).items():
        for inst, files in (insts or {}).items():
            where = f"{label}/{inst}"
            v.seed(inst)
            units.append(where)
            curve, line = K.path(files, "curve", where, v), K.path(files, "line", where, v)
            if curve is None or "test_acc" not in curve.columns:
                continue
            a = curve.sort_values("t")["test_acc"].to_numpy(dtype=float)
            ok = K.endpoints_trained(v, curve, where, layout)
            if not np.isfinite(a).all():
                v.missing(f"{where} curve", "NaN accuracy")
                continue
            drop = K.acc_drop(curve)
            ldrop = 100 * (min(a[0], a[-1]) - float(line["test_acc"].min())) if line is not None else float("nan")
            se = 100 * V.acc_diff_se(min(a[0], a[-1]), a.min(), n_test) if n_test else float("nan")
            lb, cb = K.barriers(line)[K.judged(v)], K.barriers(curve)[K.judged(v)]
            v.measured[where] = {"min_curve_test_acc": _num(a.min()), "endpoint_test_acc": [_num(a[0]), _num(a[-1])],
                                 "curve_drop_points": _num(drop), "line_drop_points (contrast)": _num(ldrop),
                                 "drop_sampling_se_points": _num(se), "test_images": n_test}
            ok = K.converged_premise(v, files, where, K.removes(v, lb, cb)) and ok
            if ok:
                kept.setdefault(label, []).append(drop)
                noise.setdefault(label, []).append(se)
                line_drops.append(ldrop)
    if not units:
        v.missing("curves", "none configured")
    v.premise("test set size known (the accuracy's sampling error)", bool(n_test), n_test, "data info test_images")
    v.enough([x for d in kept.values() for x in d], units, "curves")
    K.control_gate(v, reference, "accuracy")
    for label, drops in kept.items():
        se = max((s for s in noise.get(label, []) if math.isfinite(s)), default=float("nan"))
        v.check(v.effect(f"accuracy points below the weaker endpoint, {label}", drops), lim, "below",
                noise=z * se if math.isfinite(se) else None, noise_basis=V.ACC_NOISE_BASIS)
    K.worst_first(v, 0)
    v.effect("straight line's drop below the weaker endpoint, all curves (contrast, not judged)", line_drops,
             kind="range")
    rule = (f"premises: both endpoints of every curve trained; each curve's fit converged (stopped by its rule) or "
            f"removed its line's barrier; a NEGATIVE outcome also needs the two-seed positive control (Fig. 2's "
            f"pair: its curve's accuracy drop <= {lim:g} points). Rule: per curve, min(endpoint test accuracy) - "
            f"min_t curve test accuracy, in accuracy points, over instances: whole range (n <= 3) or t-interval "
            f"(n > 3) <= {lim:g} points, widened by {z:g} x its sampling SE (inside: 'within measurement noise'); "
            f"the straight line's drop is the contrast. Six curves per instance: configs run one instance "
            f"(n = 1, no spread) for the budget")
    return v.entry(rule)
