"""The older lenses on the same checkpoints: filter-normalised random slices and trajectory views.

Any ``nn.Module``; a point is a flat parameter vector (:class:`~closerlook.curves.Layout`
order) evaluated by :func:`closerlook.landscape.surface_metrics` (one BN recompute on
unaugmented training data + one evaluation per point, eval mode, no model rebuilds).

* **Filter-normalised directions** (Li et al. 2018, "Visualizing the loss landscape of
  neural nets"): a Gaussian direction, each filter rescaled to the norm of the matching
  filter of the weights; a filter is one output slice of a weight with two or more
  dimensions (an output channel of a conv kernel, an output neuron (row) of a Linear
  weight). Parameters with one dimension or none - every bias and the BN weights and
  biases - get a ZERO direction, as Li et al. do (their ``ignore='biasbn'``): the slice
  moves the weights only. Direction ``i`` of a slice is drawn from its own CPU generator
  seeded ``seed + i`` (the same numbers on every device); the 1-D slice uses direction 0,
  so it is the ``v = 0`` line of the 2-D slice.
* **Trajectory PCA** through the ``N x N`` Gram matrix of the checkpoints centred on the
  final one (Li et al.'s origin), computed exactly and streamed: checkpoints are loaded in
  chunks that fit ``memory_mb`` (never an ``N x P`` matrix). ``center="mean"`` also removes
  the mean of the centred rows, as Li et al.'s call of scikit-learn's PCA does; the
  components are then the usual PCA axes, the origin of the plot stays the final point.
* **Variance share of a view**: the fraction of the trajectory's (centred) squared
  distance that lies in the span of a view's directions (the straight line, a random
  slice, the PCA plane, the Fig. 3 curve plane) - how much of the trajectory each view keeps.
* **t-SNE** (scikit-learn, exact method) of the same checkpoints from the Gram's squared
  distances (no feature matrix), when ``perplexity < N / 3``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .curves import Layout
from .io import ConfigError
from .landscape import EVAL_BATCH_SIZE, surface_metrics
from .tables import GRID_COLUMNS, SLICE_COLUMNS
from .defaults import LENS_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)
from .defaults import LENS_CENTERS as CENTERS  # (torch-free owner)



# --------------------------------------------------------------------------- filter-normalised slices


def filter_normalised_direction(module: nn.Module, state: Mapping[str, torch.Tensor], seed: int) -> torch.Tensor:
    """A random direction (flat, float64, on ``state``'s device) normalised filter by filter to ``state``.

    Every parameter with >= 2 dimensions: N(0, 1) entries, each output slice ``d[k]`` rescaled
    to ``||w[k]|| / ||d[k]||``. Parameters with < 2 dimensions (biases, BN weight and bias): zero.
    The Gaussian numbers come from a CPU generator seeded ``seed`` for every parameter in order
    (zeroed ones included), so a direction depends only on the seed and the shapes.
    """
    layout = Layout(module)
    layout.check(state, "state")
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for k in layout.param_keys:
        w = state[k].detach().to(device="cpu", dtype=torch.float64)
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        if w.dim() < 2:
            parts.append(torch.zeros(w.numel(), dtype=torch.float64))
            continue
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        parts.append((d.reshape(d.shape[0], -1) * (wn / dn.clamp_min(1e-300))[:, None]).reshape(-1))
    device = next((v.device for v in state.values()), torch.device("cpu"))
    return torch.cat(parts).to(device) if parts else torch.zeros(0, dtype=torch.float64)


def _axis(n: int, span: float) -> list[float]:
    if int(n) < 2:
        raise ConfigError(f"lenses: need at least 2 points per axis, got {n}")
    return [float(a) for a in np.linspace(-span, span, int(n))]


def random_slices(module: nn.Module, state: Mapping[str, torch.Tensor], train_loader: Any, test_loader: Any = None,
                  *, seed: int = LENS_DEFAULTS["seed"], points: int = LENS_DEFAULTS["points"],
                  grid: Sequence[int] = LENS_DEFAULTS["grid"], span: float = LENS_DEFAULTS["span"],
                  bn_batches: int | None = None, log: Callable[[str], None] | None = None):
    """The 1-D and 2-D filter-normalised slices around ``state``: ``(slice1d_df, slice2d_df)``.

    1-D: ``state + a d0`` for ``points`` values of a in [-span, span] (columns ``alpha`` + metrics);
    2-D: ``state + u d0 + v d1`` over a ``grid`` (columns ``u, v`` + metrics, like the plane's grid).
    """
    layout = Layout(module)
    layout.check(state, "state")
    origin = layout.flat_params(state, dtype=torch.float64)
    d0, d1 = (filter_normalised_direction(module, state, seed + i) for i in (0, 1))
    kw = dict(bn_batches=bn_batches, log=log)
    alphas = _axis(points, span)
    one = surface_metrics(module, state, origin, [d0], [(a,) for a in alphas], train_loader, test_loader, **kw)
    nu, nv = (grid, grid) if isinstance(grid, int) else grid
    coords = [(u, v) for v in _axis(nv, span) for u in _axis(nu, span)]
    two = surface_metrics(module, state, origin, [d0, d1], coords, train_loader, test_loader, **kw)
    df1 = pd.DataFrame([{"alpha": a, **m} for a, m in zip(alphas, one)], columns=SLICE_COLUMNS)
    df2 = pd.DataFrame([{"u": u, "v": v, **m} for (u, v), m in zip(coords, two)], columns=GRID_COLUMNS)
    return df1, df2


# --------------------------------------------------------------------------- trajectory (streamed Gram)


Loader = Callable[[int], torch.Tensor]  # i -> the flat parameter vector of checkpoint i


def _chunk_size(n_params: int, memory_mb: float) -> int:
    """Checkpoints held at once (plus one streamed): at least one."""
    return max(1, int(memory_mb * 2**20 // (8 * max(n_params, 1))) - 1)


def trajectory_gram(load: Loader, n: int, origin: torch.Tensor, memory_mb: float = LENS_DEFAULTS["memory_mb"]) -> np.ndarray:
    """``G[i, j] = <w_i - origin, w_j - origin>`` (float64) without holding all ``n`` vectors.

    A chunk of checkpoints is held (as many as ``memory_mb`` allows); every later checkpoint is
    streamed past it one at a time. ``n + n^2 / (2 chunk)`` loads in all; memory ``(chunk + 1) P``.
    """
    o = origin.to(torch.float64)
    c = _chunk_size(o.numel(), memory_mb)
    G = np.zeros((n, n), dtype=np.float64)
    A = torch.empty(min(c, n), o.numel(), dtype=torch.float64, device=o.device)
    for lo in range(0, n, c):
        idx = list(range(lo, min(lo + c, n)))
        for r, i in enumerate(idx):  # filled row by row: no second copy of the chunk (torch.stack would make one)
            A[r].copy_(load(i))
            A[r].sub_(o)
        Ak = A[: len(idx)]
        G[np.ix_(idx, idx)] = (Ak @ Ak.T).cpu().numpy()
        for j in range(idx[-1] + 1, n):
            col = (Ak @ (load(j).to(o) - o)).cpu().numpy()  # never in place: load may return the caller's tensor
            G[idx, j] = col
            G[j, idx] = col
    del A
    return G


@dataclass
class TrajectoryPCA:
    """PCA of a trajectory from its Gram matrix; every array is float64 numpy."""

    gram: np.ndarray          # N x N, <w_i - origin, w_j - origin>
    center: str               # "final" | "mean"
    eigenvalues: np.ndarray   # descending, all N (squared distance kept by each axis)
    vectors: np.ndarray       # N x N, column k = the coefficients of axis k over the centred rows
    coords: np.ndarray        # N x N, row i = checkpoint i's coordinates (relative to the origin) on each axis

    @property
    def explained(self) -> np.ndarray:
        total = float(np.clip(self.eigenvalues, 0, None).sum())
        return np.clip(self.eigenvalues, 0, None) / total if total > 0 else np.full_like(self.eigenvalues, np.nan)

    @property
    def total(self) -> float:
        return float(np.trace(_centred(self.gram, self.center)))


def _centering(n: int, center: str) -> np.ndarray:
    if center not in CENTERS:
        raise ConfigError(f"lenses.center: {center!r} is not one of {', '.join(CENTERS)}")
    return np.eye(n) if center == "final" else np.eye(n) - np.full((n, n), 1.0 / n)


def _centred(G: np.ndarray, center: str) -> np.ndarray:
    J = _centering(G.shape[0], center)
    return J @ G @ J


def pca_from_gram(G: np.ndarray, center: str = LENS_DEFAULTS["center"]) -> TrajectoryPCA:
    """The exact PCA of the rows ``x_i = w_i - origin`` (``center="mean"``: of ``x_i - mean x``) from ``G``.

    ``Gc = J G J = V diag(lam) V^T``; axis k in weight space is ``X^T J v_k / sqrt(lam_k)`` (unit norm),
    checkpoint i's coordinate on it ``(G J v_k)_i / sqrt(lam_k)`` (relative to the origin).
    """
    G = np.asarray(G, dtype=np.float64)
    J = _centering(G.shape[0], center)
    lam, V = np.linalg.eigh(J @ G @ J)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    scale = np.where(lam > lam.max(initial=0.0) * 1e-12, 1.0 / np.sqrt(np.clip(lam, 1e-300, None)), 0.0)
    coords = (G @ J @ V) * scale[None, :]
    return TrajectoryPCA(gram=G, center=center, eigenvalues=lam, vectors=V, coords=coords)


def pca_components(load: Loader, n: int, origin: torch.Tensor, pca: TrajectoryPCA, k: int = 2) -> torch.Tensor:
    """The top-``k`` PCA axes in weight space (``k x P``, float64, unit norm), one streamed pass."""
    o = origin.to(torch.float64)
    J = _centering(n, pca.center)
    coef = torch.from_numpy((J @ pca.vectors[:, :k]) / np.sqrt(np.clip(pca.eigenvalues[:k], 1e-300, None))[None, :])
    out = torch.zeros(k, o.numel(), dtype=torch.float64, device=o.device)
    for i in range(n):
        out.addr_(coef[i].to(o), load(i).to(o) - o)
    return out


def variance_shares(load: Loader, n: int, origin: torch.Tensor, views: Mapping[str, Sequence[torch.Tensor]],
                    total: float, center: str = LENS_DEFAULTS["center"]) -> dict[str, float]:
    """Per view: the share of the trajectory's centred squared distance in the span of its directions.

    ``share = ||Xc Q||_F^2 / ||Xc||_F^2`` with ``Q`` an orthonormal basis of the view's directions,
    computed from the dot products ``X D`` (one streamed pass) and ``D^T D`` (Cholesky: ``Q = D R^-1``).
    ``total``: ``||Xc||_F^2`` (:attr:`TrajectoryPCA.total`, the trace of the centred Gram).
    """
    o = origin.to(torch.float64)
    names = list(views)
    dirs = [d.to(o) for v in names for d in views[v]]
    if not dirs:
        return {}
    D = torch.stack(dirs)
    M = np.stack([(D @ (load(i).to(o) - o)).cpu().numpy() for i in range(n)])
    Mc = _centering(n, center) @ M
    out, at = {}, 0
    for v in names:
        k = len(views[v])
        Dv = D[at:at + k]
        R = np.linalg.cholesky((Dv @ Dv.T).cpu().numpy()).T  # D D^T = R^T R, Q^T x = R^-T D x
        proj = np.linalg.solve(R.T, Mc[:, at:at + k].T)
        out[v] = float((proj ** 2).sum() / total) if total > 0 else float("nan")
        at += k
    return out


def tsne_coords(G: np.ndarray, perplexity: float = LENS_DEFAULTS["perplexity"], seed: int = LENS_DEFAULTS["tsne_seed"]):
    """2-D t-SNE of the checkpoints from their Gram (squared Euclidean distances, exact method);
    None when ``perplexity >= N / 3`` (too few checkpoints for that perplexity)."""
    n = G.shape[0]
    if not perplexity < n / 3:
        return None
    from sklearn.manifold import TSNE

    d = np.diag(G)
    D2 = np.clip(d[:, None] + d[None, :] - 2 * G, 0.0, None)
    np.fill_diagonal(D2, 0.0)
    tsne = TSNE(n_components=2, perplexity=float(perplexity), metric="precomputed", init="random",
                method="exact", random_state=int(seed))
    return tsne.fit_transform(D2)


def pca_grid_coords(coords: np.ndarray, grid: Sequence[int], margin: float) -> list[tuple[float, float]]:
    """Grid points over the trajectory's extent on the first two axes (origin included) plus ``margin``."""
    xy = np.vstack([coords[:, :2], np.zeros((1, 2))])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    ext = np.where(hi - lo > 0, hi - lo, 1.0)
    nu, nv = (grid, grid) if isinstance(grid, int) else grid
    us = np.linspace(lo[0] - margin * ext[0], hi[0] + margin * ext[0], int(nu))
    vs = np.linspace(lo[1] - margin * ext[1], hi[1] + margin * ext[1], int(nv))
    return [(float(u), float(v)) for v in vs for u in us]
