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
neuron).  Use :func:`closerlook.similarity_tables.chance_baseline` to measure it for your data.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

# the numerics (re-exported: closerlook.similarity.X keeps working for every name below)
from .similarity_core import (  # noqa: F401
    DEFAULT_RANK_TOL, SampleSizeWarning, _as_2d, _CHANCE_NOTE, _cca_solve, _check_products, _check_samples,
    _chol_if_well_conditioned, _chol_weights, _chunk_rows, _inv_sqrt, _is_torch, _means, _prep, _pwcca,
    _scatter_numpy, _scatter_torch, _summarize, _svd_directions, _to_f64, _torch, mean_leading, mean_squared)
from .similarity_dft import DFTCCAResult, dft_cca  # noqa: F401

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
]
# The comparison tables (chance_baseline, similarity_matrix, subsample_indices, layer_table, layer_rows)
# live in closerlook.similarity_tables, which builds on this module.

# the workflow's per-layer comparison defaults (config `similarity:`) live in the torch-free defaults module
from .defaults import CHANCE_SHUFFLES, COMPARISON_DEFAULTS  # noqa: F401,E402


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
# named measures
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
