"""Representation similarity: CCA (Google-compatible), SVCCA, PWCCA, DFT-CCA, CKA.

Conventions
-----------
* Inputs are ``(datapoints, neurons)`` arrays (numpy arrays, memory maps or
  torch tensors).  Google's ``svcca`` code takes ``(neurons, datapoints)``:
  pass ``acts.T``.
* Everything the CCA family and linear CKA need is a set of second-order
  statistics: the number of datapoints ``n``, the neuron means, and the
  centred scatter matrices ``Sxx = Xc^H Xc``, ``Syy``, ``Sxy = Xc^H Yc``.
  :class:`CovarianceAccumulator` holds them (float64 / complex128), either
  built in one go from arrays (:meth:`CovarianceAccumulator.from_arrays`,
  one chunked pass with a shifted-data correction) or streamed over batches of datapoints
  (:meth:`CovarianceAccumulator.update`, Chan et al. pairwise merging), so a
  (50,000 x 8,192) layer never has to be in memory at once.  The free
  functions below are thin wrappers over the accumulator, so the streaming
  and in-memory paths share every line of the solve.
* Products: ``products="float64"`` (default) computes the scatter matrices in
  float64 (exact up to rounding): two symmetric products (BLAS ``syrk``) and
  one cross product over column-major chunks of the centred data.  That is
  the same number of multiply-adds as ``np.cov`` of the stacked layers,
  which numpy already runs as one ``syrk`` (``dot(X, X.T)`` is detected);
  the gain over the reference is in memory passes (no stacked copy) and in
  the small solves (two ``eigh`` + one SVD instead of two ``pinv``, two
  ``eigh`` and an SVD with vectors).  ``products="float32"`` centres in float64, stores the
  centred chunk as float32, multiplies in float32 and accumulates the chunk
  products in float64; the small solves stay float64 (coefficients agree
  with float64 to ~1e-6 on well-conditioned data).  Torch tensors on a CUDA
  device are multiplied on that device; the small (neurons x neurons)
  solves always run in float64 on the CPU.

CCA (:func:`cca_coefficients`) reproduces Google's ``get_cca_similarity``:
covariance ``S/(n-1)``; ``Σxx`` divided by ``max|Σxx|``, ``Σyy`` by
``max|Σyy|``, ``Σxy`` by ``sqrt`` of both; neurons whose (rescaled) variance
is below ``epsilon`` are dropped; ``epsilon*I`` is added; the coefficients
are the singular values of ``Σxx^-½ Σxy Σyy^-½`` (``min(nx, ny)`` of them,
``nx``, ``ny`` counted after the ``epsilon`` cut), sorted descending.
Where Google uses ``pinv`` (cut-off 1e-15 x the largest singular value) and
takes square roots of possibly negative eigenvalues (NaN), we use an
explicit **rank tolerance**: eigenvalues of the rescaled covariance at or
below ``rank_tol x`` its largest eigenvalue are treated as null directions
(not inverted; their coefficients are 0).  When LAPACK's condition estimate
shows both blocks are far from that tolerance, the coefficients are computed
with Cholesky whitening instead (same values, fewer flops).  Default ``rank_tol`` is 1e-10
for float64 products and 1e-6 for float32 products.  Consequently constant
or duplicated neurons give finite coefficients (zeros for the null
directions), never NaN, and a neuron whose variance is below ``rank_tol``
times the largest one counts as constant (CCA's per-neuron scale invariance
holds above that level).  Coefficients are clipped to [0, 1].

Sample size: CCA needs many more datapoints than neurons.  With
``datapoints <= neurons`` (either side) a ValueError is raised (coefficients
would be 1 by construction); below 5 datapoints per neuron a
:class:`SampleSizeWarning` names the chance level (unrelated random data with
64 neurons gives mean CCA 0.76 / 0.39 / 0.12 at 1.5 / 5 / 50 datapoints per
neuron).  Use :func:`chance_baseline` to measure it for your data.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.linalg

from .defaults import CHANCE_SHUFFLES, COMPARISON_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)
from .verdicts import calibrated, permutation_p

__all__ = [
    "SampleSizeWarning",
    "CovarianceAccumulator",
    "cca_coefficients",
    "mean_leading",
    "mean_squared",
    "svcca",
    "svcca_coefficients",
    "pwcca",
    "linear_cka",
    "rbf_cka",
    "dft_cca",
    "DFTCCAResult",
    "SVCCAResult",
    "MEASURES",
    "measure",
    "chance_baseline",
    "similarity_matrix",
    "layer_table",
    "layer_rows",
]

DEFAULT_RANK_TOL = {"float64": 1e-10, "float32": 1e-6}
_CHANCE_NOTE = (
    "unrelated random data with 64 neurons gives mean CCA 0.76 / 0.39 / 0.12 at "
    "1.5 / 5 / 50 datapoints per neuron (docs: ANCHORS.md); compare against "
    "closerlook.similarity.chance_baseline"
)


class SampleSizeWarning(UserWarning):
    """Fewer than 5 datapoints per neuron: CCA values sit well above zero by chance."""


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def _prep(x: Any) -> Any:
    """numpy array (CPU data) or a CUDA torch tensor (kept on its device)."""
    if _is_torch(x):
        x = x.detach()
        if x.device.type != "cpu":
            return x
        if x.dtype not in (_torch().float64, _torch().float32, _torch().complex64, _torch().complex128):
            x = x.float()
        return x.numpy()
    return np.asarray(x) if not isinstance(x, np.ndarray) else x


def _torch():
    import torch

    return torch


def _as_2d(x: Any, name: str) -> Any:
    x = _prep(x)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        raise ValueError(
            f"{name}: expected (datapoints, neurons), got shape {tuple(x.shape)}; "
            "pool or subsample conv activations (activations.capture mode='pool'/'subsample') "
            "or use dft_cca for (N, C, H, W)"
        )
    return x


def _check_products(products: str) -> str:
    if products not in ("float64", "float32"):
        raise ValueError(f"products must be 'float64' or 'float32', got {products!r}")
    return products


def _chunk_rows(n_cols: int, budget_bytes: int = 64 << 20) -> int:
    return max(256, budget_bytes // (8 * max(1, n_cols)))


def _scatter_numpy(x: np.ndarray, y: np.ndarray, products: str, chunk: int | None):
    """Means and centred scatter matrices in ONE pass over row chunks.

    Each chunk is centred on a fixed shift ``s`` (the mean of <= 4096 rows
    spread over the whole array, so ``s`` is close to the mean even for
    sorted data), multiplied, and the column sums of the shifted chunk are
    accumulated; finally ``mean = s + d`` and ``S = S_s - n d^H d`` with
    ``d = sum / n``.  Since ``|d|`` is small against the spread, the
    correction cancels nothing significant (a shifted-data algorithm), and
    the float32 path multiplies exactly the centred values it sums.
    """
    n, nx = x.shape
    ny = y.shape[1]
    complex_ = np.iscomplexobj(x) or np.iscomplexobj(y)
    acc_dt = np.complex128 if complex_ else np.float64
    if products == "float64":
        work = acc_dt
    else:
        work = np.complex64 if complex_ else np.float32
    # float32 products: at most 4096 rows summed in float32 per chunk (bounded rounding
    # growth), chunk products accumulated in float64.
    chunk = chunk or (_chunk_rows(nx + ny) if products == "float64" else min(4096, _chunk_rows(nx + ny)))
    chunk = min(chunk, n) if n else 1
    step = max(1, n // 4096)
    sx = np.asarray(x[::step].mean(axis=0, dtype=acc_dt))
    sy = np.asarray(y[::step].mean(axis=0, dtype=acc_dt))
    sxx = np.zeros((nx, nx), acc_dt)
    syy = np.zeros((ny, ny), acc_dt)
    sxy = np.zeros((nx, ny), acc_dt)
    tx = np.zeros(nx, acc_dt)
    ty = np.zeros(ny, acc_dt)
    # column-major chunk buffers: the transposed products read contiguous neuron rows
    # (faster syrk/gemm here), and (neurons, datapoints) inputs (x = acts.T) copy in
    # without a transpose.
    bx = np.empty((nx, chunk), work).T
    by = np.empty((ny, chunk), work).T
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        r = stop - start
        cx, cy = bx[:r], by[:r]
        np.subtract(x[start:stop], sx, out=cx, casting="unsafe")
        np.subtract(y[start:stop], sy, out=cy, casting="unsafe")
        tx += cx.sum(axis=0, dtype=acc_dt)
        ty += cy.sum(axis=0, dtype=acc_dt)
        if complex_:
            sxx += cx.conj().T @ cx
            syy += cy.conj().T @ cy
            sxy += cx.conj().T @ cy
        else:
            sxx += cx.T @ cx          # same buffer, transposed: BLAS syrk
            syy += cy.T @ cy
            sxy += cx.T @ cy
    dx, dy = tx / n, ty / n
    sxx -= n * np.outer(dx.conj(), dx)
    syy -= n * np.outer(dy.conj(), dy)
    sxy -= n * np.outer(dx.conj(), dy)
    return sx + dx, sy + dy, sxx, syy, sxy


def _scatter_torch(x, y, mx, my, products: str, chunk: int | None):
    torch = _torch()
    n, nx = x.shape
    ny = y.shape[1]
    complex_ = x.is_complex() or y.is_complex()
    acc_dt = torch.complex128 if complex_ else torch.float64
    work = acc_dt if products == "float64" else (torch.complex64 if complex_ else torch.float32)
    chunk = chunk or _chunk_rows(nx + ny, 512 << 20)
    dev = x.device
    sxx = torch.zeros((nx, nx), dtype=acc_dt, device=dev)
    syy = torch.zeros((ny, ny), dtype=acc_dt, device=dev)
    sxy = torch.zeros((nx, ny), dtype=acc_dt, device=dev)
    mx_t = torch.as_tensor(mx, device=dev)
    my_t = torch.as_tensor(my, device=dev)
    for start in range(0, n, chunk):
        cx = (x[start:start + chunk].to(acc_dt) - mx_t).to(work)
        cy = (y[start:start + chunk].to(acc_dt) - my_t).to(work)
        sxx += (cx.mH @ cx).to(acc_dt)
        syy += (cy.mH @ cy).to(acc_dt)
        sxy += (cx.mH @ cy).to(acc_dt)
    return sxx.cpu().numpy(), syy.cpu().numpy(), sxy.cpu().numpy()


def _means(x: Any) -> np.ndarray:
    if _is_torch(x):
        torch = _torch()
        dt = torch.complex128 if x.is_complex() else torch.float64
        return x.to(dt).mean(0).cpu().numpy()
    dt = np.complex128 if np.iscomplexobj(x) else np.float64
    return np.asarray(x.mean(axis=0, dtype=dt))


# --------------------------------------------------------------------------
# the accumulator
# --------------------------------------------------------------------------

class CovarianceAccumulator:
    """Streaming second-order statistics of two layers over the same datapoints.

    Holds ``n``, the neuron means and the centred scatter matrices
    ``sxx = Σ (x-μx)^H (x-μx)``, ``syy``, ``sxy`` in float64 (complex128 for
    complex input).  :meth:`update` takes a batch ``(b, nx)``, ``(b, ny)``
    of paired datapoints; batches are merged with Chan et al.'s pairwise
    formula (``S = Sa + Sb + na nb / n · δ^H δ``), so no raw sums of squares
    (and no cancellation) are ever formed.  All CCA-family measures and
    linear CKA are methods here and give the same numbers as the in-memory
    functions (which build an accumulator from the full arrays).

    SVCCA is streamable exactly: the SVD of the centred data ``Xc = U S V^T``
    has ``V, S²`` = eigen-decomposition of ``sxx``; the reduced layers'
    statistics are ``V_k^T sxx V_k`` etc.  PWCCA's projections onto the data
    are inner products ``<direction, neuron>``, i.e. entries of ``sxx``
    transformed by the canonical weights.  Debiased and RBF CKA need
    per-datapoint (Gram) quantities and are in-memory only.
    """

    def __init__(self, products: str = "float64", chunk_size: int | None = None):
        self.products = _check_products(products)
        self.chunk_size = chunk_size
        self.n = 0
        self.mean_x: np.ndarray | None = None
        self.mean_y: np.ndarray | None = None
        self.sxx: np.ndarray | None = None
        self.syy: np.ndarray | None = None
        self.sxy: np.ndarray | None = None

    # -- building ---------------------------------------------------------
    @classmethod
    def from_arrays(cls, x: Any, y: Any, products: str = "float64",
                    chunk_size: int | None = None) -> "CovarianceAccumulator":
        """Statistics of in-memory (or memory-mapped) arrays, one chunked pass
        (numpy: shifted data, see ``_scatter_numpy``; CUDA tensors: exact means first)."""
        x = _as_2d(x, "x")
        y = _as_2d(y, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same datapoints: {x.shape[0]} != {y.shape[0]}")
        acc = cls(products, chunk_size)
        acc._set(*acc._batch_stats(x, y))
        return acc

    def _batch_stats(self, x, y):
        torch_dev = _is_torch(x) or _is_torch(y)
        if torch_dev:
            torch = _torch()
            dev = x.device if _is_torch(x) else y.device
            x = torch.as_tensor(x, device=dev)
            y = torch.as_tensor(y, device=dev)
        if torch_dev:
            mx, my = _means(x), _means(y)
            sxx, syy, sxy = _scatter_torch(x, y, mx, my, self.products, self.chunk_size)
        else:
            mx, my, sxx, syy, sxy = _scatter_numpy(x, y, self.products, self.chunk_size)
        return x.shape[0], mx, my, sxx, syy, sxy

    def _set(self, n, mx, my, sxx, syy, sxy):
        self.n, self.mean_x, self.mean_y = int(n), mx, my
        self.sxx, self.syy, self.sxy = sxx, syy, sxy

    def update(self, x_batch: Any, y_batch: Any) -> "CovarianceAccumulator":
        """Add a batch of paired datapoints (rows of ``x_batch`` and ``y_batch``)."""
        xb = _as_2d(x_batch, "x_batch")
        yb = _as_2d(y_batch, "y_batch")
        if xb.shape[0] != yb.shape[0]:
            raise ValueError(f"batch sizes differ: {xb.shape[0]} != {yb.shape[0]}")
        if xb.shape[0] == 0:
            return self
        other = CovarianceAccumulator(self.products, self.chunk_size)
        other._set(*self._batch_stats(xb, yb))
        return self.merge(other)

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Merge another accumulator (over disjoint datapoints) into this one."""
        if other.n == 0:
            return self
        if self.n == 0:
            self._set(other.n, other.mean_x.copy(), other.mean_y.copy(),
                      other.sxx.copy(), other.syy.copy(), other.sxy.copy())
            return self
        if other.sxx.shape != self.sxx.shape or other.syy.shape != self.syy.shape:
            raise ValueError(f"neuron counts differ: {self.sxx.shape[0]}/{self.syy.shape[0]} vs "
                             f"{other.sxx.shape[0]}/{other.syy.shape[0]}")
        na, nb = self.n, other.n
        n = na + nb
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        f = na * nb / n
        for s_self, s_other, a, b in ((self.sxx, other.sxx, dx, dx), (self.syy, other.syy, dy, dy),
                                      (self.sxy, other.sxy, dx, dy)):
            s_self += s_other                       # in place: no (neurons x neurons) temporaries
            s_self += np.outer(a.conj() * f, b)
        self.n = n
        self.mean_x = self.mean_x + dx * (nb / n)
        self.mean_y = self.mean_y + dy * (nb / n)
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """(datapoints, neurons x, neurons y)."""
        if self.sxx is None:
            return (0, 0, 0)
        return (self.n, self.sxx.shape[0], self.syy.shape[0])

    def _need(self) -> None:
        if self.n < 2:
            raise ValueError(f"need at least 2 datapoints, have {self.n}")

    def _default_tol(self, rank_tol: float | None) -> float:
        return DEFAULT_RANK_TOL[self.products] if rank_tol is None else float(rank_tol)

    # -- measures -----------------------------------------------------------
    def cca_coefficients(self, epsilon: float = 0.0, *, rank_tol: float | None = None) -> np.ndarray:
        """Canonical correlations, descending (see :func:`cca_coefficients`)."""
        self._need()
        return _cca_solve(self.n, self.sxx, self.syy, self.sxy, epsilon,
                          self._default_tol(rank_tol))["coefs"]

    def svcca_coefficients(self, keep: float | int = 0.99, *, by: str = "variance",
                           epsilon: float = 1e-10, rank_tol: float | None = None) -> "SVCCAResult":
        """SVCCA coefficients from the statistics (see :func:`svcca_coefficients`)."""
        self._need()
        tol = self._default_tol(rank_tol)
        vx, lx = _svd_directions(self.sxx, keep, by, tol)
        vy, ly = _svd_directions(self.syy, keep, by, tol)
        sxy = vx.conj().T @ self.sxy @ vy
        coefs = _cca_solve(self.n, np.diag(lx).astype(sxy.dtype), np.diag(ly).astype(sxy.dtype),
                           sxy, epsilon, tol)["coefs"]
        return SVCCAResult(coefs, len(lx), len(ly))

    def svcca(self, keep: float | int = 0.99, *, by: str = "variance", summary: str = "mean",
              epsilon: float = 1e-10, rank_tol: float | None = None) -> float:
        res = self.svcca_coefficients(keep, by=by, epsilon=epsilon, rank_tol=rank_tol)
        return _summarize(res.coefs, summary)

    def pwcca(self, epsilon: float = 0.0, *, variant: str = "google",
              rank_tol: float | None = None) -> float:
        """Projection-weighted CCA (see :func:`pwcca`)."""
        self._need()
        return _pwcca(self, epsilon, variant, self._default_tol(rank_tol))[0]

    def linear_cka(self) -> float:
        """Linear CKA ``||Sxy||_F² / (||Sxx||_F ||Syy||_F)`` (centred data)."""
        self._need()
        den = np.linalg.norm(self.sxx) * np.linalg.norm(self.syy)
        if not den > 0:
            return 0.0
        return float(np.linalg.norm(self.sxy) ** 2 / den)


class SVCCAResult(NamedTuple):
    coefs: np.ndarray   # CCA coefficients of the reduced layers, descending
    k_x: int            # directions kept in x
    k_y: int            # directions kept in y


# --------------------------------------------------------------------------
# core solves (small matrices, float64 / complex128, CPU)
# --------------------------------------------------------------------------

def _inv_sqrt(sigma: np.ndarray, rank_tol: float) -> np.ndarray:
    """Symmetric (Hermitian) inverse square root, null space (eig <= tol*max) left out.

    ``sigma`` is overwritten (callers pass a temporary)."""
    w, v = scipy.linalg.eigh(sigma, overwrite_a=True, check_finite=False, driver="evd")
    wmax = w[-1] if w.size else 0.0
    if not wmax > 0:
        return np.zeros_like(v)
    keep = w > rank_tol * wmax
    vk = v if keep.all() else v[:, keep]
    vk *= w[keep] ** -0.25                    # in place: V W^-1/4, then (V W^-1/4)(V W^-1/4)^H
    return vk @ vk.conj().T


def _chol_if_well_conditioned(c: np.ndarray, rank_tol: float) -> np.ndarray | None:
    """Lower Cholesky factor of ``c`` if its estimated reciprocal condition number
    (LAPACK ``pocon``, 1-norm) exceeds ``100 * n * rank_tol``; else None."""
    potrf, pocon = scipy.linalg.lapack.get_lapack_funcs(("potrf", "pocon"), (c,))
    l, info = potrf(c, lower=1, clean=1, overwrite_a=0)
    if info != 0:
        return None
    anorm = np.linalg.norm(c, 1)
    rcond, info = pocon(l, anorm, uplo="L")
    if info != 0 or not rcond > 100 * c.shape[0] * rank_tol:
        return None
    return l


def _check_samples(n: int, nx: int, ny: int) -> None:
    k = max(nx, ny)
    if n <= k:
        raise ValueError(
            f"CCA needs more datapoints than neurons: {n} datapoints for {nx} and {ny} neurons; "
            f"the coefficients would be 1 by construction (chance level = 1). Use more probe "
            f"images, pool or subsample conv activations, SVCCA, or CKA. Note: {_CHANCE_NOTE}"
        )
    if n < 5 * k:
        warnings.warn(
            f"only {n / k:.1f} datapoints per neuron ({n} datapoints, {nx} and {ny} neurons): "
            f"CCA values are inflated; {_CHANCE_NOTE}",
            SampleSizeWarning,
            stacklevel=4,
        )


def _cca_solve(n: int, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray,
               epsilon: float, rank_tol: float, *, directions: bool = False,
               check: bool = True) -> dict:
    nx0, ny0 = sxx.shape[0], syy.shape[0]
    if check:
        _check_samples(n, nx0, ny0)
    # Google: covariance S/(n-1), each block divided by its largest |entry|
    # (one fresh array per block; the scatter matrices are left untouched)
    xmax = float(np.max(np.abs(sxx))) / (n - 1) if sxx.size else 0.0
    ymax = float(np.max(np.abs(syy))) / (n - 1) if syy.size else 0.0
    if not (xmax > 0 and ymax > 0):       # a wholly constant layer: no correlation
        xi = np.ones(nx0, bool)
        yi = np.ones(ny0, bool)
        return {"coefs": np.zeros(min(nx0, ny0)), "x_idxs": xi, "y_idxs": yi, "degenerate": True}
    xi = np.abs(np.diagonal(sxx)).real / ((n - 1) * xmax) >= epsilon
    yi = np.abs(np.diagonal(syy)).real / ((n - 1) * ymax) >= epsilon
    cxx = (sxx if xi.all() else sxx[np.ix_(xi, xi)]) * (1.0 / ((n - 1) * xmax))
    cyy = (syy if yi.all() else syy[np.ix_(yi, yi)]) * (1.0 / ((n - 1) * ymax))
    cxy = (sxy if xi.all() and yi.all() else sxy[np.ix_(xi, yi)]) * (1.0 / ((n - 1) * math.sqrt(xmax * ymax)))
    nx, ny = cxx.shape[0], cyy.shape[0]
    if nx == 0 or ny == 0:
        return {"coefs": np.zeros(0), "x_idxs": xi, "y_idxs": yi, "degenerate": True}
    if epsilon:
        cxx[np.diag_indices(nx)] += epsilon
        cyy[np.diag_indices(ny)] += epsilon
    if not directions:
        # fast path: Cholesky whitening when both blocks are well conditioned
        # (LAPACK's condition estimate well above rank_tol, so the eigen path
        # would keep every direction: identical coefficients, fewer flops)
        lx, ly = _chol_if_well_conditioned(cxx, rank_tol), _chol_if_well_conditioned(cyy, rank_tol)
        if lx is not None and ly is not None:
            t = scipy.linalg.solve_triangular(lx, cxy, lower=True, check_finite=False)
            t = scipy.linalg.solve_triangular(ly, t.conj().T, lower=True, check_finite=False)
            s = np.linalg.svd(t, compute_uv=False)
            return {"x_idxs": xi, "y_idxs": yi, "degenerate": False,
                    "coefs": np.clip(np.abs(s), 0.0, 1.0)}
    wx = _inv_sqrt(cxx, rank_tol)         # overwrites cxx, cyy (temporaries)
    del cxx
    wy = _inv_sqrt(cyy, rank_tol)
    del cyy
    arr = wx @ cxy @ wy
    out = {"x_idxs": xi, "y_idxs": yi, "degenerate": False}
    if directions:
        u, s, vh = np.linalg.svd(arr, full_matrices=False)
        out.update(u=u, vh=vh, wx=wx, wy=wy)
    else:
        s = np.linalg.svd(arr, compute_uv=False)
    out["coefs"] = np.clip(np.abs(s), 0.0, 1.0)
    return out


def _svd_directions(s: np.ndarray, keep: float | int, by: str, rank_tol: float):
    """Top principal directions of a scatter matrix (= right singular vectors of Xc)."""
    if by not in ("variance", "singular_values"):
        raise ValueError(f"by must be 'variance' or 'singular_values', got {by!r}")
    lam, v = np.linalg.eigh(s)
    lam = lam[::-1].real.clip(min=0.0)
    v = v[:, ::-1]
    if lam.size == 0 or not lam[0] > 0:
        return v[:, :0], lam[:0]
    rank = int(np.sum(lam > rank_tol * lam[0]))
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        if keep < 1:
            raise ValueError(f"keep={keep}: an int keep must be >= 1")
        k = min(int(keep), rank)
    else:
        keep = float(keep)
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep={keep}: a fractional keep must be in (0, 1]")
        mass = lam if by == "variance" else np.sqrt(lam)
        frac = np.cumsum(mass) / np.sum(mass)
        k = int(np.searchsorted(frac, keep, side="left")) + 1
        k = min(k, rank, lam.size)
    return v[:, :k], lam[:k]


def _chol_weights(g: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Rows of ``R^-H b`` where ``g = R^H R`` (Gram-Schmidt in the metric ``g``).

    Columns that are (numerically) dependent on earlier ones get zero rows,
    exactly as Gram-Schmidt would skip them; never NaN.
    """
    k = g.shape[0]
    gmax = float(np.max(np.abs(np.diagonal(g)).real)) if k else 0.0
    try:
        r = np.linalg.cholesky(g).conj().T      # upper
        d = np.abs(np.diagonal(r)) ** 2
        if gmax > 0 and np.all(d > tol * gmax):
            return scipy.linalg.solve_triangular(r, b, trans="C", lower=False)
    except np.linalg.LinAlgError:
        pass
    r = np.zeros_like(g)
    w = np.zeros_like(b)
    for i in range(k):
        piv = (g[i, i] - np.vdot(r[:i, i], r[:i, i])).real
        if not (gmax > 0 and piv > tol * gmax):
            continue
        rii = math.sqrt(piv)
        r[i, i] = rii
        r[i, i + 1:] = (g[i, i + 1:] - r[:i, i].conj() @ r[:i, i + 1:]) / rii
        w[i] = (b[i] - r[:i, i].conj() @ w[:i]) / rii
    return w


def _pwcca(acc: CovarianceAccumulator, epsilon: float, variant: str, rank_tol: float):
    if variant not in ("google", "paper"):
        raise ValueError(f"variant must be 'google' or 'paper', got {variant!r}")
    sol = _cca_solve(acc.n, acc.sxx, acc.syy, acc.sxy, epsilon, rank_tol, directions=True)
    coefs = sol["coefs"]
    if sol["degenerate"] or coefs.size == 0:
        return 0.0, np.zeros(coefs.size), coefs
    xi, yi = sol["x_idxs"], sol["y_idxs"]
    if xi.sum() <= yi.sum():            # Google's rule: weight by the side with fewer neurons
        s = acc.sxx[np.ix_(xi, xi)]
        u = sol["u"]
        wsym = sol["wx"]
    else:
        s = acc.syy[np.ix_(yi, yi)]
        u = sol["vh"].conj().T
        wsym = sol["wy"]
    if variant == "google":
        # Google: directions u_i^T Xc (canonical rotation without the whitening),
        # orthonormalised by QR in order; weight_i = sum_j |<q_i, x_j>|.
        g = u.conj().T @ s @ u
        proj = _chol_weights(g, u.conj().T @ s, rank_tol)
    else:
        # canonical variates h_i = Xc Σ^-½ u_i (orthogonal), weight_i = sum_j |<h_i, x_j>| / ||h_i||
        a = u.conj().T @ wsym
        proj = a @ s
        norms = np.sqrt(np.clip(np.einsum("ij,ij->i", proj, a.conj()).real, 0.0, None))
        proj = np.divide(proj, norms[:, None], out=np.zeros_like(proj), where=norms[:, None] > 0)
    weights = np.abs(proj).sum(axis=1)[: coefs.size]
    total = weights.sum()
    if not total > 0:
        return 0.0, np.zeros(coefs.size), coefs
    weights = weights / total
    return float(np.sum(weights * coefs)), weights, coefs


# --------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------

def mean_leading(coefs: np.ndarray, threshold: float = 0.98) -> float:
    """Google's summary ("mean" of ``get_cca_similarity``): the mean of the leading
    coefficients ``s[:i]``, ``i`` = first index with ``sum(s[:i]) / sum(s) >= threshold``
    (all of them if none).  NOT the plain mean (use ``np.mean``).  0.0 for empty/all-zero.
    """
    s = np.asarray(coefs, dtype=np.float64).ravel()
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    total = np.sum(s)
    if s.size == 0 or not total > 0:
        return 0.0
    idx = None
    for i in range(len(s)):                   # same loop as Google's sum_threshold
        if np.sum(s[:i]) / total >= threshold:
            idx = i
            break
    return float(np.mean(s[:idx]))


def mean_squared(coefs: np.ndarray) -> float:
    """Mean of the squared coefficients (the 'R²_CCA' of Kornblith et al.)."""
    s = np.asarray(coefs, dtype=np.float64).ravel()
    return float(np.mean(s ** 2)) if s.size else 0.0


def _summarize(coefs: np.ndarray, summary: str) -> float:
    if summary == "mean":
        return float(np.mean(coefs)) if np.size(coefs) else 0.0
    if summary in ("mean98", "mean_leading"):
        return mean_leading(coefs, 0.98)
    if summary == "mean_squared":
        return mean_squared(coefs)
    raise ValueError(f"summary must be 'mean', 'mean98' or 'mean_squared', got {summary!r}")


# --------------------------------------------------------------------------
# public in-memory functions
# --------------------------------------------------------------------------

def cca_coefficients(x: Any, y: Any, epsilon: float = 0.0, *, rank_tol: float | None = None,
                     products: str = "float64") -> np.ndarray:
    """All canonical correlations between ``x (n, nx)`` and ``y (n, ny)``, descending.

    Google-compatible (``get_cca_similarity(x.T, y.T, epsilon)['cca_coef1']``):
    ``epsilon`` drops neurons whose variance, after dividing each layer's
    covariance by its largest absolute entry, is below ``epsilon``, and adds
    ``epsilon*I`` before whitening.  ``rank_tol``: eigenvalues of the
    (rescaled) covariance at or below ``rank_tol x`` the largest are not
    inverted (default 1e-10, or 1e-6 with ``products='float32'``).
    Returns ``min(nx, ny)`` values in [0, 1] (counts after the epsilon cut).
    """
    return CovarianceAccumulator.from_arrays(x, y, products).cca_coefficients(epsilon, rank_tol=rank_tol)


def svcca_coefficients(x: Any, y: Any, keep: float | int = 0.99, *, by: str = "variance",
                       epsilon: float = 1e-10, rank_tol: float | None = None,
                       products: str = "float64") -> SVCCAResult:
    """SVCCA (Raghu et al.; Google's tutorial recipe), coefficients and kept sizes.

    Each layer is centred and reduced to its top ``k`` singular directions
    (the projections ``U_k S_k``), then Google CCA with ``epsilon`` (1e-10 as
    in the tutorial) is run on the reduced layers.  ``keep``:

    * int ``k``: keep ``min(k, numerical rank)`` directions;
    * float in (0, 1], ``by="variance"`` (default): the smallest ``k`` with
      ``cumsum(s²)/sum(s²) >= keep`` (fraction of variance; ``s`` = singular
      values of the centred data);
    * float, ``by="singular_values"``: the smallest ``k`` with
      ``cumsum(s)/sum(s) >= keep`` (what Google's tutorial calls "fraction of
      variance"; anatome and others differ again).
    """
    return CovarianceAccumulator.from_arrays(x, y, products).svcca_coefficients(
        keep, by=by, epsilon=epsilon, rank_tol=rank_tol)


def svcca(x: Any, y: Any, keep: float | int = 0.99, *, by: str = "variance", summary: str = "mean",
          epsilon: float = 1e-10, rank_tol: float | None = None, products: str = "float64") -> float:
    """SVCCA similarity: ``summary`` ('mean' (default, tutorial), 'mean98', 'mean_squared')
    of :func:`svcca_coefficients`."""
    return _summarize(svcca_coefficients(x, y, keep, by=by, epsilon=epsilon, rank_tol=rank_tol,
                                         products=products).coefs, summary)


def pwcca(x: Any, y: Any, epsilon: float = 0.0, *, variant: str = "google",
          rank_tol: float | None = None, products: str = "float64") -> float:
    """Projection-weighted CCA (Morcos et al. 2018): ``sum_i w_i rho_i``.

    The weights come from the layer with fewer neurons (``x`` on ties), so
    **PWCCA is not symmetric**: ``pwcca(x, y) != pwcca(y, x)`` in general.
    ``variant="google"`` reproduces ``pwcca.compute_pwcca(x.T, y.T)`` on
    centred inputs: directions ``u_iᵀ Xc`` (``u`` = left singular vectors of
    ``Σxx^-½ Σxy Σyy^-½``), orthonormalised in order (QR), weight ``w_i ∝
    Σ_j |<q_i, x_j>|``.  We always centre (Google's value on uncentred inputs
    depends on SVD sign conventions), and where Google raises IndexError
    (x has more neurons than y) we use y's projections.  ``variant="paper"``
    uses the canonical variates ``h_i = Xc Σxx^-½ u_i``:
    ``w_i ∝ Σ_j |<h_i, x_j>| / ||h_i||``.
    """
    return CovarianceAccumulator.from_arrays(x, y, products).pwcca(epsilon, variant=variant,
                                                                   rank_tol=rank_tol)


def linear_cka(x: Any, y: Any, debiased: bool = False, *, products: str = "float64") -> float:
    """Linear CKA (Kornblith et al. 2019) on column-centred data:
    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``.

    ``debiased=True``: the unbiased HSIC estimator (Song et al. 2012) in
    Kornblith's feature-space form (needs per-datapoint row norms: in-memory
    only, needs n > 3).  Symmetric; invariant to orthogonal maps and isotropic
    scaling of either side.  A constant layer gives 0.0.
    """
    if not debiased:
        return CovarianceAccumulator.from_arrays(x, y, products).linear_cka()
    x = _to_f64(x)
    y = _to_f64(y)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 datapoints, got {n}")
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    xty = np.linalg.norm(x.T @ y) ** 2
    xtx = np.linalg.norm(x.T @ x) ** 2
    yty = np.linalg.norm(y.T @ y) ** 2
    rx = np.einsum("ij,ij->i", x, x)
    ry = np.einsum("ij,ij->i", y, y)
    nx2, ny2 = rx.sum(), ry.sum()

    def unbiased(dot, ra, rb, na, nb):
        return dot - n / (n - 2.0) * ra.dot(rb) + na * nb / ((n - 1) * (n - 2))

    num = unbiased(xty, rx, ry, nx2, ny2)
    den2 = unbiased(xtx, rx, rx, nx2, nx2) * unbiased(yty, ry, ry, ny2, ny2)
    if not den2 > 0:
        return 0.0
    return float(num / math.sqrt(den2))


def _to_f64(x: Any) -> np.ndarray:
    x = _prep(x)
    if _is_torch(x):
        x = x.cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"expected (datapoints, neurons), got shape {x.shape}")
    return x


def rbf_cka(x: Any, y: Any, threshold: float = 1.0) -> float:
    """RBF-kernel CKA (Kornblith et al.): Gram ``K_ij = exp(-d²_ij / (2 t² median(d²)))``,
    ``t = threshold``, the median taken over the full n x n matrix of squared
    distances (zero diagonal included); biased centring ``HKH``;
    ``CKA = <Kc, Lc>_F / (||Kc||_F ||Lc||_F)``.  In-memory, O(n²) memory.
    """
    def gram(a):
        a = _to_f64(a)
        a = a - a.mean(0, keepdims=True)
        g = a @ a.T
        sq = np.diag(g)
        d2 = -2 * g + sq[:, None] + sq[None, :]
        med = np.median(d2)
        if not med > 0:
            return np.zeros_like(g)
        k = np.exp(-d2 / (2 * threshold ** 2 * med))
        k -= k.mean(0, keepdims=True)
        k -= k.mean(1, keepdims=True)
        return k

    kx, ky = gram(x), gram(y)
    den = np.linalg.norm(kx) * np.linalg.norm(ky)
    if not den > 0:
        return 0.0
    return float(np.vdot(kx, ky) / den)


# --------------------------------------------------------------------------
# DFT-CCA for conv layers
# --------------------------------------------------------------------------

@dataclass
class DFTCCAResult:
    """Per-spatial-frequency CCA of two conv layers.

    ``coefs[i, j]``: CCA coefficients at frequency ``(freqs_h[i], freqs_w[j])``
    (cycles per image, numpy ``fftfreq`` order, the overlapping low
    frequencies when sizes differ); ``mean98[i, j]`` their Google summary;
    ``value`` = mean of ``mean98`` over all frequencies (measure
    ``dft_cca_mean98``); ``mean`` = mean of all coefficients.
    """

    coefs: np.ndarray
    mean98: np.ndarray
    freqs_h: np.ndarray
    freqs_w: np.ndarray
    value: float
    mean: float


def _kept_freqs(size: int, new: int) -> np.ndarray:
    freqs = np.fft.fftfreq(size, d=1.0 / size)
    return np.flatnonzero((freqs >= -new / 2.0) & (freqs < new / 2.0))


def _as_4d(a: Any, name: str) -> Any:
    a = _prep(a)
    if a.ndim == 2:                 # (N, F): a 1x1 "image" (only the DC component)
        a = a.reshape(a.shape[0], a.shape[1], 1, 1)
    if a.ndim != 4:
        raise ValueError(f"{name}: dft_cca expects (N, C, H, W) or (N, F), got {tuple(a.shape)}")
    return a


def _spectrum(a: Any, start: int, stop: int, h: int, w: int) -> Any:
    """2-D DFT of images [start, stop), cut to the h x w overlapping low frequencies: (h*w, B, C)."""
    b = a[start:stop]
    if _is_torch(b):
        torch = _torch()
        f = torch.fft.fft2(b.to(torch.float64), dim=(2, 3))
        ih = torch.as_tensor(_kept_freqs(b.shape[2], h), device=b.device)
        iw = torch.as_tensor(_kept_freqs(b.shape[3], w), device=b.device)
        f = f[:, :, ih][:, :, :, iw]
        return f.permute(2, 3, 0, 1).reshape(h * w, b.shape[0], b.shape[1])
    f = np.fft.fft2(np.asarray(b, dtype=np.float64), axes=(2, 3))
    f = f[:, :, _kept_freqs(b.shape[2], h)][:, :, :, _kept_freqs(b.shape[3], w)]
    return np.ascontiguousarray(f.transpose(2, 3, 0, 1).reshape(h * w, b.shape[0], b.shape[1]))


def _conjugate_pairs(fh: np.ndarray, fw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rep, sel): each frequency's representative of its conjugate pair (f, -f), and the ones solved."""
    h, w = len(fh), len(fw)
    pos_h = {v: i for i, v in enumerate(fh)}
    pos_w = {v: j for j, v in enumerate(fw)}
    rep = np.empty(h * w, dtype=np.int64)
    solve_list = []
    for i in range(h):
        for j in range(w):
            k = i * w + j
            pi, pj = pos_h.get(-fh[i]), pos_w.get(-fw[j])
            partner = pi * w + pj if pi is not None and pj is not None else None
            if partner is not None and partner < k:
                rep[k] = partner
            else:
                rep[k] = k
                solve_list.append(k)
    return rep, np.asarray(solve_list)


def _mean_spectrum(a: Any, h: int, w: int, sel: np.ndarray) -> Any:
    """The spectrum of the mean image (= the mean spectrum), at the solved frequencies."""
    mean = a.mean(0, keepdims=True) if not _is_torch(a) else a.to(_torch().float64).mean(0, keepdim=True)
    return _spectrum(mean, 0, 1, h, w)[sel, 0]


def _dft_scatter(x: Any, y: Any, h: int, w: int, sel: np.ndarray, batch_size: int, products: str):
    """Centred complex scatter matrices (Sxx, Syy, Sxy) per solved frequency, accumulated over image batches."""
    n, c1, c2 = x.shape[0], x.shape[1], y.shape[1]
    mean_x, mean_y = _mean_spectrum(x, h, w, sel), _mean_spectrum(y, h, w, sel)
    sxx = np.zeros((len(sel), c1, c1), np.complex128)
    syy = np.zeros((len(sel), c2, c2), np.complex128)
    sxy = np.zeros((len(sel), c1, c2), np.complex128)
    sel_t = None
    for start in range(0, n, batch_size):
        fx, fy = _spectrum(x, start, start + batch_size, h, w), _spectrum(y, start, start + batch_size, h, w)
        if _is_torch(fx):
            torch = _torch()
            if sel_t is None:
                sel_t = torch.as_tensor(sel, device=fx.device)
            cx = fx[sel_t] - torch.as_tensor(mean_x, device=fx.device)[:, None, :]
            cy = fy[sel_t] - torch.as_tensor(mean_y, device=fy.device)[:, None, :]
            if products == "float32":
                cx, cy = cx.to(torch.complex64), cy.to(torch.complex64)
            sxx += (cx.mH @ cx).cpu().numpy()
            syy += (cy.mH @ cy).cpu().numpy()
            sxy += (cx.mH @ cy).cpu().numpy()
        else:
            cx = fx[sel] - mean_x[:, None, :]
            cy = fy[sel] - mean_y[:, None, :]
            if products == "float32":
                cx, cy = cx.astype(np.complex64), cy.astype(np.complex64)
            cxh = np.conj(cx).transpose(0, 2, 1)
            sxx += cxh @ cx
            syy += np.conj(cy).transpose(0, 2, 1) @ cy
            sxy += cxh @ cy
    return sxx, syy, sxy


def dft_cca(x: Any, y: Any, epsilon: float = 0.0, *, threshold: float = 0.98,
            rank_tol: float | None = None, batch_size: int = 512,
            products: str = "float64") -> DFTCCAResult:
    """CCA per spatial frequency (Raghu et al. 2017; Google's ``dft_ccas.fourier_ccas``).

    ``x (N, C1, H1, W1)``, ``y (N, C2, H2, W2)``: 2-D DFT over (H, W) of each
    image and channel; when sizes differ both are cut to the overlapping low
    frequencies ``f`` with ``-h/2 <= f < h/2`` (``h = min(H1, H2)``, per axis;
    Google's rule, which it applied to square maps only).  At each frequency,
    Google-compatible complex CCA over the N images (``C`` neurons each).
    Statistics are accumulated over batches of images (the mean spectrum is
    the spectrum of the mean image), so the complex spectra of the whole
    probe set are never held at once.  Frequencies ``f`` and ``-f`` of real
    input are complex conjugates and have identical coefficients; each pair
    is solved once.  Exact for translation-invariant data; a circular shift
    of any channel leaves every coefficient unchanged.
    """
    x = _as_4d(x, "x")
    y = _as_4d(y, "y")
    products = _check_products(products)
    tol = DEFAULT_RANK_TOL[products] if rank_tol is None else float(rank_tol)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y must have the same datapoints: {n} != {y.shape[0]}")
    h = min(x.shape[2], y.shape[2])
    w = min(x.shape[3], y.shape[3])
    _check_samples(n, x.shape[1], y.shape[1])
    fh = np.fft.fftfreq(x.shape[2], d=1.0 / x.shape[2])[_kept_freqs(x.shape[2], h)]
    fw = np.fft.fftfreq(x.shape[3], d=1.0 / x.shape[3])[_kept_freqs(x.shape[3], w)]
    rep, sel = _conjugate_pairs(fh, fw)
    sxx, syy, sxy = _dft_scatter(x, y, h, w, sel, batch_size, products)
    kcoef = min(x.shape[1], y.shape[1])
    coefs = np.zeros((h * w, kcoef))
    m98 = np.zeros(h * w)
    solved = {}
    for t, k in enumerate(sel):
        s = _cca_solve(n, sxx[t], syy[t], sxy[t], epsilon, tol, check=False)["coefs"]
        solved[k] = np.pad(s, (0, kcoef - s.size))
    for k in range(h * w):
        coefs[k] = solved[rep[k]]
        m98[k] = mean_leading(coefs[k], threshold)
    coefs = coefs.reshape(h, w, kcoef)
    m98 = m98.reshape(h, w)
    return DFTCCAResult(coefs, m98, fh, fw, float(m98.mean()), float(coefs.mean()))


# --------------------------------------------------------------------------
# named measures, chance, layer-by-layer
# --------------------------------------------------------------------------

_STAT_MEASURES: dict[str, Callable[[CovarianceAccumulator], float]] = {
    "cca_mean": lambda a: _summarize(a.cca_coefficients(), "mean"),
    "cca_mean98": lambda a: mean_leading(a.cca_coefficients(), 0.98),
    "cca_mean_squared": lambda a: mean_squared(a.cca_coefficients()),
    "svcca": lambda a: a.svcca(0.99),
    "pwcca": lambda a: a.pwcca(),
    "linear_cka": lambda a: a.linear_cka(),
}

MEASURES: dict[str, Callable[[Any, Any], float]] = {
    "cca_mean": lambda x, y: _summarize(cca_coefficients(x, y), "mean"),
    "cca_mean98": lambda x, y: mean_leading(cca_coefficients(x, y), 0.98),
    "cca_mean_squared": lambda x, y: mean_squared(cca_coefficients(x, y)),
    "svcca": lambda x, y: svcca(x, y, 0.99),
    "pwcca": lambda x, y: pwcca(x, y),
    "linear_cka": lambda x, y: linear_cka(x, y),
    "linear_cka_debiased": lambda x, y: linear_cka(x, y, debiased=True),
    "rbf_cka": lambda x, y: rbf_cka(x, y, 1.0),
    "dft_cca_mean98": lambda x, y: dft_cca(x, y).value,
}
"""Named measures (the ``measure`` column of the similarity table).  2-D
measures take ``(datapoints, neurons)``; ``dft_cca_mean98`` takes
``(N, C, H, W)`` (or ``(N, F)`` as a 1x1 map)."""


def measure(name: str | Callable, x: Any, y: Any) -> float:
    """Evaluate a named measure (see :data:`MEASURES`) or a callable ``f(x, y)``."""
    if callable(name):
        return float(name(x, y))
    try:
        fn = MEASURES[name]
    except KeyError:
        raise ValueError(f"unknown similarity measure {name!r}; known: {sorted(MEASURES)}") from None
    return float(fn(x, y))


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


def _values(x: Any, y: Any, measures: Sequence[str], strict: bool = True) -> dict[str, float]:
    """Every measure of one pair of arrays; statistics-based measures share one accumulator.

    ``strict=False`` (subsamples): a measure that cannot be computed at this sample size (CCA with
    fewer datapoints than neurons) gives NaN instead of raising."""
    stat = [m for m in measures if m in _STAT_MEASURES and np.ndim(x) == 2 and np.ndim(y) == 2]
    acc = CovarianceAccumulator.from_arrays(x, y) if stat else None
    out = {}
    for m in measures:
        try:
            out[m] = float(_STAT_MEASURES[m](acc)) if m in stat else measure(m, x, y)
        except ValueError:
            if strict:
                raise
            out[m] = float("nan")
    return out


def _take(a: Any, idx: np.ndarray) -> Any:
    return a[_torch().as_tensor(idx, device=a.device)] if _is_torch(a) else np.asarray(a)[idx]


def _chance_stats(x: Any, y: Any, measures: Sequence[str], n_shuffles: int, size: int | None,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per measure, the K values after shuffling ``y``'s datapoints (on a fresh random ``size``-subset each time)."""
    n = x.shape[0]
    vals: dict[str, list] = {m: [] for m in measures}
    for _ in range(int(n_shuffles)):
        sub = np.sort(rng.choice(n, size, replace=False)) if size else np.arange(n)
        with warnings.catch_warnings():  # the inflation SampleSizeWarning names is what this measures
            warnings.simplefilter("ignore", SampleSizeWarning)
            v = _values(_take(x, sub), _take(y, sub[rng.permutation(sub.size)]), measures, strict=size is None)
        for m in measures:
            vals[m].append(v[m])
    return {m: np.asarray(v, dtype=float) for m, v in vals.items()}


def subsample_indices(n: int, count: int, size: int | None, seed: int = 0) -> list[np.ndarray]:
    """``count`` subsets of ``size`` of ``range(n)`` (default n // 2), each drawn WITHOUT replacement
    (a bootstrap's duplicated images inflate CCA); subset b depends only on (n, size, seed, b), so every
    layer and every comparison of one probe set sees the same images in subsample b."""
    size = int(size or n // 2)
    if not 2 <= size <= n:
        raise ValueError(f"subsamples.size: {size} images, need 2 <= size <= the probe set's {n}")
    return [np.sort(np.random.default_rng([seed, n, size, b]).choice(n, size, replace=False)) for b in range(int(count))]


def _row(name, idx, m, sample, n_img, value, shuffles, exclude_within) -> dict:
    finite = shuffles[np.isfinite(shuffles)]
    ch = float(np.mean(finite)) if finite.size else float("nan")
    return {"layer": name, "layer_index": idx, "measure": m, "sample": sample, "n_images": int(n_img),
            "value": float(value), "chance": ch,
            "chance_low": float(finite.min()) if finite.size else float("nan"),
            "chance_high": float(finite.max()) if finite.size else float("nan"),
            "p_value": permutation_p(value, finite) if finite.size and np.isfinite(value) else float("nan"),
            "calibrated": calibrated(value, ch, exclude_within)}


def layer_table(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any],
                measures: Sequence[str] = ("cca_mean98",), *, layers: Sequence[str] | None = None,
                n_shuffles: int = CHANCE_SHUFFLES, seed: int = 0, chance: bool = True,
                subsamples: Mapping | None = None, exclude_within: float = 0.0) -> list[dict]:
    """Rows of the similarity table of docs/DESIGN.md for the layers both stores share (same name),
    in ``acts_a``'s order: per layer and measure, ``sample = "all"`` (the whole probe set) and, with
    ``subsamples = {"count": B, "size": m}``, ``sample = "s0".."s<B-1>"`` (m images each, drawn without
    replacement, :func:`subsample_indices`). Each row: ``value``; ``chance`` = the mean over
    ``n_shuffles`` shuffles of one side's datapoints at that row's sample size (``chance_low`` /
    ``chance_high``: their min / max); ``p_value`` = the permutation p-value; ``calibrated`` =
    ``(value - chance) / (1 - chance)`` (NaN when the chance level is within ``exclude_within`` of 1)."""
    names = list(layers if layers is not None else [k for k in acts_a if k in acts_b])
    sub = dict(subsamples or {})
    rows = []
    for idx, name in enumerate(names):
        x, y = acts_a[name], acts_b[name]
        n = x.shape[0]
        obs = _values(x, y, measures)
        rng = np.random.default_rng(seed)
        none = {m: np.array([]) for m in measures}
        shuf = _chance_stats(x, y, measures, n_shuffles, None, rng) if chance else none
        rows += [_row(name, idx, m, "all", n, obs[m], shuf[m], exclude_within) for m in measures]
        if not int(sub.get("count") or 0):
            continue
        subs = subsample_indices(n, sub["count"], sub.get("size"), seed)
        shuf_m = _chance_stats(x, y, measures, n_shuffles, subs[0].size, rng) if chance else none
        for b, ix in enumerate(subs):
            v = _values(_take(x, ix), _take(y, ix), measures, strict=False)
            rows += [_row(name, idx, m, f"s{b}", ix.size, v[m], shuf_m[m], exclude_within) for m in measures]
    return rows


_SPATIAL_MEASURES = ("dft_cca_mean98",)


def layer_rows(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any], measures: Sequence[str], *,
               chance: bool = True, n_shuffles: int = CHANCE_SHUFFLES, subsamples: Mapping | None = None,
               seed: int = 0) -> list[dict]:
    """:func:`layer_table` for two activation stores' layers (those both have, in ``acts_a``'s order).

    Conv activations kept in full ``(N, C, H, W)`` go as they are to the spatial
    measures (DFT-CCA) and spatially averaged to the others.
    """
    layers = [k for k in acts_a if k in acts_b]
    spatial = [m for m in measures if m in _SPATIAL_MEASURES]
    flat = [m for m in measures if m not in _SPATIAL_MEASURES]

    def pooled(acts):
        return {k: (np.asarray(v, dtype=np.float64).mean(axis=(2, 3)) if np.ndim(v) == 4 else v)
                for k, v in acts.items() if k in layers}

    kw = dict(layers=layers, chance=chance, n_shuffles=n_shuffles, subsamples=subsamples, seed=seed)
    rows = []
    if flat:
        rows += layer_table(pooled(acts_a), pooled(acts_b), flat, **kw)
    if spatial:
        rows += layer_table(acts_a, acts_b, spatial, **kw)
    return rows
