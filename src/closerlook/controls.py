"""Positive controls for the similarity measures (issue 24.5): can a measure do what a claim asks of it?

Two controls, each judged per measure against a threshold fixed before any activation is seen:

* **Layer identification** (Kornblith et al., ICML 2019, Table 2), the premise of claim 7 (two
  networks): for two networks of one recipe (two seeds), the cross-layer matrix
  ``M[i, j] = measure(layer i of a, layer j of b)``; layer ``i`` is *identified* when its most
  similar layer in ``b`` is layer ``i``. Reported: the share identified, the share "within one
  layer" (``|argmax - i| <= 1``), the mean margin ``M[i, i] - max_{j != i} M[i, j]`` (> 0 when
  identified), among all layers and among layers of equal width (candidates restricted to
  ``b``'s layers with ``i``'s width; mean CCA favours wide layers). Judged: the share among all
  ``L`` layers must reach the smallest ``k / L`` whose probability under chance (each layer's
  best match uniform over the ``L`` layers: ``Binomial(L, 1/L)``) is at most ``1 - level``.
  DFT-CCA is judged among layers of one shape instead (maps of different sizes share only their low
  frequencies, and fewer frequencies read higher): each row's best match among the other network's
  layers of its shape, rows with no other such layer left out, the pass mark the Poisson-binomial
  tail of the chances ``1 / group size`` at ``level``.
* **Change detection**, the premise of claims 5-6 (one network at two iterations): one chosen
  middle layer of a trained network is re-initialised and every layer is compared with the
  original on the same images. Judged: every earlier layer at least ``min_before`` (identical up
  to numerics) and the re-initialised layer below ``max_target``; later layers are reported, not
  judged (a perfect measure may rank a later layer lowest). CCA is invariant to invertible linear
  maps, so a re-initialised wide layer can keep a high CCA: that is what this control detects.

Each measure is read as the similarity table reads it: DFT-CCA on full conv maps (a store captured with
``activations.mode: full``; conv layers of different sizes at their overlapping low frequencies), the others
on spatial means, wide 2-D layers reduced under ``images_per_dim``.

Everything here is a pure function of activation stores (``{layer: (N, F) or (N, C, H, W)}``,
e.g. :func:`closerlook.activations.load_store`) except :func:`reinitialise`, which works on any
``torch.nn.Module``. The outputs follow interface A of the team contracts: ``controls.csv`` (one
row per control and measure: ``control, measure, passes, statistic, threshold, n_layers, rule``)
and ``controls.md`` (the tables claims.md includes verbatim).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .similarity import SampleSizeWarning
from .similarity_tables import _values, pooled, split_spatial

__all__ = [
    "CONTROL_DEFAULTS",
    "CONTROL_COLUMNS",
    "pooled",
    "cross_matrix",
    "identification_threshold",
    "identification_stats",
    "judged_identification",
    "poisson_binomial_threshold",
    "identification",
    "middle_layer",
    "reinitialise",
    "change_detection",
    "controls_table",
    "controls_markdown",
]

from .defaults import CONTROL_DEFAULTS  # noqa: E402 (torch-free: planning reads it)
CONTROL_COLUMNS = ["control", "measure", "passes", "statistic", "threshold", "n_layers", "rule"]


def _quiet_values(x: Any, y: Any, measures: Sequence[str], images_per_dim: float | None = None) -> dict[str, float]:
    """The similarity table's computation (wide layers reduced as ``similarity.images_per_dim`` says), so a
    control tests the measure the claims are judged on."""
    with warnings.catch_warnings():  # wide layers against few images: the value is what it is, reported
        warnings.simplefilter("ignore", SampleSizeWarning)
        return _values(x, y, measures, strict=False, images_per_dim=images_per_dim)


def _pair_values(full: tuple[Any, Any], flat: tuple[Any, Any], measures: Sequence[str],
                 images_per_dim: float | None) -> dict[str, float]:
    """Every measure of one layer pair, each on the view the similarity table gives it: DFT-CCA on the full
    maps when both layers are conv maps, and otherwise (an FC layer on either side, where DFT-CCA is CCA
    mean98 of the one shared DC frequency) on the spatial means, reduced under ``images_per_dim`` as the
    table reduces a 2-D layer; the other measures on the spatial means."""
    pooled_ms, spatial = split_spatial(measures)
    v = _quiet_values(*flat, pooled_ms, images_per_dim) if pooled_ms else {}
    if spatial:
        both_maps = np.ndim(full[0]) == 4 and np.ndim(full[1]) == 4
        v.update(_quiet_values(*(full if both_maps else flat), spatial, images_per_dim))
    return {m: v[m] for m in measures}


def cross_matrix(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any], measures: Sequence[str],
                 layers: Sequence[str] | None = None, images_per_dim: float | None = None) -> dict[str, np.ndarray]:
    """Per measure, ``M[i, j] = measure(acts_a[layers[i]], acts_b[layers[j]])`` (NaN where it cannot be computed).

    Every non-spatial measure of one layer pair shares one covariance accumulator. DFT-CCA between conv maps
    of different sizes compares their overlapping low frequencies (:func:`closerlook.similarity.dft_cca`)."""
    names = list(layers if layers is not None else [k for k in acts_a if k in acts_b])
    a, b = pooled(acts_a, names), pooled(acts_b, names)
    mats = {m: np.full((len(names), len(names)), np.nan) for m in measures}
    for i, la in enumerate(names):
        for j, lb in enumerate(names):
            v = _pair_values((acts_a[la], acts_b[lb]), (a[la], b[lb]), measures, images_per_dim)
            for m in measures:
                mats[m][i, j] = v[m]
    return mats


def identification_threshold(n_layers: int, level: float) -> int:
    """The smallest count ``k`` of identified layers with ``P(X >= k) <= 1 - level`` for
    ``X ~ Binomial(n_layers, 1 / n_layers)`` (each layer's best match uniform by chance);
    ``n_layers + 1`` when even ``n_layers`` is not enough (the control cannot pass)."""
    from scipy.stats import binom

    if n_layers < 1:
        return 1
    p = 1.0 / n_layers
    for k in range(n_layers + 1):
        if binom.sf(k - 1, n_layers, p) <= 1.0 - level:
            return k
    return n_layers + 1


def poisson_binomial_threshold(probs: Sequence[float], level: float) -> int:
    """The smallest count ``k`` with ``P(X >= k) <= 1 - level`` for ``X`` the number of successes of
    independent trials with success probabilities ``probs`` (the Poisson binomial; ``Binomial(n, p)``
    when every p is equal); ``len(probs) + 1`` when even all of them is not enough."""
    pmf = np.array([1.0])
    for p in probs:  # exact convolution: n is a network's layer count
        pmf = np.concatenate([pmf * (1.0 - p), [0.0]]) + np.concatenate([[0.0], pmf * p])
    tail = np.cumsum(pmf[::-1])[::-1]  # tail[k] = P(X >= k)
    # a relative slack for the sum's rounding: P(X >= k) equal to 1 - level counts as "at most"
    hits = np.nonzero(tail <= (1.0 - level) * (1.0 + 1e-9))[0]
    return int(hits[0]) if hits.size else len(pmf)


def _same(groups: Sequence[Any], i: int) -> np.ndarray:
    """Which layers share layer ``i``'s group (its width, its shape): the candidates of a within-group match."""
    return np.array([g == groups[i] for g in groups])


def _best(row: np.ndarray, candidates: np.ndarray) -> int:
    vals = np.where(candidates & np.isfinite(row), row, -np.inf)
    return int(np.argmax(vals)) if np.isfinite(vals).any() else -1


def identification_stats(mat: np.ndarray, widths: Sequence[int] | None = None) -> dict:
    """Layer identification from one cross-layer matrix (rows: network a, columns: network b).

    Returns ``per_layer`` (best match, identified, within one, margin; and the same among the
    layers of b with the row's width) and the summary shares. Among equal widths, only layers
    with at least one other layer of their width count (``n_equal``); their chance is the mean
    of ``1 / group size``."""
    mat = np.asarray(mat, dtype=float)
    L = mat.shape[0]
    widths = list(widths) if widths is not None else [0] * L
    per = []
    for i in range(L):
        row = mat[i]
        allc = np.ones(L, bool)
        best = _best(row, allc)
        others = np.where(np.arange(L) != i, row, np.nan)
        rival = np.nanmax(others) if np.isfinite(others).any() else np.nan
        same = _same(widths, i)
        best_w = _best(row, same) if same.sum() >= 2 else -1
        ow = np.where(same & (np.arange(L) != i), row, np.nan)
        rival_w = np.nanmax(ow) if np.isfinite(ow).any() else np.nan
        per.append({"layer_index": i, "width": int(widths[i]), "value": float(row[i]), "best": best,
                    "identified": best == i, "within_one": best >= 0 and abs(best - i) <= 1,
                    "margin": float(row[i] - rival), "group_size": int(same.sum()),
                    "best_equal_width": best_w, "identified_equal_width": best_w == i if same.sum() >= 2 else None,
                    "margin_equal_width": float(row[i] - rival_w) if same.sum() >= 2 else float("nan")})
    eq = [p for p in per if p["group_size"] >= 2]

    def mean(xs):
        xs = [x for x in xs if x is not None and np.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    return {
        "per_layer": per, "n_layers": L, "identified": sum(p["identified"] for p in per),
        "share": mean([float(p["identified"]) for p in per]),
        "within_one": mean([float(p["within_one"]) for p in per]),
        "margin": mean([p["margin"] for p in per]), "chance": 1.0 / L if L else float("nan"),
        "n_equal": len(eq), "share_equal": mean([float(p["identified_equal_width"]) for p in eq]),
        "margin_equal": mean([p["margin_equal_width"] for p in eq]),
        "chance_equal": mean([1.0 / p["group_size"] for p in eq]),
    }


def judged_identification(mat: np.ndarray, groups: Sequence[Any], level: float) -> dict:
    """Identification as the control judges it: each row's best match among the columns of its own group.

    Rows whose group holds one layer are left out (their match is forced); under chance row ``i``'s
    best match is uniform over its group's ``g_i`` layers, so the count identified is Poisson binomial
    with probabilities ``1 / g_i`` and the pass mark is its tail at ``level``. One group for all layers
    is Kornblith et al.'s test (``Binomial(L, 1/L)``)."""
    mat, groups = np.asarray(mat, dtype=float), list(groups)
    L = mat.shape[0]
    size = [int(_same(groups, i).sum()) for i in range(L)]
    rows = [i for i in range(L) if size[i] >= 2]
    hits = sum(_best(mat[i], _same(groups, i)) == i for i in rows)
    probs = [1.0 / size[i] for i in rows]
    k = poisson_binomial_threshold(probs, level)
    n = len(rows)
    return {"n": n, "identified": int(hits), "share": hits / n if n else float("nan"), "threshold_count": k,
            "threshold": k / n if n else float("nan"), "chance": float(np.mean(probs)) if probs else float("nan"),
            "passes": bool(n and hits >= k)}


def _shapes(acts: Mapping[str, Any], layers: Sequence[str]) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in np.shape(acts[k])[1:]) for k in layers]


def _widths(acts: Mapping[str, Any], layers: Sequence[str]) -> list[int]:
    return [int(np.shape(acts[k])[1]) if np.ndim(acts[k]) >= 2 else 1 for k in layers]


def identification(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any], measures: Sequence[str], *,
                   level: float = CONTROL_DEFAULTS["level"], layers: Sequence[str] | None = None,
                   images_per_dim: float | None = None) -> dict:
    """The layer-identification control for every measure: ``{"layers", "widths", "threshold_count",
    "measures": {m: {"matrix", **identification_stats}}}``."""
    names = list(layers if layers is not None else [k for k in acts_a if k in acts_b])
    mats = cross_matrix(acts_a, acts_b, measures, names, images_per_dim)
    widths, shapes = _widths(acts_a, names), _shapes(acts_a, names)
    spatial = set(split_spatial(measures)[1])
    out = {}
    for m in measures:
        # DFT-CCA between maps of different sizes compares only their shared low frequencies, and fewer
        # frequencies read higher (docs/similarity-controls.md): its values are comparable only between
        # layers of one shape, so it is judged among those; the other measures among all layers
        by_shape = m in spatial
        judged = judged_identification(mats[m], shapes if by_shape else [()] * len(names), level)
        judged["basis"] = "layers of the same shape" if by_shape else "all layers"
        out[m] = {"matrix": mats[m], **identification_stats(mats[m], widths), "judged": judged}
    return {"layers": names, "widths": widths, "shapes": shapes, "level": float(level),
            "threshold_count": identification_threshold(len(names), level), "measures": out}


def identification_rows(result: Mapping) -> list[dict]:
    """Long table (``similarity/identification.csv``): one row per measure and layer of network a."""
    names, rows = result["layers"], []
    for m, r in result["measures"].items():
        for p in r["per_layer"]:
            rows.append({"measure": m, "layer": names[p["layer_index"]], **p,
                         "best": names[p["best"]] if p["best"] >= 0 else "",
                         "best_equal_width": names[p["best_equal_width"]] if p["best_equal_width"] >= 0 else "",
                         **{f"vs_{names[j]}": float(r["matrix"][p["layer_index"], j]) for j in range(len(names))}})
    return rows


# ----------------------------------------------------------------------------- change detection
def middle_layer(layers: Sequence[str]) -> str:
    """The default re-initialised layer: the middle one, never the last (nothing after it: trivial)."""
    if len(layers) < 3:
        raise ValueError(f"change detection needs at least 3 analysis layers (before, target, after), got {len(layers)}")
    return list(layers)[(len(layers) - 1) // 2]


def _owned(modules: Sequence[str], layers: Mapping[str, str], target: str) -> list[str]:
    """Modules (registration order) that produce ``target``'s output after the previous analysis layer:
    the target module, its descendants, and the modules registered between the previous layer and it."""
    names = list(layers)
    qual = layers[target]
    k = names.index(target)
    prev = layers[names[k - 1]] if k > 0 else None
    start = 0
    if prev is not None:
        start = max(i for i, n in enumerate(modules) if n == prev or n.startswith(prev + ".")) + 1
    stop = max(i for i, n in enumerate(modules) if n == qual or n.startswith(qual + "."))
    return [n for n in modules[start:stop + 1] if n]


def reinitialise(model: Any, layers: Mapping[str, str], target: str, seed: int = 0) -> tuple[Any, list[str]]:
    """A copy of ``model`` (any ``torch.nn.Module``) with the parameters that produce analysis layer
    ``target`` re-initialised (each module's ``reset_parameters``, seeded): the modules between the
    previous analysis layer and ``target``'s module (``layers``: ``{display name: qualified module}``,
    e.g. :func:`closerlook.models.analysis_layers`). Returns the copy and the modules reset; raises
    when none of them has parameters to reset."""
    import copy

    import torch  # heavy: imported where a model is at hand

    if target not in layers:
        raise ValueError(f"change_detection.layer: no analysis layer {target!r} (layers: {', '.join(layers)})")
    if list(layers)[-1] == target:
        raise ValueError(f"change_detection.layer: {target!r} is the last layer; choose one with layers after it")
    new = copy.deepcopy(model)
    mods = dict(new.named_modules())
    reset = []
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        for name in _owned(list(mods), layers, target):
            m = mods[name]
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
                reset.append(name)
    finally:
        torch.random.set_rng_state(gen_state)
    if not reset:
        raise ValueError(f"change_detection.layer: nothing with parameters produces {target!r}; choose another layer")
    return new, reset


def change_detection(acts_orig: Mapping[str, Any], acts_changed: Mapping[str, Any], measures: Sequence[str],
                     target: str, *, min_before: float = CONTROL_DEFAULTS["min_before"],
                     max_target: float = CONTROL_DEFAULTS["max_target"], images_per_dim: float | None = None) -> dict:
    """Every layer of the original against the network with ``target`` re-initialised, per measure.

    Returns ``{"layers", "target", "target_index", "rows": [{layer, layer_index, role, measure, value}],
    "measures": {m: {"passes", "statistic", "before_min", ...}}}``; role is before / target / after."""
    names = [k for k in acts_orig if k in acts_changed]
    if target not in names:
        raise ValueError(f"change detection: target layer {target!r} not among {names}")
    t = names.index(target)
    a, b = pooled(acts_orig, names), pooled(acts_changed, names)
    rows = []
    for i, name in enumerate(names):
        v = _pair_values((acts_orig[name], acts_changed[name]), (a[name], b[name]), measures, images_per_dim)
        role = "before" if i < t else ("target" if i == t else "after")
        rows += [{"layer": name, "layer_index": i, "role": role, "measure": m, "value": float(v[m])} for m in measures]
    out = {}
    for m in measures:
        before = [r["value"] for r in rows if r["measure"] == m and r["role"] == "before"]
        tv = next(r["value"] for r in rows if r["measure"] == m and r["role"] == "target")
        bmin = float(min(before)) if before else float("nan")
        ok_before = all(np.isfinite(x) and x >= min_before for x in before)
        out[m] = {"statistic": tv, "before_min": bmin, "passes": bool(ok_before and np.isfinite(tv) and tv < max_target),
                  "before_ok": bool(ok_before), "target_ok": bool(np.isfinite(tv) and tv < max_target)}
    return {"layers": names, "target": target, "target_index": t, "rows": rows, "measures": out,
            "min_before": float(min_before), "max_target": float(max_target)}


# ----------------------------------------------------------------------------- interface A
def controls_table(ident: Mapping | None, change: Mapping | None) -> list[dict]:
    """Rows of ``controls.csv`` (interface A): ``control, measure, passes, statistic, threshold, n_layers, rule``."""
    rows = []
    if ident:
        for m, r in ident["measures"].items():
            j = r["judged"]
            rows.append({"control": "identification", "measure": m, "passes": j["passes"],
                         "statistic": j["share"], "threshold": j["threshold"], "n_layers": j["n"],
                         "rule": _identification_rule(j, ident["level"])})
    if change:
        L = len(change["layers"])
        for m, r in change["measures"].items():
            rows.append({"control": "change_detection", "measure": m, "passes": r["passes"],
                         "statistic": r["statistic"], "threshold": change["max_target"], "n_layers": L,
                         "rule": (f"{change['target']} re-initialised: its value < {change['max_target']:g} and "
                                  f"every earlier layer >= {change['min_before']:g} (earliest {r['before_min']:.4g}); "
                                  "later layers reported, not judged")})
    return rows


def _identification_rule(j: Mapping, level: float) -> str:
    if j["basis"] == "all layers":
        n, k = j["n"], j["threshold_count"]
        return (f"share of the {n} layers whose most similar layer in the other seed is the corresponding one "
                f">= {k}/{n}: above chance 1/{n} at one-sided binomial level {level:g}")
    return (f"share of the {j['n']} layers that share their shape with another whose most similar layer of "
            f"that shape in the other seed is the corresponding one >= {j['threshold_count']}/{j['n']}: above "
            f"chance (mean {j['chance']:.2f}) at one-sided Poisson-binomial level {level:g}")


def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def controls_markdown(ident: Mapping | None, change: Mapping | None) -> str:
    """The controls' markdown tables (claims.md includes them verbatim)."""
    out = []
    if ident:
        L, k, names = len(ident["layers"]), ident["threshold_count"], ident["layers"]
        out += [f"#### Layer identification ({L} layers, level {ident['level']:g}; judged among all layers, "
                f"pass >= {k}/{L}, chance 1/{L}; DFT-CCA among layers of the same shape)", "",
                "| measure | identified | within one layer | mean margin | equal width: identified | equal width: chance "
                "| equal width: mean margin | judged among | judged: identified (pass) | passes |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in ident["measures"].items():
            eq = f"{_f(r['share_equal'], 2)} of {r['n_equal']}" if r["n_equal"] else "n/a (no shared widths)"
            j = r["judged"]
            out.append(f"| {m} | {r['identified']}/{L} ({_f(r['share'], 2)}) | {_f(r['within_one'], 2)} | {_f(r['margin'])} "
                       f"| {eq} | {_f(r['chance_equal'], 2)} | {_f(r['margin_equal'])} | {j['basis']} "
                       f"| {j['identified']}/{j['n']} (>= {j['threshold_count']}) | {'yes' if j['passes'] else 'no'} |")
        for m, r in ident["measures"].items():
            out += ["", f"Cross-layer matrix, {m} (rows: seed a, columns: seed b; best per row in bold):", "",
                    "| a \\ b | " + " | ".join(names) + " |", "|---" * (L + 1) + "|"]
            for p in r["per_layer"]:
                cells = [(f"**{_f(v, 2)}**" if j == p["best"] else _f(v, 2)) for j, v in enumerate(r["matrix"][p["layer_index"]])]
                out.append(f"| {names[p['layer_index']]} ({p['width']}) | " + " | ".join(cells) + " |")
        out.append("")
    if change:
        names, ms = change["layers"], list(change["measures"])
        out += [f"#### Change detection ({change['target']} re-initialised; pass: earlier layers >= "
                f"{change['min_before']:g}, {change['target']} < {change['max_target']:g}; later layers not judged)", "",
                "| layer | role | " + " | ".join(ms) + " |", "|---|---|" + "---|" * len(ms)]
        for i, name in enumerate(names):
            vals = {r["measure"]: r["value"] for r in change["rows"] if r["layer_index"] == i}
            role = next(r["role"] for r in change["rows"] if r["layer_index"] == i)
            out.append(f"| {name} | {role} | " + " | ".join(_f(vals[m], 4) for m in ms) + " |")
        out.append("| **passes** | | " + " | ".join("yes" if change["measures"][m]["passes"] else "no" for m in ms) + " |")
        out.append("")
    return "\n".join(out) if out else "No positive control configured.\n"
