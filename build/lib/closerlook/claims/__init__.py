"""The paper's seven claims as checks: premises first, then effects with their spread, then verdicts.

:func:`evaluate` ``(layouts, rules)`` reads the same tables as the figures (``layouts`` =
``{figure name: layout}`` from :func:`closerlook.config.figure_layout`, plus the claims' own inputs
under ``"controls"``, ``"controls_md"`` and ``"fidelity"`` when configured:
:func:`closerlook.config.claims_inputs`) and returns::

    {"rules": {...}, "summary": {"reproduced": n, "not reproduced": n, "inconclusive": n},
     "claims": [entry, ...], "beyond": [entry, ...]}

with every entry in the contract of :mod:`closerlook.verdicts`. The opening table has one row per
effect: ``1a``/``1b``, ``2a``/``2b``, ``3``, ``4``, ``5a``/``5b``, ``6``, ``7`` (a claim's substance is
an effect, never a premise). Modules: :mod:`._common` (shared premises, barriers, control, "fit
converged"), :mod:`.barriers` (1-2), :mod:`.plane` (3), :mod:`.robust` (4), :mod:`._similarity` and
:mod:`.simclaims` (5-7).

Premises (a failed one gives ``inconclusive``; thresholds in ``config["claims"]``, defaults
:data:`closerlook.verdicts.DEFAULT_RULES`):

- trained: not diverged, test accuracy > 1/num_classes + ``min_acc_above_chance`` and, where
  ``train_loss_max`` is set, final train loss <= it;
- 1a-2a: endpoints trained, line evaluated at >= ``line_min_points`` t values; 1a also: the SGDR
  restart between the iterates raised the training loss by >= ``restart_min_rise_nats``;
- 1b-2b: only pairs where (a) holds; "fit converged" (interface C: ``stopped`` in the curve's
  metrics.csv) unless the curve already removed the barrier; a NEGATIVE outcome also needs the two-seed
  positive control (its curve keeps <= ``curve_excess_frac`` of its barrier and < ``barrier_min_nats``);
- 3: every projected iterate within ``plane_max_rel_distance`` x ||w2 - w1|| of the plane;
- 4: endpoints trained, fit converged (or barrier removed); negative outcome: the control curve's
  accuracy drop <= ``robust_max_drop_points``;
- 5b (only where 5a holds): the warmup run above chance + ``warmup_min_acc_above_chance`` at the
  compared checkpoint, the no-warmup run not diverged; 5b, 6 (CCA side), 7: positive controls by
  interface A's gating rule (change detection for 5-6, identification for 7); 7: distillation took
  effect (interface B);
- 5-7: chance levels computed; deep and shallow layers left (those excluded are listed, and why).

Effects: over seeds the range (n <= 3; n = 1 says "single run (n = 1): no spread") or a
t-interval (n > 3); accuracy effects widened by ``acc_noise_z`` x their sampling SE (a range that
clears its threshold only before widening: inconclusive "within measurement noise").
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .. import verdicts as V
from ..io import atomic_write_json, atomic_write_text
from ..verdicts import DEFAULT_RULES, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict  # noqa: F401 (API)
from ._common import interp_barrier  # noqa: F401 (API)
from .barriers import barrier_claims
from .plane import bilinear, claim3  # noqa: F401 (API)
from .robust import claim4
from .simclaims import claim5, claim6, claim7

CLAIMS = {
    "1a": "Between SGDR iterates (either side of a restart) the straight line shows a loss barrier.",
    "1b": "Where the SGDR line shows a barrier, the trained curve removes it (max loss on the curve close to the "
          "endpoints').",
    "2a": "Between step-decay SGD iterates around a decay the straight line shows a loss barrier as well.",
    "2b": "Where the step-decay line shows a barrier, the trained curve removes it too; so a straight-line barrier is "
          "no evidence that SGDR found separate minima.",
    "3": "On the Fig. 3 plane the SGDR trajectory crosses high-loss regions (the plane's loss at the iterates' "
         "projections above the curve's) and ends in the connected basin (stated, not judged: the last iterate is "
         "the curve's end point, an anchor of the plane).",
    "4": "Curves between models trained with different recipes keep accuracy high along their whole length "
         "(six curves per instance: one instance, n = 1).",
    "5a": "Large-batch training without warmup ends less accurate than with warmup.",
    "5b": "Without warmup the deep/FC layers change most in the first iterations (lowest CCA to initialisation); "
          "shallow layers alike across runs.",
    "6": "Freezing the FC layers early, without warmup, gets close to the warmup run.",
    "7": "A distilled student is more similar to the teacher than an independent one mainly in the deeper layers.",
}
INPUT_KEYS = ("controls", "controls_md", "fidelity", "fig3_planes")  # the claims' own inputs in ``layouts`` (not figures)


def evaluate(layouts: Mapping[str, Mapping], rules: Mapping | None) -> dict:
    """Evaluate the claims; see the module docstring for the premises, rules and the result format."""
    r = V.rules_with_defaults(rules)
    layouts = layouts or {}
    inputs = {k: layouts.get(k) for k in INPUT_KEYS if layouts.get(k)}
    f2 = layouts.get("fig2_sgdr", {}) or {}
    results = [
        *barrier_claims(1, f2.get("sgdr_pairs", {}), f2, "SGDR", r, CLAIMS),
        *barrier_claims(2, f2.get("sgd_pairs", {}), f2, "SGD", r, CLAIMS),
        claim3(layouts.get("fig3_plane", {}) or {}, r, CLAIMS["3"], layouts.get("fig3_planes")),
        claim4(layouts.get("fig1_robustness", {}) or {}, r, f2.get("reference_pairs"), CLAIMS["4"]),
        *claim5(layouts.get("fig4_warmup", {}) or {}, r, inputs, CLAIMS),
        claim6(layouts.get("fig5_freeze", {}) or {}, r, inputs, CLAIMS["6"]),
        claim7(layouts.get("fig6_distill", {}) or {}, r, inputs, CLAIMS["7"]),
    ]
    out = {"rules": r, "summary": V.summary(results), "claims": results}  # summary: the paper's claims only
    md = inputs.get("controls_md")
    if md:
        try:
            out["controls_md"] = Path(md).read_text()
        except OSError as e:
            out["controls_md"] = f"(controls.md unreadable: {e})"
    if layouts.get("fig9_ensembles"):
        from ..ensembles import evaluate_beyond  # only here: claims alone stay free of torch

        out["beyond"] = evaluate_beyond(layouts["fig9_ensembles"], r)
    from ..explanations import evaluate_beyond as explain  # fidelity, warmup sharpness (issue 27)

    if extra := explain(layouts, rules, results):
        out.setdefault("beyond", []).extend(extra)
    return out


def to_markdown(result: Mapping) -> str:
    """``claims.md``: the opening table(s) (every list of entries in ``result``: ``claims``, ``beyond``, ...),
    the positive controls' tables (verbatim from controls.md, when configured), one section per entry, the
    rules (:func:`closerlook.verdicts.to_markdown`)."""
    md = V.to_markdown(result, "Claims of Gotmare et al. (ICLR 2019): verdicts")
    ctl = result.get("controls_md")
    if ctl:
        head, sep, tail = md.partition("## The paper's claims: details")
        md = head + "## Positive controls of the similarity measures\n\n" + str(ctl).strip() + "\n\n" + sep + tail
    return md


def write_reports(result: Mapping, json_path: str | Path, md_path: str | Path) -> None:
    """Write ``claims.json`` (the dict) and ``claims.md`` (:func:`to_markdown`), atomically."""
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, to_markdown(result))
