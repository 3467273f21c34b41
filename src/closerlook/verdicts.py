"""The verdict contract: premises, effects with their spread, the calibrated scale, verdicts, reports.

Every entry of ``claims.json`` (the paper's claims in :mod:`closerlook.claims`, and any
later list such as ``result["beyond"]``) has the same shape::

    {"id", "claim", "verdict", "rule", "reason", "seeds", "measured",
     "premises": [{"name", "holds", "value", "rule"}, ...],
     "effects":  [{"name", "estimate", "low", "high", "n", "kind"}, ...]}

and is built with :class:`Verdict`:

1. premises first (:meth:`Verdict.premise`): what makes the claim testable (runs trained,
   an instrument that detects what it must, a premise present at this scale). A failed
   *blocking* premise makes the claim ``inconclusive``, never ``reproduced`` or ``not
   reproduced``. A unit (pair, seed) that fails its own premise is reported and left out;
   :meth:`Verdict.enough` then asks for a minimum number of units left (blocking).
2. effects (:func:`spread`): an estimate over seeds with its spread: the range (min, max)
   for n <= 3, a Student-t interval of the mean for n > 3 (level ``rules["interval_level"]``).
3. checks (:meth:`Verdict.check`) on an effect's whole range: all of it on the passing side
   -> holds; all of it on the failing side -> fails; straddling the threshold -> undecided.
   Verdict: any check fails -> ``not reproduced``; else any undecided -> ``inconclusive``;
   else ``reproduced``.

Also here, importable without matplotlib: the trained-run premise (:func:`trained`,
:func:`run_trained`, shared by claims and figures), the chance-calibrated similarity scale
(:func:`calibrated`), the permutation p-value (:func:`permutation_p`), ``DEFAULT_RULES`` (the
one owner of every claim threshold's default) and the Markdown report (:func:`to_markdown`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)

# Every claim threshold's default (config `claims:` overrides; the configs say why each value).
DEFAULT_RULES: dict[str, Any] = {
    "min_acc_above_chance": 0.1,    # trained: final test accuracy > 1/num_classes + this
    "min_pairs": None,              # units (pairs, seeds) that must pass their premises; None = all
    "interval_level": 0.95,         # t-interval level when n > 3 seeds
    "barrier_min_nats": 0.1,        # a straight-line barrier: line max - max(endpoint losses) above this
    "curve_excess_frac": 0.25,      # a curve removes a barrier: its excess <= this fraction of the line's
    "plane_max_rel_distance": 0.2,  # claim 3: projections this close to the plane (x ||w - w1||)
    "climb_min_nats": 0.1,          # claim 3: an iterate's own loss above the curve's max by this
    "robust_max_drop_points": 5.0,  # claim 4: accuracy points below the weaker endpoint, at most
    "deep_layers": 3,               # deep = the last N analysis layers, shallow = the first N
    "distill_exclude_output": True,  # claim 7: the output layer is not "deep" (distillation matches logits)
    "chance_exclude_within": 0.05,  # layers whose chance level is within this of 1 are excluded
    "deep_min_gap": 0.05,           # claims 5-7: depth-profile difference on the calibrated scale
    "acc_min_gap": 0.005,           # claims 5-6: an accuracy gap counts when at least this
    "freeze_close_frac": 0.5,       # claim 6: frozen FC recovers at least this fraction of warmup's gain
    "measure": "cca_mean",          # claims 5-7 when the figure block names none
    # issue 29 / 24 / 25 additions (each a premise or an effect's rule; the configs say why each value)
    "barrier_definition": "interpolation",  # judged barrier: "interpolation" = max_t [L(t) - ((1-t) L0 + t L1)]
                                    # (no bump hidden between endpoints of unequal loss); "endpoint_max" = max_t L(t)
                                    # - max(L0, L1) (tables.path_barrier); both are reported
    "line_min_points": 9,           # claims 1a-2a: a line evaluated at fewer t values can miss its barrier
    "restart_min_rise_nats": 0.05,  # claim 1a: the training loss after an SGDR restart rises above its value
                                    # before by this (a restart too weak to leave the basin is another regime)
    "train_loss_max": None,         # trained also needs final train loss <= this (None: not judged; basis per config)
    "warmup_min_acc_above_chance": None,  # claim 5b: the warmup run at the compared checkpoint above chance +
                                    # this (None: min_acc_above_chance)
    "acc_noise_z": 1.96,            # accuracy effects widened by z x their sampling SE (binomial, per test set)
    "p_value_min_shuffles": 99,     # a permutation p-value is shown only with >= this many shuffles
    "plane_instances": "first",     # claim 3 on the plane of the curve's first instance, or "all" (one plane each)
    # beyond the paper (closerlook.ensembles.evaluate_beyond): an ensemble is "about as accurate" as as many
    # independent seeds when its accuracy difference's whole range lies above -this (1 percentage point: the
    # size of seed-to-seed differences at demo scale; fixed before any ensemble was measured)
    "ensemble_acc_tol": 0.01,
}


def rules_with_defaults(rules: Mapping | None) -> dict:
    """``DEFAULT_RULES`` updated with the config's (non-null) values."""
    r = dict(DEFAULT_RULES)
    r.update({k: v for k, v in (rules or {}).items() if v is not None})
    return r


def num(x: Any) -> float | None:
    """JSON-safe number: NaN/inf -> None, numpy -> float, rounded for readability."""
    if x is None or isinstance(x, bool):
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if math.isfinite(f) else None


def finite(x: Any) -> bool:
    # numpy integers (a pandas column of counts) are numbers too; bools are not
    return (x is not None and not isinstance(x, (bool, np.bool_))
            and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(x))


# --------------------------------------------------------------------------- numbers


def spread(name: str, values: Iterable[float], level: float = 0.95) -> dict:
    """Effect record over replicates: mean with range (n <= 3) or a Student-t interval (n > 3)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"name": name, "estimate": None, "low": None, "high": None, "n": 0, "kind": "range"}
    est = float(v.mean())
    if n <= 3:
        return {"name": name, "estimate": num(est), "low": num(v.min()), "high": num(v.max()), "n": n, "kind": "range"}
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"name": name, "estimate": num(est), "low": num(est - half), "high": num(est + half), "n": n,
            "kind": "interval"}


def calibrated(value: Any, chance: Any, exclude_within: float = 0.0) -> Any:
    """Chance-calibrated similarity ``(v - c) / (1 - c)``: chance -> 0, identical -> 1.

    NaN where ``c`` is within ``exclude_within`` of 1 (no room above chance), elementwise.
    """
    v, c = np.asarray(value, dtype=float), np.asarray(chance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(1.0 - c > max(float(exclude_within), 0.0), (v - c) / (1.0 - c), np.nan)
    return float(out) if out.ndim == 0 else out


def permutation_p(observed: float, shuffled: Sequence[float]) -> float:
    """Permutation p-value ``(1 + #{shuffle >= observed}) / (K + 1)``: never 0, at least 1/(K+1)."""
    s = np.asarray(shuffled, dtype=float)
    return float((1 + int(np.sum(s >= observed))) / (s.size + 1))


def trained(acc: Any, num_classes: Any, margin: float, name: str, diverged: bool = False,
            train_loss: Any = None, train_loss_max: Any = None) -> dict:
    """Premise "trained": not diverged and test accuracy > 1/num_classes + margin (and, when ``train_loss_max``
    is set, the final training loss <= it: with a few thousand training images a run can sit above the
    accuracy bar without having fitted its data, or fit it while the test accuracy says little)."""
    if not num_classes:
        return premise_record(name, False, num(acc), "number of classes unknown (data info missing)")
    thr = 1.0 / float(num_classes) + float(margin)
    holds = (not diverged) and finite(acc) and float(acc) > thr
    rule = f"not diverged and test accuracy > 1/{int(num_classes)} + {margin:g} = {thr:.3g}"
    value: Any = "diverged" if diverged else num(acc)
    if train_loss_max is not None:
        ok = finite(train_loss) and float(train_loss) <= float(train_loss_max)
        holds = holds and ok
        rule += f" and train loss <= {float(train_loss_max):g}"
        if not diverged:
            value = f"test acc {_fmt(num(acc))}, train loss {_fmt(num(train_loss))}"
    return premise_record(name, bool(holds), value, rule)


def run_trained(df: Any, problem: str | None, num_classes: Any, margin: float, name: str,
                train_loss_max: Any = None, loss_column: str = "train_loss") -> dict:
    """:func:`trained` for a run's metrics table (final row's ``test_acc`` / ``loss_column``; ``problem`` from
    read_table)."""
    acc = loss = float("nan")
    if df is not None and "test_acc" in getattr(df, "columns", ()) and len(df):
        d = df.sort_values("epoch") if "epoch" in df.columns else df
        acc = float(d["test_acc"].iloc[-1])
        loss = float(d[loss_column].iloc[-1]) if loss_column in d.columns else float("nan")
    if problem not in (None, "diverged"):
        return premise_record(name, False, problem, "metrics table readable")
    return trained(acc, num_classes, margin, name, diverged=problem == "diverged", train_loss=loss,
                   train_loss_max=train_loss_max)


def acc_se(p: Any, n: Any) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images (NaN when unknown)."""
    if not (finite(p) and finite(n)) or n <= 0:
        return float("nan")
    p = min(max(float(p), 0.0), 1.0)
    return math.sqrt(p * (1 - p) / float(n))


def acc_diff_se(p1: Any, p2: Any, n: Any) -> float:
    """Sampling SE of ``p1 - p2``, two accuracies on the SAME ``n`` test images, without per-image predictions.

    The paired SE is sqrt(d - (p1 - p2)^2) / sqrt(n) with d the share of discordant images (McNemar); it needs
    per-image predictions, which the pipeline does not keep. Used instead: sqrt(p1 q1 + p2 q2) / sqrt(n), the SE
    of two independent accuracies, which bounds the paired SE from above whenever the two models' errors are
    positively correlated (two trained networks on one test set: the usual case). Per-image correctness of both
    models (one bit per image) would give the paired value and tighten the interval."""
    a, b = acc_se(p1, n), acc_se(p2, n)
    return math.sqrt(a * a + b * b) if math.isfinite(a) and math.isfinite(b) else float("nan")


ACC_NOISE_BASIS = ("binomial SE of each accuracy on the test set, combined as for independent errors (an upper "
                   "bound of the paired McNemar SE when the models' errors are positively correlated; per-image "
                   "predictions would give the paired SE)")


def read_test_images(path: Any) -> int | None:
    """``test_images`` from a data-info JSON; None if unreadable."""
    try:
        return int(json.loads(Path(path).read_text())["test_images"])
    except (OSError, TypeError, KeyError, ValueError):
        return None


def premise_record(name: str, holds: bool, value: Any, rule: str) -> dict:
    return {"name": name, "holds": bool(holds), "value": value if isinstance(value, str) else num(value), "rule": rule}


def read_num_classes(path: Any) -> int | None:
    """``info.num_classes`` from a data-info JSON (results/<name>/data/info.json); None if unreadable."""
    try:
        return int(json.loads(Path(path).read_text())["info"]["num_classes"])
    except (OSError, TypeError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- one verdict


class Verdict:
    """Collects one claim's premises, effects and checks; :meth:`entry` gives the contract dict."""

    def __init__(self, cid: Any, claim: str, rules: Mapping) -> None:
        self.cid, self.claim, self.rules = cid, claim, rules
        self.premises: list[dict] = []
        self.effects: list[dict] = []
        self.measured: dict = {}
        self.seeds: list[str] = []
        self._blocking: list[dict] = []
        self._unit_failures: list[dict] = []
        self._gates: list[dict] = []
        self._notes: list[str] = []
        self._checks: list[tuple[bool | None, str]] = []

    def premise(self, name: str, holds: bool, value: Any = None, rule: str = "", blocking: bool = True) -> bool:
        """Record a premise; a failed blocking one makes the claim inconclusive. Returns ``holds``."""
        return self.add(premise_record(name, holds, value, rule), blocking)

    def add(self, record: Mapping, blocking: bool = True) -> bool:
        self.premises.append(dict(record))
        if not record["holds"]:
            (self._blocking if blocking else self._unit_failures).append(dict(record))
        return bool(record["holds"])

    def gate(self, name: str, holds: bool, value: Any = None, rule: str = "") -> bool:
        """A premise of a NEGATIVE outcome only (e.g. the positive control: a curve that removes its own barrier
        needs none): a failed gate turns "not reproduced" into inconclusive and leaves "reproduced" alone."""
        rec = premise_record(f"{name} (needed for a negative outcome)", holds, value, rule)
        self.premises.append(rec)
        if not holds:
            self._gates.append(rec)
        return bool(holds)

    def note(self, text: str) -> None:
        """A sentence the verdict's reason carries whatever the verdict (e.g. a sign that differs by scale)."""
        if text and text not in self._notes:
            self._notes.append(text)

    def missing(self, what: str, problem: str) -> None:
        """An input the claim needs is missing, empty, unreadable or diverged (a blocking premise)."""
        self.premise(f"input {what}", False, problem, "present, readable, not diverged")

    def enough(self, kept: Sequence[Any], total: Sequence[str], what: str, note: str = "") -> bool:
        """Blocking premise: at least ``rules["min_pairs"]`` (None: all) of ``total`` units passed theirs;
        its value names the unit premises that failed (and ``note``, e.g. "premise absent at this scale")."""
        need = len(total) if self.rules.get("min_pairs") is None else min(int(self.rules["min_pairs"]), len(total))
        need = max(need, 1)
        failed = "; ".join(f"{p['name']} = {_fmt(p['value'])}, needs {p['rule']}" for p in self._unit_failures)
        value = f"{len(kept)} of {len(total)}" + (f"; failed: {failed}" if failed else "") + (f"; {note}" if note else "")
        return self.premise(f"enough {what}", len(kept) >= need, value, f">= {need} of {len(total)} {what} pass their premises")

    def seed(self, s: Any) -> None:
        if str(s) not in self.seeds:
            self.seeds.append(str(s))

    def effect(self, name: str, values: Iterable[float], kind: str | None = None) -> dict:
        """Add the effect of ``values`` over replicates (:func:`spread`); ``kind="range"`` forces min/max."""
        vals = list(values)
        e = spread(name, vals, float(self.rules.get("interval_level", 0.95)))
        if kind == "range" and e["n"]:
            v = np.asarray([x for x in vals if finite(x)], dtype=float)
            e.update(low=num(v.min()), high=num(v.max()), kind="range")
        self.effects.append(e)
        return e

    def check(self, e: Mapping, threshold: float, side: str, noise: float | None = None,
              noise_basis: str = "") -> bool | None:
        """Judge effect ``e`` against ``threshold`` (side ``"above"`` or ``"below"``) on its whole range.

        ``noise`` (a half-width, e.g. z x the accuracy's sampling SE): the range widened by it must clear the
        threshold too; a range that clears it only before widening is undecided "within measurement noise"."""
        lo, hi = e.get("low"), e.get("high")
        nz = float(noise) if finite(noise) and noise > 0 else 0.0
        if not (finite(lo) and finite(hi)):
            out, why = None, "undecided (range straddles the threshold or is unknown)"
        else:
            out = _side(lo, hi, threshold, side)
            out_n = _side(lo - nz, hi + nz, threshold, side) if nz else out
            if out is not None and out_n is None:
                out, why = None, f"inconclusive: within measurement noise (+-{nz:.3g}, its basis in the effect)"
            else:
                why = {True: "holds", False: "fails", None: "undecided (range straddles the threshold or is unknown)"}[out]
        if nz and isinstance(e, dict):
            e["noise"] = {"half_width": num(nz), "basis": noise_basis}
        rng = f"[{_fmt(lo)}, {_fmt(hi)}]" + (" (single run (n = 1): no spread)" if e.get("n") == 1 else "")
        self._checks.append((out, f"{e['name']} {rng} {'>' if side == 'above' else '<='} {threshold:g} {why}"))
        return out

    def decide(self) -> tuple[str, str]:
        notes = "".join(f"; {t}" for t in self._notes)
        if self._blocking:
            why = "; ".join(f"{p['name']} ({_fmt(p['value'])}; needs {p['rule']})" for p in self._blocking)
            return INCONCLUSIVE, "premise absent: " + why + notes
        if not self._checks:
            return INCONCLUSIVE, "nothing to judge" + notes
        fails = [t for ok, t in self._checks if ok is False]
        undecided = [t for ok, t in self._checks if ok is None]
        if fails and self._gates:
            why = "; ".join(f"{p['name']} ({_fmt(p['value'])}; needs {p['rule']})" for p in self._gates)
            return INCONCLUSIVE, ("negative outcome not established, its premise absent: " + why + "; measured: "
                                  + "; ".join(fails + undecided) + notes)
        if fails:
            return NOT_REPRODUCED, "; ".join(fails + undecided) + notes
        if undecided:
            return INCONCLUSIVE, "; ".join(undecided) + notes
        return REPRODUCED, "; ".join(t for _, t in self._checks) + notes

    def outcomes(self, start: int = 0) -> list[bool | None]:
        """The outcomes of the checks made since check number ``start`` (for per-measure judgements)."""
        return [ok for ok, _ in self._checks[start:]]

    def entry(self, rule: str) -> dict:
        verdict, reason = self.decide()
        return {"id": self.cid, "claim": self.claim, "verdict": verdict, "rule": rule, "reason": reason,
                "seeds": list(self.seeds), "premises": list(self.premises), "effects": list(self.effects),
                "measured": self.measured}


def _side(lo: float, hi: float, threshold: float, side: str) -> bool | None:
    if side == "above":
        return True if lo > threshold else (False if hi <= threshold else None)
    return True if hi <= threshold else (False if lo > threshold else None)


def summary(entries: Sequence[Mapping]) -> dict:
    return {v: sum(1 for c in entries if c.get("verdict") == v) for v in VERDICTS}


# --------------------------------------------------------------------------- Markdown

# lists of entries that to_markdown renders, in this order, with these titles (others: by key)
SECTION_TITLES = {"claims": "The paper's claims", "beyond": "Beyond the paper"}


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_fmt(y) for y in x) + "]"
    return str(x)


def effect_text(e: Mapping | None, level: float = 0.95) -> str:
    """``0.31 (range 0.2 to 0.4, n=2)`` / ``0.31 (95 % t-interval 0.2 to 0.4, n=5)``."""
    if not e or e.get("estimate") is None:
        return f"{e['name']}: n/a" if e else "-"
    noise = e.get("noise") or {}
    nz = f", measurement noise +-{_fmt(noise.get('half_width'))}" if noise.get("half_width") else ""
    if e.get("n") == 1:
        return f"{e['name']}: {_fmt(e['estimate'])} (single run (n = 1): no spread{nz})"
    what = "range" if e["kind"] == "range" else f"{100 * level:g} % t-interval"
    return f"{e['name']}: {_fmt(e['estimate'])} ({what} {_fmt(e['low'])} to {_fmt(e['high'])}, n={e['n']}{nz})"


def _md_value(v: Any, depth: int = 0) -> list[str]:
    pad = "  " * depth
    if not isinstance(v, Mapping):
        return [f"{pad}- {_fmt(v)}"]
    out = []
    for k, x in v.items():
        if isinstance(x, Mapping):
            out += [f"{pad}- {k}:"] + _md_value(x, depth + 1)
        else:
            out.append(f"{pad}- {k}: {_fmt(x)}")
    return out


def _cell(s: Any) -> str:
    return str(s).replace("|", "/").replace("\n", " ")


def _opening_table(entries: Sequence[Mapping], level: float) -> list[str]:
    lines = ["| # | claim | verdict | main effect | premises held |", "|---|---|---|---|---|"]
    for c in entries:
        short = c["claim"].split(";")[0].split(" (")[0]
        held = sum(1 for p in c.get("premises", []) if p["holds"])
        main = effect_text((c.get("effects") or [None])[0], level)
        lines.append(f"| {c['id']} | {_cell(short)} | **{c['verdict']}** | {_cell(main)} | "
                     f"{held} / {len(c.get('premises', []))} |")
    return lines + [""]


def _entry_section(c: Mapping, level: float, heading: str) -> list[str]:
    lines = [f"### {heading} {c['id']}: {c['verdict']}", "", f"**Claim.** {c['claim']}", "", f"**Rule.** {c['rule']}",
             "", "**Premises.**", "", "| premise | holds | value | needs |", "|---|---|---|---|"]
    lines += [f"| {_cell(p['name'])} | {_fmt(p['holds'])} | {_cell(_fmt(p['value']))} | {_cell(p['rule'])} |"
              for p in c.get("premises", [])] or ["| (none) | | | |"]
    lines += ["", "**Effects.**", ""]
    lines += [f"- {effect_text(e, level)}" for e in c.get("effects", [])] or ["- (none)"]
    lines += ["", f"**Verdict.** {c['verdict']}: {c.get('reason', '')} (seeds: {', '.join(c.get('seeds', [])) or '-'})",
              "", "**Measured.**", ""]
    return lines + (_md_value(c.get("measured", {})) or ["- (nothing measured)"]) + [""]


def entry_lists(result: Mapping) -> list[tuple[str, list]]:
    """The lists of verdict entries in ``result``: ``claims`` and ``beyond`` first, then any other."""
    keys = [k for k in SECTION_TITLES if k in result]
    keys += [k for k, v in result.items() if k not in keys and isinstance(v, list) and v
             and all(isinstance(c, Mapping) and "verdict" in c for c in v)]
    return [(k, list(result[k])) for k in keys if isinstance(result[k], list)]


def to_markdown(result: Mapping, title: str = "Verdicts") -> str:
    """One opening table per list of entries (claim, verdict, main effect, premises held / total),
    then one section per entry (premises, effects, verdict with its reason, measured), then the rules."""
    level = float((result.get("rules") or {}).get("interval_level", 0.95))
    lines = [f"# {title}", "", "A verdict rests on its premises (a failed one gives inconclusive) and on its effects' "
             "whole range (n <= 3 seeds) or t-interval (n > 3).", ""]
    lists = entry_lists(result)
    for key, entries in lists:  # the counts per list: a comparison beyond the paper is no claim of it
        s = summary(entries)
        lines += [f"## {SECTION_TITLES.get(key, key)}", "", f"Reproduced: {s[REPRODUCED]}, not reproduced: "
                  f"{s[NOT_REPRODUCED]}, inconclusive: {s[INCONCLUSIVE]}.", ""] + _opening_table(entries, level)
    for key, entries in lists:
        heading = "Claim" if key == "claims" else "Entry"
        lines += [f"## {SECTION_TITLES.get(key, key)}: details", ""]
        for c in entries:
            lines += _entry_section(c, level, heading)
    lines += ["## Rules (config `claims:`)", ""] + [f"- {k}: {_fmt(v)}" for k, v in (result.get("rules") or {}).items()]
    return "\n".join(lines) + "\n"
