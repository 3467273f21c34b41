"""DFT-CCA for conv layers (Raghu et al. 2017; Google's ``dft_ccas.fourier_ccas``): CCA per spatial frequency.

Part of :mod:`closerlook.similarity` (which re-exports :func:`dft_cca` and :class:`DFTCCAResult`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .similarity_core import (DEFAULT_RANK_TOL, _cca_solve, _check_products, _check_samples, _is_torch, _prep,
                              _torch, mean_leading_rows)

__all__ = ["DFTCCAResult", "dft_cca", "dft_cca_rows"]


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
    _check_samples(n, x.shape[1], y.shape[1])
    h, w, fh, fw, rep, sel = _frequencies(x, y)
    sxx, syy, sxy = _dft_scatter(x, y, h, w, sel, batch_size, products)
    return _solve(n, sxx, syy, sxy, rep, sel, (h, w), min(x.shape[1], y.shape[1]), fh, fw, epsilon, tol, threshold)


def _frequencies(x: Any, y: Any) -> tuple:
    """(h, w, fh, fw, rep, sel): the overlapping low frequencies of two (N, C, H, W) layers, each frequency's
    conjugate representative and the frequencies solved."""
    h, w = min(x.shape[2], y.shape[2]), min(x.shape[3], y.shape[3])
    fh = np.fft.fftfreq(x.shape[2], d=1.0 / x.shape[2])[_kept_freqs(x.shape[2], h)]
    fw = np.fft.fftfreq(x.shape[3], d=1.0 / x.shape[3])[_kept_freqs(x.shape[3], w)]
    return (h, w, fh, fw, *_conjugate_pairs(fh, fw))


def _solve(n: int, sxx, syy, sxy, rep, sel, hw: tuple[int, int], kcoef: int, fh, fw, epsilon: float, tol: float,
           threshold: float) -> DFTCCAResult:
    """The per-frequency CCA of the scatter matrices (one per solved frequency), mapped back onto every frequency."""
    h, w = hw
    coefs = np.zeros((h * w, kcoef))
    done = np.zeros(len(sel), bool)
    if not epsilon:
        stacked, done = _stacked_cholesky_cca(n, sxx, syy, sxy, tol)
        coefs[sel[done]] = stacked[done]
    for t in np.flatnonzero(~done):         # the frequencies the stacked fast path cannot take
        s = _cca_solve(n, sxx[t], syy[t], sxy[t], epsilon, tol, check=False)["coefs"]
        coefs[sel[t], :s.size] = s
    m98 = np.zeros(h * w)
    m98[sel] = mean_leading_rows(coefs[sel], threshold)
    coefs, m98 = coefs[rep], m98[rep]       # a conjugate frequency has its partner's coefficients
    coefs = coefs.reshape(h, w, kcoef)
    m98 = m98.reshape(h, w)
    return DFTCCAResult(coefs, m98, fh, fw, float(m98.mean()), float(coefs.mean()))


def _stacked_cholesky_cca(n: int, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, tol: float):
    """:func:`closerlook.similarity_core._cca_solve`'s Cholesky fast path (epsilon 0) for every frequency at
    once: ``(coefs (F, k), ok (F,))``, ``ok`` False where that path does not apply (a constant layer, a block
    not positive definite or not well conditioned), which the caller solves one by one. The same LAPACK
    routines on the same matrices, stacked: per-frequency Python calls were most of a DFT-CCA table's time
    (docs/performance.md)."""
    xmax = np.abs(sxx).max(axis=(1, 2)) / (n - 1)
    ymax = np.abs(syy).max(axis=(1, 2)) / (n - 1)
    ok = (xmax > 0) & (ymax > 0)
    xs, ys = np.where(ok, xmax, 1.0), np.where(ok, ymax, 1.0)
    cxx = sxx * (1.0 / ((n - 1) * xs))[:, None, None]
    cyy = syy * (1.0 / ((n - 1) * ys))[:, None, None]
    cxy = sxy * (1.0 / ((n - 1) * np.sqrt(xs * ys)))[:, None, None]
    (lx, okx), (ly, oky) = _cholesky_each(cxx), _cholesky_each(cyy)
    ok &= okx & oky & _well_conditioned(cxx, lx, tol) & _well_conditioned(cyy, ly, tol)
    t = np.linalg.solve(lx, cxy)
    t = np.linalg.solve(ly, np.conj(t).transpose(0, 2, 1))
    return np.clip(np.abs(np.linalg.svd(t, compute_uv=False)), 0.0, 1.0), ok


def _cholesky_each(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of a stack and which exist: numpy fails a whole stack for one matrix that is
    not positive definite (a dead channel), so then each is factored alone (identity where it fails)."""
    try:
        return np.linalg.cholesky(c), np.ones(c.shape[0], bool)
    except np.linalg.LinAlgError:
        pass
    out, ok = np.broadcast_to(np.eye(c.shape[1], dtype=c.dtype), c.shape).copy(), np.zeros(c.shape[0], bool)
    for i, m in enumerate(c):
        try:
            out[i], ok[i] = np.linalg.cholesky(m), True
        except np.linalg.LinAlgError:
            pass
    return out, ok


def _well_conditioned(c: np.ndarray, l: np.ndarray, tol: float) -> np.ndarray:
    """Per matrix of a stack, :func:`closerlook.similarity_core._chol_if_well_conditioned`'s test: the
    reciprocal 1-norm condition number above ``100 * size * tol``."""
    eye = np.broadcast_to(np.eye(c.shape[1], dtype=c.dtype), c.shape)
    li = np.linalg.solve(l, eye)
    cinv = np.linalg.norm(np.conj(li).transpose(0, 2, 1) @ li, 1, axis=(1, 2))
    anorm = np.linalg.norm(c, 1, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        rcond = 1.0 / (anorm * cinv)
    return np.isfinite(cinv) & (anorm > 0) & (rcond > 100 * c.shape[1] * tol)


# The spectra of a shuffle are the spectra's rows shuffled: chance levels need each side's FFT once, not once per
# shuffle (at cifar_lite scale the FFTs and their copies were ~80 % of a DFT-CCA call). Held in memory up to this.
SPECTRA_MAX_BYTES = 2 << 30


def dft_cca_rows(x: Any, y: Any, pairs: list[tuple[np.ndarray, np.ndarray]], epsilon: float = 0.0, *,
                 threshold: float = 0.98, batch_size: int = 512) -> list[float] | None:
    """``dft_cca(x[rx], y[ry]).value`` for each ``(rx, ry)`` in ``pairs`` (row indices: a shuffle, a subset),
    from each side's spectra computed once; float64 products, numpy arrays only. None when the spectra would
    take more than :data:`SPECTRA_MAX_BYTES` (the caller then calls :func:`dft_cca` per pair)."""
    if _is_torch(x) or _is_torch(y):
        return None
    x, y = _as_4d(x, "x"), _as_4d(y, "y")
    h, w, fh, fw, rep, sel = _frequencies(x, y)
    if len(sel) * x.shape[0] * (x.shape[1] + y.shape[1]) * 16 > SPECTRA_MAX_BYTES:
        return None
    fx, fy = (np.concatenate([_spectrum(a, i, i + batch_size, h, w)[sel] for i in range(0, a.shape[0], batch_size)],
                             axis=1) for a in (x, y))
    tol, kcoef = DEFAULT_RANK_TOL["float64"], min(x.shape[1], y.shape[1])
    cache: dict = {}   # (side, row set) -> its rows' centred spectra (in sorted row order) and their scatter

    def centred(f, rows, tag):
        srt = np.sort(rows)
        key = (tag, srt.tobytes())          # a shuffle keeps its row set: that side's scatter is reused
        if key not in cache:
            if len(cache) > 3:              # subsets are drawn afresh per shuffle: keep the cache small
                cache.clear()
            c = f[:, srt]
            c -= c.mean(1, keepdims=True)
            cache[key] = (c, np.conj(c).transpose(0, 2, 1) @ c)
        c, scatter = cache[key]
        in_order = c if np.array_equal(srt, rows) else c[:, np.searchsorted(srt, rows)]
        return in_order, scatter

    out = []
    for rx, ry in pairs:
        _check_samples(len(rx), x.shape[1], y.shape[1])
        (cx, sxx), (cy, syy) = centred(fx, rx, "x"), centred(fy, ry, "y")
        sxy = np.conj(cx).transpose(0, 2, 1) @ cy
        out.append(_solve(len(rx), sxx, syy, sxy, rep, sel, (h, w), kcoef, fh, fw, epsilon, tol, threshold).value)
    return out
