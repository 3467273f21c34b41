"""The numerics under :mod:`closerlook.similarity`: input handling, one-pass scatter matrices, the small
CCA solves (Google-compatible, with an explicit rank tolerance) and the coefficient summaries.

Pure functions over numpy arrays (CUDA torch tensors where stated); :mod:`closerlook.similarity`
wraps them in :class:`~closerlook.similarity.CovarianceAccumulator` and the named measures, and
re-exports every name here, so ``closerlook.similarity.X`` keeps working.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

# Every BLAS/LAPACK call of a CCA-family measure goes through numpy (np.matmul, np.linalg), none through
# scipy.linalg: numpy and scipy wheels each bundle their own OpenBLAS with its own thread pool, and a call
# that hops between the two leaves one pool's threads spinning while the other's work waits for a core.
# Measured (bench.similarity_bench, 64 x 2,000, 2 threads, 2 cores): 87 CPU-ms per call with the hops,
# 7 CPU-ms with scipy's pool held to 1 thread; Google's algorithm (numpy only) never hops.

DEFAULT_RANK_TOL = {"float64": 1e-10, "float32": 1e-6}
_CHANCE_NOTE = (
    "unrelated random data with 64 neurons gives mean CCA 0.76 / 0.39 / 0.12 at "
    "1.5 / 5 / 50 datapoints per neuron (docs: ANCHORS.md); compare against "
    "closerlook.similarity_tables.chance_baseline"
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
# core solves (small matrices, float64 / complex128, CPU)
# --------------------------------------------------------------------------

def _inv_sqrt(sigma: np.ndarray, rank_tol: float) -> np.ndarray:
    """Symmetric (Hermitian) inverse square root, null space (eig <= tol*max) left out.

    ``sigma`` is overwritten (callers pass a temporary)."""
    w, v = np.linalg.eigh(sigma)              # LAPACK syevd/heevd, as scipy's driver="evd"
    wmax = w[-1] if w.size else 0.0
    if not wmax > 0:
        return np.zeros_like(v)
    keep = w > rank_tol * wmax
    vk = v if keep.all() else v[:, keep]
    vk *= w[keep] ** -0.25                    # in place: V W^-1/4, then (V W^-1/4)(V W^-1/4)^H
    return vk @ vk.conj().T


def _chol_if_well_conditioned(c: np.ndarray, rank_tol: float) -> np.ndarray | None:
    """Lower Cholesky factor of ``c`` if its reciprocal condition number (1-norm, computed from the
    factor's inverse: ``||c^-1||_1 = ||L^-H L^-1||_1``) exceeds ``100 * n * rank_tol``; else None.
    (LAPACK ``pocon`` estimates the same number; numpy does not expose it.)"""
    try:
        l = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        return None
    li = np.linalg.solve(l, np.eye(c.shape[0], dtype=c.dtype))
    cinv_norm = np.linalg.norm(li.conj().T @ li, 1)
    anorm = np.linalg.norm(c, 1)
    if not (np.isfinite(cinv_norm) and anorm > 0):
        return None
    rcond = 1.0 / (anorm * cinv_norm)
    if not rcond > 100 * c.shape[0] * rank_tol:
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
        # (the 1-norm condition number well above rank_tol, so the eigen path
        # would keep every direction: identical coefficients, fewer flops)
        lx, ly = _chol_if_well_conditioned(cxx, rank_tol), _chol_if_well_conditioned(cyy, rank_tol)
        if lx is not None and ly is not None:
            t = np.linalg.solve(lx, cxy)              # Lx^-1 Cxy, then Ly^-1 (Lx^-1 Cxy)^H
            t = np.linalg.solve(ly, t.conj().T)
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
            return np.linalg.solve(r.conj().T, b)
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


def _pwcca(acc: Any, epsilon: float, variant: str, rank_tol: float):
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


def mean_leading_rows(coefs: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """:func:`mean_leading` of each row of ``coefs`` (K, n), from prefix sums instead of a loop of sums
    (equal to it up to the order of summation, ~1e-15; DFT-CCA summarises hundreds of frequencies)."""
    s = np.asarray(coefs, dtype=np.float64)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if s.ndim != 2 or s.shape[1] == 0:
        return np.zeros(s.shape[0] if s.ndim else 0)
    total = s.sum(axis=1)
    upto = np.cumsum(s, axis=1)                       # upto[:, i] = sum(s[:i + 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        reached = (upto - s) / total[:, None] >= threshold   # sum(s[:i]) / total, i = 0 .. n-1
    idx = np.where(reached.any(axis=1), reached.argmax(axis=1), s.shape[1])   # none reached: all of them
    out = upto[np.arange(s.shape[0]), idx - 1] / idx
    return np.where(total > 0, out, 0.0)


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
