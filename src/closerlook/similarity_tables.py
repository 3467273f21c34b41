"""The workflow's comparison tables over :mod:`closerlook.similarity`'s measures: every measure of a layer
pair from one accumulator, shuffle chance, subsamples of the probe set, the per-layer rows of the
similarity table (docs/DESIGN.md) with their permutation p-value and calibrated value.

Split from :mod:`closerlook.similarity` (which still resolves these names) so the measures and the
accumulator stand apart from the tables built on them."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .similarity import (_STAT_MEASURES, CHANCE_SHUFFLES, CovarianceAccumulator, SampleSizeWarning, _is_torch,
                         _torch, measure)
from .similarity_dft import dft_cca_rows
from .verdicts import calibrated, permutation_p

__all__ = ["chance_baseline", "similarity_matrix", "subsample_indices", "layer_table", "layer_rows"]


def _shuffled(y: Any, rng: np.random.Generator) -> Any:
    perm = rng.permutation(y.shape[0])
    if _is_torch(y):
        return y[_torch().as_tensor(perm, device=y.device)]
    return np.asarray(y)[perm]


def chance_baseline(measure_: str | Callable, x: Any, y: Any, n_shuffles: int = CHANCE_SHUFFLES,
                    seed: int = 0) -> float:
    """The measure after shuffling ``y``'s datapoints (mean over ``n_shuffles``
    seeded permutations): the value two unrelated representations of these
    sizes get by chance."""
    rng = np.random.default_rng(seed)
    vals = [measure(measure_, x, _shuffled(y, rng)) for _ in range(int(n_shuffles))]
    return float(np.mean(vals))


def similarity_matrix(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any],
                      measure_: str | Callable = "cca_mean98", *,
                      layers_a: Sequence[str] | None = None,
                      layers_b: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """All layer pairs: ``M[i, j] = measure(acts_a[layers_a[i]], acts_b[layers_b[j]])``.

    Stores map layer name -> array (e.g. :func:`closerlook.activations.load_store`).
    Returns ``(M, layers_a, layers_b)``.
    """
    la = list(layers_a if layers_a is not None else acts_a)
    lb = list(layers_b if layers_b is not None else acts_b)
    mat = np.full((len(la), len(lb)), np.nan)
    for i, a in enumerate(la):
        for j, b in enumerate(lb):
            mat[i, j] = measure(measure_, acts_a[a], acts_b[b])
    return mat, la, lb


# the CCA family: inverts each side's covariance, so it needs several images per compared dimension
# (chance CCA nears 1 as images / neurons nears 1); linear CKA inverts nothing and is computed in full.
# DFT-CCA on a 2-D layer is CCA mean98 of its one (DC) frequency: reduced alike (conv maps never are).
REDUCIBLE = ("cca_mean", "cca_mean98", "cca_mean_squared", "svcca", "pwcca", "dft_cca_mean98")


def reduced_dims(n: int, width: int, images_per_dim: float | None) -> int | None:
    """The directions a ``width``-wide layer is compared in when ``n`` images give fewer than
    ``images_per_dim`` per dimension: ``n // images_per_dim`` (SVCCA's reduction with a fixed k);
    None when the layer is narrow enough or no reduction is configured."""
    if not images_per_dim or n >= float(images_per_dim) * width:
        return None
    return max(1, int(n // float(images_per_dim)))


def top_directions(x: Any, k: int) -> np.ndarray:
    """``x (n, w)`` centred and projected on its top-``k`` principal directions, float64 (``U_k S_k``).

    The eigenproblem is solved on the smaller of the two Gram matrices (n x n or w x w), so a
    4,096-wide layer seen on 2,500 images costs a 2,500-square eigendecomposition."""
    a = np.asarray(x.detach().cpu() if _is_torch(x) else x, dtype=np.float64)
    a = a - a.mean(axis=0)
    if a.shape[0] <= a.shape[1]:
        lam, u = np.linalg.eigh(a @ a.T)               # a a^T = U S^2 U^T
        top = np.argsort(lam)[::-1][:k]
        return u[:, top] * np.sqrt(np.clip(lam[top], 0.0, None))
    lam, v = np.linalg.eigh(a.T @ a)                   # a^T a = V S^2 V^T; a V = U S
    return a @ v[:, np.argsort(lam)[::-1][:k]]


def _width(x: Any) -> int:
    return int(x.shape[1]) if np.ndim(x) >= 2 else 1


def _pair_k(x: Any, y: Any, images_per_dim: float | None, n: int | None = None) -> int | None:
    """:func:`reduced_dims` of a pair of 2-D layers seen on ``n`` images (default: their rows); None for others."""
    if not (np.ndim(x) == np.ndim(y) == 2):
        return None
    return reduced_dims(x.shape[0] if n is None else n, max(_width(x), _width(y)), images_per_dim)


def _values(x: Any, y: Any, measures: Sequence[str], strict: bool = True,
            images_per_dim: float | None = None, reduced: tuple | None = None) -> dict[str, float]:
    """Every measure of one pair of arrays; statistics-based measures share one accumulator.

    ``strict=False`` (subsamples): a measure that cannot be computed at this sample size (CCA with
    fewer datapoints than neurons) gives NaN instead of raising. ``images_per_dim``: the CCA family
    (:data:`REDUCIBLE`) on a 2-D layer too wide for the images is computed in each side's top
    :func:`reduced_dims` directions (``reduced``: those projections, when the caller has them already)."""
    k = _pair_k(x, y, images_per_dim)
    red = [m for m in measures if m in REDUCIBLE] if k else []
    if red:
        xr, yr = reduced if reduced is not None else (top_directions(x, k), top_directions(y, k))
    out = _values(xr, yr, red, strict) if red else {}
    stat = [m for m in measures if m in _STAT_MEASURES and m not in red and np.ndim(x) == 2 and np.ndim(y) == 2]
    acc = CovarianceAccumulator.from_arrays(x, y) if stat else None
    for m in measures:
        if m in red:
            continue
        try:
            out[m] = float(_STAT_MEASURES[m](acc)) if m in stat else measure(m, x, y)
        except ValueError:
            if strict:
                raise
            out[m] = float("nan")
    return {m: out[m] for m in measures}


def _take(a: Any, idx: np.ndarray) -> Any:
    return a[_torch().as_tensor(idx, device=a.device)] if _is_torch(a) else np.asarray(a)[idx]


def _chance_stats(x: Any, y: Any, measures: Sequence[str], n_shuffles: int, size: int | None,
                  rng: np.random.Generator, images_per_dim: float | None = None) -> dict[str, np.ndarray]:
    """Per measure, the K values after shuffling ``y``'s datapoints (on a fresh random ``size``-subset each time).

    On the whole set a wide layer is reduced once: shuffling rows commutes with centring and projecting, so
    the shuffled side's projection is the projection's rows shuffled (a subset is reduced afresh each time)."""
    n = x.shape[0]
    draws = []                                  # drawn first, in the same order as they are used below
    for _ in range(int(n_shuffles)):
        sub = np.sort(rng.choice(n, size, replace=False)) if size else np.arange(n)
        draws.append((sub, rng.permutation(sub.size)))
    fast = _dft_shuffles(x, y, measures, draws, size, images_per_dim)
    if fast is not None:
        return fast
    k = None if size else _pair_k(x, y, images_per_dim)
    base = (top_directions(x, k), top_directions(y, k)) if k and set(measures) & set(REDUCIBLE) else None
    vals: dict[str, list] = {m: [] for m in measures}
    for sub, perm in draws:
        red = None if base is None else (base[0], base[1][perm])
        with warnings.catch_warnings():  # the inflation SampleSizeWarning names is what this measures
            warnings.simplefilter("ignore", SampleSizeWarning)
            v = _values(_take(x, sub), _take(y, sub[perm]), measures, strict=size is None,
                        images_per_dim=images_per_dim, reduced=red)
        for m in measures:
            vals[m].append(v[m])
    return {m: np.asarray(v, dtype=float) for m, v in vals.items()}


def _dft_shuffles(x: Any, y: Any, measures: Sequence[str], draws: list, size: int | None,
                  images_per_dim: float | None) -> dict[str, np.ndarray] | None:
    """DFT-CCA's shuffles from each side's spectra computed once (:func:`closerlook.similarity_dft.dft_cca_rows`;
    equal to the per-shuffle calls to ~1e-12), or None where that path does not apply (other measures, a reduced
    2-D layer, torch tensors, spectra too large for memory, a subset too small for the layer)."""
    if list(measures) != ["dft_cca_mean98"] or _pair_k(x, y, images_per_dim, size) is not None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SampleSizeWarning)
            vals = dft_cca_rows(x, y, [(sub, sub[perm]) for sub, perm in draws])
    except ValueError:            # fewer images than neurons: the per-shuffle path gives its NaN or error
        return None
    return None if vals is None else {"dft_cca_mean98": np.asarray(vals, dtype=float)}


def subsample_indices(n: int, count: int, size: int | None, seed: int = 0) -> list[np.ndarray]:
    """``count`` subsets of ``size`` of ``range(n)`` (default n // 2), each drawn WITHOUT replacement
    (a bootstrap's duplicated images inflate CCA); subset b depends only on (n, size, seed, b), so every
    layer and every comparison of one probe set sees the same images in subsample b."""
    size = int(size or n // 2)
    if not 2 <= size <= n:
        raise ValueError(f"subsamples.size: {size} images, need 2 <= size <= the probe set's {n}")
    return [np.sort(np.random.default_rng([seed, n, size, b]).choice(n, size, replace=False)) for b in range(int(count))]


def _row(name, idx, m, sample, n_img, dims, value, shuffles, exclude_within) -> dict:
    finite = shuffles[np.isfinite(shuffles)]
    ch = float(np.mean(finite)) if finite.size else float("nan")
    return {"layer": name, "layer_index": idx, "measure": m, "sample": sample, "n_images": int(n_img),
            "dims": int(dims), "value": float(value), "chance": ch,
            "chance_low": float(finite.min()) if finite.size else float("nan"),
            "chance_high": float(finite.max()) if finite.size else float("nan"),
            "p_value": permutation_p(value, finite) if finite.size and np.isfinite(value) else float("nan"),
            "calibrated": calibrated(value, ch, exclude_within)}


def layer_table(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any],
                measures: Sequence[str] = ("cca_mean98",), *, layers: Sequence[str] | None = None,
                n_shuffles: int = CHANCE_SHUFFLES, seed: int = 0, chance: bool = True,
                subsamples: Mapping | None = None, exclude_within: float = 0.0,
                images_per_dim: float | None = None) -> list[dict]:
    """Rows of the similarity table of docs/DESIGN.md for the layers both stores share (same name),
    in ``acts_a``'s order: per layer and measure, ``sample = "all"`` (the whole probe set) and, with
    ``subsamples = {"count": B, "size": m}``, ``sample = "s0".."s<B-1>"`` (m images each, drawn without
    replacement, :func:`subsample_indices`). Each row: ``value``; ``chance`` = the mean over
    ``n_shuffles`` shuffles of one side's datapoints at that row's sample size (``chance_low`` /
    ``chance_high``: their min / max); ``p_value`` = the permutation p-value; ``calibrated`` =
    ``(value - chance) / (1 - chance)`` (NaN when the chance level is within ``exclude_within`` of 1);
    ``dims`` = the dimensions each side was compared in: the layer's width, or, for the CCA family on a
    layer with fewer than ``images_per_dim`` images per neuron at that sample size, its top
    ``n_images // images_per_dim`` directions (:func:`reduced_dims`)."""
    names = list(layers if layers is not None else [k for k in acts_a if k in acts_b])
    sub = dict(subsamples or {})
    rows = []
    for idx, name in enumerate(names):
        x, y = acts_a[name], acts_b[name]
        n, ipd = x.shape[0], images_per_dim

        def dims(m: str, n_img: int) -> int:
            k = _pair_k(x, y, ipd, n_img) if m in REDUCIBLE else None
            return k or min(_width(x), _width(y))

        obs = _values(x, y, measures, images_per_dim=ipd)
        rng = np.random.default_rng(seed)
        none = {m: np.array([]) for m in measures}
        shuf = _chance_stats(x, y, measures, n_shuffles, None, rng, ipd) if chance else none
        rows += [_row(name, idx, m, "all", n, dims(m, n), obs[m], shuf[m], exclude_within) for m in measures]
        if not int(sub.get("count") or 0):
            continue
        subs = subsample_indices(n, sub["count"], sub.get("size"), seed)
        shuf_m = _chance_stats(x, y, measures, n_shuffles, subs[0].size, rng, ipd) if chance else none
        for b, ix in enumerate(subs):
            v = _values(_take(x, ix), _take(y, ix), measures, strict=False, images_per_dim=ipd)
            rows += [_row(name, idx, m, f"s{b}", ix.size, dims(m, ix.size), v[m], shuf_m[m], exclude_within)
                     for m in measures]
    return rows


_SPATIAL_MEASURES = ("dft_cca_mean98",)


def split_spatial(measures: Sequence[str]) -> tuple[list[str], list[str]]:
    """(measures read on spatially averaged maps, measures read on full conv maps: DFT-CCA)."""
    return [m for m in measures if m not in _SPATIAL_MEASURES], [m for m in measures if m in _SPATIAL_MEASURES]


def pooled(acts: Mapping[str, Any], layers: Sequence[str] | None = None) -> dict[str, Any]:
    """2-D views of a store: conv maps ``(N, C, H, W)`` averaged over space (what the non-spatial measures read)."""
    names = list(layers if layers is not None else acts)
    return {k: (np.asarray(acts[k], dtype=np.float64).mean(axis=(2, 3)) if np.ndim(acts[k]) == 4 else acts[k])
            for k in names}


def layer_rows(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any], measures: Sequence[str], *,
               chance: bool = True, n_shuffles: int = CHANCE_SHUFFLES, subsamples: Mapping | None = None,
               seed: int = 0, images_per_dim: float | None = None) -> list[dict]:
    """:func:`layer_table` for two activation stores' layers (those both have, in ``acts_a``'s order).

    Conv activations kept in full ``(N, C, H, W)`` go as they are to the spatial
    measures (DFT-CCA) and spatially averaged to the others.
    """
    layers = [k for k in acts_a if k in acts_b]
    flat, spatial = split_spatial(measures)
    kw = dict(layers=layers, chance=chance, n_shuffles=n_shuffles, subsamples=subsamples, seed=seed,
              images_per_dim=images_per_dim)
    rows = []
    if flat:
        rows += layer_table(pooled(acts_a, layers), pooled(acts_b, layers), flat, **kw)
    if spatial:
        rows += layer_table(acts_a, acts_b, spatial, **kw)
    return rows
