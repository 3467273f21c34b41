"""CCA / SVCCA / PWCCA / CKA / DFT-CCA against Google's reference values and invariances."""
import json
import warnings

import numpy as np
import pytest
import torch

from closerlook import similarity as S
from closerlook import similarity_tables as ST

REF_PATH = "/work/shared/reference/cca_vectors.json"


def _ref():
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cca_vectors.json"
    p = p if p.exists() else Path(REF_PATH)
    if not p.exists():
        pytest.fail(f"reference file missing: {p}")
    return json.loads(p.read_text())


REF = _ref()
CASES = REF["cases"]


def make_case(seed, n1, n2, m, k):
    """The reference generator, verbatim (Google layout (neurons, datapoints))."""
    rs = np.random.RandomState(seed)
    scales = 1.0 / np.arange(1, k + 1)
    Z = rs.randn(k, m) * scales[:, None]
    A = rs.randn(n1, k)
    B = rs.randn(n2, k)
    acts1 = A @ Z + 0.1 * rs.randn(n1, m)
    acts2 = np.tanh(0.5 * (B @ Z)) + 0.1 * rs.randn(n2, m)
    return acts1, acts2


@pytest.fixture(scope="module", params=CASES, ids=[c["name"] for c in CASES])
def case(request):
    c = request.param
    a1, a2 = make_case(c["seed"], c["n1"], c["n2"], c["m"], c["k"])
    fp = c["fingerprint"]
    assert a1.sum() == pytest.approx(fp["acts1_sum"], abs=1e-9)
    assert a2.sum() == pytest.approx(fp["acts2_sum"], abs=1e-9)
    return c, a1.T, a2.T   # (datapoints, neurons)


def _correlated(n=2000, nx=30, ny=20, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8))
    x = z @ rng.standard_normal((8, nx)) + noise * rng.standard_normal((n, nx))
    y = np.tanh(z @ rng.standard_normal((8, ny))) + noise * rng.standard_normal((n, ny))
    return x, y


# ---------------------------------------------------------------- reference

@pytest.mark.parametrize("eps", ["eps0", "eps1e-10"])
def test_google_cca(case, eps):
    c, x, y = case
    ref = c["cca"][eps]
    coefs = S.cca_coefficients(x, y, 0.0 if eps == "eps0" else 1e-10)
    assert coefs.shape == (min(c["n1"], c["n2"]),)
    assert np.all(np.diff(coefs) <= 1e-15)
    if "coefs" in ref:
        np.testing.assert_allclose(coefs, ref["coefs"], rtol=0, atol=1e-8)
    assert abs(np.mean(coefs) - ref["mean_all"]) < 1e-8
    assert abs(S.mean_leading(coefs, 0.98) - ref["mean_thr098"]) < 1e-8
    if eps == "eps0":
        assert abs(S.mean_squared(coefs) - c["cca"]["mean_squared_cca_R2"]) < 1e-8


@pytest.mark.parametrize("variant,keep,by", [("top10", 10, "variance"), ("top20", 20, "variance"),
                                             ("var99", 0.99, "variance"),
                                             ("svmass99", 0.99, "singular_values")])
def test_svcca_variants(case, variant, keep, by):
    c, x, y = case
    ref = c["svcca"][variant]
    res = S.svcca_coefficients(x, y, keep, by=by)
    assert (res.k_x, res.k_y) == (ref["k1"], ref["k2"])
    assert abs(np.mean(res.coefs) - ref["value_mean_all"]) < 1e-8
    assert abs(S.mean_leading(res.coefs) - ref["mean_thr098"]) < 1e-8
    assert abs(S.svcca(x, y, keep, by=by) - ref["value_mean_all"]) < 1e-8


def test_pwcca_centred(case):
    c, x, y = case
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert abs(S.pwcca(xc, yc) - c["pwcca"]["centered_inputs_eps0"]) < 1e-8
    assert abs(S.pwcca(xc, yc, variant="paper") - c["pwcca"]["paper_formula_centered"]) < 1e-8
    # we always centre: raw inputs give the centred value (Google's raw value depends on SVD signs)
    assert abs(S.pwcca(x, y) - c["pwcca"]["centered_inputs_eps0"]) < 1e-8
    lo, hi = c["pwcca"]["raw_inputs_range_over_100_random_svd_sign_flips"]
    assert lo - 1e-6 <= S.pwcca(x, y) <= hi + 1e-3


def test_pwcca_not_symmetric(case):
    """Documented: weights come from the smaller layer (x on ties); reversed args differ.
    Google raises IndexError when x has more neurons; we use y's projections."""
    c, x, y = case
    fwd, rev = S.pwcca(x, y), S.pwcca(y, x)
    assert np.isfinite(rev)
    if c["n1"] == c["n2"]:
        assert abs(fwd - rev) > 1e-4
    else:                      # the smaller side weights in both argument orders
        assert abs(fwd - rev) < 1e-10
    assert "not symmetric" in S.pwcca.__doc__


def test_cka_reference(case):
    c, x, y = case
    k = c["cka"]
    assert abs(S.linear_cka(x, y) - k["linear"]) < 1e-10
    assert abs(S.linear_cka(x, y, debiased=True) - k["linear_debiased"]) < 1e-10
    assert abs(S.rbf_cka(x, y, 0.5) - k["rbf_0.5"]) < 1e-10
    assert abs(S.rbf_cka(x, y, 1.0) - k["rbf_1.0"]) < 1e-10


def test_kornblith_demo():
    kd = REF["kornblith_demo"]
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    assert S.linear_cka(X, Y) == pytest.approx(kd["published_5dp"]["linear_cka"], abs=5e-6)
    assert abs(S.linear_cka(X, Y) - kd["ours"]["linear_cka"]) < 1e-12
    assert abs(S.rbf_cka(X, Y, 0.5) - kd["ours"]["rbf_cka_0.5"]) < 1e-12
    assert abs(S.linear_cka(X, Y, debiased=True) - kd["ours"]["linear_cka_debiased"]) < 1e-12


# ---------------------------------------------------------------- invariances

def test_cca_invariant_to_invertible_maps_and_symmetric():
    x, y = _correlated()
    rng = np.random.default_rng(1)
    base = S.cca_coefficients(x, y)
    ax = rng.standard_normal((x.shape[1], x.shape[1])) + 3 * np.eye(x.shape[1])
    ay = rng.standard_normal((y.shape[1], y.shape[1])) + 3 * np.eye(y.shape[1])
    np.testing.assert_allclose(S.cca_coefficients(x @ ax + 5.0, y), base, atol=1e-9)
    np.testing.assert_allclose(S.cca_coefficients(x, y @ ay - 2.0), base, atol=1e-9)
    np.testing.assert_allclose(S.cca_coefficients(y, x), base, atol=1e-10)       # symmetric
    assert S.linear_cka(x, y) == pytest.approx(S.linear_cka(y, x), abs=1e-12)
    assert S.svcca(x, y) == pytest.approx(S.svcca(y, x), abs=1e-10)


def test_cka_invariant_to_orthogonal_and_scaling():
    x, y = _correlated()
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    for debiased in (False, True):
        base = S.linear_cka(x, y, debiased=debiased)
        assert S.linear_cka(3.7 * x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    base = S.rbf_cka(x[:600], y[:600])
    assert S.rbf_cka(3.7 * x[:600] @ q, y[:600]) == pytest.approx(base, abs=1e-10)


def test_identical_inputs_give_one():
    x, _ = _correlated()
    np.testing.assert_allclose(S.cca_coefficients(x, x), 1.0, atol=1e-8)
    assert S.mean_leading(S.cca_coefficients(x, x)) == pytest.approx(1.0, abs=1e-8)
    assert S.svcca(x, x) == pytest.approx(1.0, abs=1e-7)        # epsilon=1e-10 ridge (Google recipe)
    assert S.svcca(x, x, epsilon=0.0) == pytest.approx(1.0, abs=1e-8)
    assert S.pwcca(x, x) == pytest.approx(1.0, abs=1e-8)
    for f in (S.linear_cka, S.rbf_cka):
        assert f(x[:500], x[:500]) == pytest.approx(1.0, abs=1e-10)
    assert S.linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-10)


# ---------------------------------------------------------------- streaming, numerics

def test_streaming_equals_in_memory():
    x, y = _correlated(n=3000)
    acc = S.CovarianceAccumulator()
    for s in range(0, 3000, 337):               # uneven batches
        acc.update(x[s:s + 337] + 0.0, y[s:s + 337])
    mem = S.CovarianceAccumulator.from_arrays(x, y)
    np.testing.assert_allclose(acc.cca_coefficients(), S.cca_coefficients(x, y), atol=1e-10)
    np.testing.assert_allclose(acc.cca_coefficients(1e-6), mem.cca_coefficients(1e-6), atol=1e-10)
    assert abs(acc.svcca(0.99) - S.svcca(x, y)) < 1e-10
    assert abs(acc.svcca(10) - S.svcca(x, y, 10)) < 1e-10
    assert abs(acc.pwcca() - S.pwcca(x, y)) < 1e-10
    assert abs(acc.pwcca(variant="paper") - S.pwcca(x, y, variant="paper")) < 1e-10
    assert abs(acc.linear_cka() - S.linear_cka(x, y)) < 1e-10
    # torch tensors (CPU) in batches give the same
    acc_t = S.CovarianceAccumulator()
    for s in range(0, 3000, 1000):
        acc_t.update(torch.from_numpy(x[s:s + 1000]), torch.from_numpy(y[s:s + 1000]))
    np.testing.assert_allclose(acc_t.cca_coefficients(), S.cca_coefficients(x, y), atol=1e-10)


def test_large_offset_streaming_is_stable():
    """Chan merging: a huge common offset must not destroy the covariance."""
    x, y = _correlated(n=2000)
    acc = S.CovarianceAccumulator()
    for s in range(0, 2000, 100):
        acc.update(x[s:s + 100] + 1e6, y[s:s + 100] - 1e6)
    np.testing.assert_allclose(acc.cca_coefficients(), S.cca_coefficients(x, y), atol=1e-7)


def test_rank_deficient_and_constant_neurons_finite():
    x, y = _correlated(n=1000, nx=10, ny=10)
    xd = np.concatenate([x, x[:, :3] * 2.0, np.full((1000, 2), 7.0)], axis=1)   # duplicates + constants
    yd = np.concatenate([y, np.zeros((1000, 1))], axis=1)
    for eps in (0.0, 1e-10):
        c = S.cca_coefficients(xd, yd, eps)
        assert np.all(np.isfinite(c))
        np.testing.assert_allclose(c[:10], S.cca_coefficients(x, y)[:10], atol=1e-7)
        assert np.all(c[10:] < 1e-6)
    for v in (S.svcca(xd, yd), S.pwcca(xd, yd), S.pwcca(yd, xd), S.linear_cka(xd, yd),
              S.linear_cka(xd, yd, debiased=True), S.rbf_cka(xd, yd)):
        assert np.isfinite(v)
    # an entirely constant layer: zeros, no NaN
    const = np.ones((1000, 4))
    assert np.all(S.cca_coefficients(x, const) == 0)  # exact: ones centre to exact zeros: null directions give 0
    assert S.linear_cka(x, const) == 0.0  # exact: zero-variance guard returns 0.0
    assert S.pwcca(const, x) == 0.0  # exact: zero-variance guard returns 0.0


def test_sample_size_guard():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 64)), rng.standard_normal((50, 64))
    with pytest.raises(ValueError, match="chance"):
        S.cca_coefficients(x, y)
    x, y = rng.standard_normal((200, 64)), rng.standard_normal((200, 64))
    with pytest.warns(S.SampleSizeWarning, match="0.76"):
        S.cca_coefficients(x, y)
    assert np.isfinite(S.linear_cka(x[:30], y[:30]))          # CKA has no such requirement


def test_float32_products_agree():
    x, y = _correlated(n=5000, nx=40, ny=30)
    c64 = S.cca_coefficients(x, y)
    c32 = S.cca_coefficients(x, y, products="float32")
    assert np.max(np.abs(c64 - c32)) < 1e-6
    assert abs(S.pwcca(x, y) - S.pwcca(x, y, products="float32")) < 1e-6
    assert abs(S.linear_cka(x, y) - S.linear_cka(x, y, products="float32")) < 1e-6
    assert abs(S.svcca(x, y) - S.svcca(x, y, products="float32")) < 1e-6
    with pytest.raises(ValueError):
        S.cca_coefficients(x, y, products="float16")


# ---------------------------------------------------------------- DFT-CCA

def test_dft_cca_shift_invariance():
    rng = np.random.default_rng(0)
    n, c, h = 400, 6, 8
    x = rng.standard_normal((n, c, h, h))
    y = np.stack([np.roll(x[:, i], shift=(i, 2 * i + 1), axis=(1, 2)) for i in range(c)], axis=1)
    res = S.dft_cca(x, y)
    assert res.coefs.shape == (h, h, c)
    np.testing.assert_allclose(res.coefs, 1.0, atol=1e-8)
    assert res.value == pytest.approx(1.0, abs=1e-8)
    # folding positions into datapoints sees the shifts as unrelated data
    fold = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, c)
    assert S.mean_leading(S.cca_coefficients(fold(x), fold(y))) < 0.5
    # the DC frequency is the spatially pooled CCA
    np.testing.assert_allclose(res.coefs[0, 0], S.cca_coefficients(x.mean((2, 3)), y.mean((2, 3))), atol=1e-9)


def test_dft_cca_sizes_differ():
    rng = np.random.default_rng(1)
    n, c = 300, 4
    x = rng.standard_normal((n, c, 10, 10))
    # y = the low-pass 5x5 version of x (Google's kept band: -2..2 cycles), with mixed channels
    f = np.fft.fft2(x, axes=(2, 3))
    idx = np.array([0, 1, 2, 8, 9])
    y = np.real(np.fft.ifft2(f[:, :, idx][:, :, :, idx], axes=(2, 3)))
    y = np.einsum("nchw,cd->ndhw", y, rng.standard_normal((c, 3)) + np.eye(c, 3))
    res = S.dft_cca(x, y)
    assert res.coefs.shape == (5, 5, 3)
    np.testing.assert_allclose(res.freqs_h, [0, 1, 2, -2, -1])
    np.testing.assert_allclose(res.coefs, 1.0, atol=1e-8)
    # a (N, F) layer is a 1x1 map: only the DC component
    r2 = S.dft_cca(x, x.mean((2, 3)) @ rng.standard_normal((c, 3)))
    assert r2.coefs.shape == (1, 1, 3)
    np.testing.assert_allclose(r2.coefs, 1.0, atol=1e-8)
    # torch input gives the same numbers
    rt = S.dft_cca(torch.from_numpy(x), torch.from_numpy(y), batch_size=128)
    np.testing.assert_allclose(rt.coefs, res.coefs, atol=1e-10)


# ---------------------------------------------------------------- chance, matrices

def test_chance_baseline_below_real():
    x, y = _correlated(n=3000, noise=1.0)
    for m in ("cca_mean98", "svcca", "pwcca", "linear_cka"):
        real = S.measure(m, x, y)
        chance = ST.chance_baseline(m, x, y, n_shuffles=2, seed=0)
        assert chance < real - 0.2, (m, real, chance)
    assert ST.chance_baseline("linear_cka", x, y, seed=3) == ST.chance_baseline("linear_cka", x, y, seed=3)  # exact: same seed, same process


def test_similarity_matrix_and_table():
    x, y = _correlated(n=1500)
    store_a = {"l1": x, "l2": y}
    store_b = {"l1": x @ np.diag(np.arange(1, 31.0)), "l2": y + 0.01}
    mat, la, lb = ST.similarity_matrix(store_a, store_b, "linear_cka")
    assert mat.shape == (2, 2) and la == lb == ["l1", "l2"]
    assert mat[1, 1] == pytest.approx(1.0, abs=1e-10)
    mat2, _, _ = ST.similarity_matrix(store_a, store_b, "cca_mean")
    assert mat2[0, 0] == pytest.approx(1.0, abs=1e-8)
    assert mat2[0, 1] == pytest.approx(mat2[1, 0], abs=1e-10)
    rows = ST.layer_table(store_a, store_b, ["cca_mean", "cca_mean98", "pwcca", "linear_cka", "svcca"])
    assert {r["measure"] for r in rows} == {"cca_mean", "cca_mean98", "pwcca", "linear_cka", "svcca"}
    r = next(r for r in rows if r["layer"] == "l2" and r["measure"] == "cca_mean98")
    assert r["value"] > 0.99 and r["chance"] < 0.5 and r["layer_index"] == 1
    with pytest.raises(ValueError, match="unknown"):
        S.measure("nope", x, y)
    with pytest.raises(ValueError, match="dft_cca"):
        S.cca_coefficients(np.zeros((10, 2, 3, 3)), x[:10])


def test_device_tensor_paths_on_cpu(monkeypatch):
    """The torch (CUDA) code paths, exercised with CPU tensors by keeping tensors as tensors."""
    x, y = _correlated(n=1200, nx=12, ny=9)
    ref_c = S.cca_coefficients(x, y)
    ref_k = S.linear_cka(x, y)
    rng = np.random.default_rng(0)
    xi = rng.standard_normal((200, 3, 6, 6))
    yi = np.roll(xi, 2, axis=3) @ np.eye(6)
    ref_d = S.dft_cca(xi, yi)
    monkeypatch.setattr(S, "_prep", lambda a: a.detach() if S._is_torch(a) else np.asarray(a))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(S.cca_coefficients(tx.float(), ty.float()), ref_c, atol=1e-5)
    np.testing.assert_allclose(S.cca_coefficients(tx, ty), ref_c, atol=1e-10)
    np.testing.assert_allclose(S.cca_coefficients(tx, ty, products="float32"), ref_c, atol=1e-5)
    assert abs(S.linear_cka(tx, ty) - ref_k) < 1e-10
    acc = S.CovarianceAccumulator()
    for s in range(0, 1200, 500):
        acc.update(tx[s:s + 500], ty[s:s + 500])
    np.testing.assert_allclose(acc.cca_coefficients(), ref_c, atol=1e-10)
    rd = S.dft_cca(torch.from_numpy(xi), torch.from_numpy(yi), batch_size=64)
    np.testing.assert_allclose(rd.coefs, ref_d.coefs, atol=1e-10)
    assert ST.chance_baseline("linear_cka", tx, ty) < 0.2


def test_one_pass_statistics_match_two_pass_on_drifting_data():
    """The shifted one-pass scatter equals np.cov even when the data drift (sorted probe sets)."""
    x, y = _correlated(n=9000, nx=7, ny=5)
    x = x + np.linspace(0, 1e3, 9000)[:, None]          # strong drift along the datapoints
    y = y - 5e2 * (np.arange(9000) >= 4500)[:, None]
    acc = S.CovarianceAccumulator.from_arrays(x, y, chunk_size=1000)
    cov = np.cov(x.T, y.T)
    np.testing.assert_allclose(acc.sxx / (9000 - 1), cov[:7, :7], rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(acc.sxy / (9000 - 1), cov[:7, 7:], rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(acc.mean_x, x.mean(0), rtol=1e-13)
    acc32 = S.CovarianceAccumulator.from_arrays(x, y, products="float32")
    np.testing.assert_allclose(acc32.syy / (9000 - 1), cov[7:, 7:], rtol=1e-5)


# ---------------------------------------------------------------- wide layers (issue 25.3)

@pytest.mark.parametrize("n, w", [(120, 300), (300, 40)])   # both branches: n <= w (n x n Gram), n > w (w x w)
def test_top_directions_are_the_leading_principal_components(n, w):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, w)) @ np.diag(np.linspace(3.0, 0.1, w)) + 5.0
    k = 17
    got = ST.top_directions(x, k)
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    ref = u[:, :k] * s[:k]
    # columns agree up to sign; float64 eigh vs SVD of a well-conditioned top block: 1e-8 of the scale
    np.testing.assert_allclose(np.abs(got), np.abs(ref), atol=1e-8 * s[0])


def test_wide_layer_cca_in_its_top_directions_with_cka_in_full():
    """A layer with fewer than r images per neuron: the CCA family in its top n // r directions (the
    same as SVCCA with a fixed k), linear CKA in full, ``dims`` saying which; a narrow layer untouched."""
    rng = np.random.default_rng(1)
    n, w, r = 300, 200, 5
    wide_a, wide_b = rng.standard_normal((n, w)), rng.standard_normal((n, w))   # unrelated: chance only
    narrow_a = rng.standard_normal((n, 20))
    narrow_b = narrow_a @ rng.standard_normal((20, 20)) + 0.5 * rng.standard_normal((n, 20))
    ms = ["cca_mean", "svcca", "linear_cka"]
    a, b = {"wide": wide_a, "narrow": narrow_a}, {"wide": wide_b, "narrow": narrow_b}
    with pytest.warns(S.SampleSizeWarning):   # the full space: CCA on 1.5 images per neuron is inflated
        full = {(x["layer"], x["measure"]): x for x in ST.layer_table(a, b, ms, chance=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SampleSizeWarning)   # reduced: 5 images per direction, no warning
        red = {(x["layer"], x["measure"]): x for x in ST.layer_table(a, b, ms, chance=False, images_per_dim=r)}
    assert ST.reduced_dims(n, w, r) == 60 and ST.reduced_dims(n, 20, r) is None
    assert red["wide", "cca_mean"]["dims"] == 60 and red["wide", "linear_cka"]["dims"] == full["wide", "cca_mean"]["dims"] == w
    k_coefs = S.svcca_coefficients(wide_a, wide_b, 60).coefs
    assert red["wide", "cca_mean"]["value"] == pytest.approx(float(np.mean(k_coefs)), rel=1e-6)
    # the point of it: 1.5 images per neuron put chance CCA near 0.7, 5 per direction well below
    assert full["wide", "cca_mean"]["value"] > 0.6 > 0.45 > red["wide", "cca_mean"]["value"]
    assert red["wide", "linear_cka"]["value"] == full["wide", "linear_cka"]["value"]   # exact: the same computation
    for m in ms:
        assert red["narrow", m]["value"] == full["narrow", m]["value"] and red["narrow", m]["dims"] == 20  # exact: not reduced


def test_wide_layer_chance_reduces_the_whole_set_once(monkeypatch):
    """The whole-set chance shuffles of a wide layer project each side once (shuffling commutes with the
    projection), not once per shuffle, and give the values a per-shuffle projection gives."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((300, 200)), rng.standard_normal((300, 200))
    calls = []
    real = ST.top_directions
    monkeypatch.setattr(ST, "top_directions", lambda a, k: calls.append(k) or real(a, k))
    once = ST._chance_stats(x, y, ["cca_mean", "linear_cka"], 4, None, np.random.default_rng(0), 5)
    assert calls == [60, 60]
    ref = []
    g = np.random.default_rng(0)
    for _ in range(4):
        p = g.permutation(300)
        ref.append(float(np.mean(S.cca_coefficients(real(x, 60), real(y[p], 60)))))
    # float64 eigendecompositions of a permuted Gram matrix: equal up to rounding
    np.testing.assert_allclose(once["cca_mean"], ref, rtol=1e-8)


def _conv_pair(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 6, 6))
    y = 0.7 * np.roll(x, 1, axis=3)[:, [1, 0, 3, 2]] + 0.5 * rng.standard_normal((n, 4, 6, 6))
    return x, np.concatenate([y, rng.standard_normal((n, 1, 6, 6))], axis=1)   # 5 channels: widths differ


def test_dft_rows_equal_one_call_per_shuffle_and_subset():
    from closerlook.similarity_dft import dft_cca_rows
    x, y = _conv_pair()
    rng = np.random.default_rng(1)
    sub = np.sort(rng.choice(60, 30, replace=False))
    pairs = [(np.arange(60), np.arange(60)), (np.arange(60), rng.permutation(60)), (sub, sub[rng.permutation(30)]),
             (rng.permutation(60), np.arange(60))]
    want = [S.dft_cca(x[rx], y[ry]).value for rx, ry in pairs]
    np.testing.assert_allclose(dft_cca_rows(x, y, pairs), want, rtol=0, atol=1e-10)   # float64, same sums reordered


def test_dft_rows_decline_what_they_cannot_hold(monkeypatch):
    from closerlook import similarity_dft as D
    x, y = _conv_pair()
    pairs = [(np.arange(60), np.arange(60))]
    assert D.dft_cca_rows(torch.as_tensor(x), torch.as_tensor(y), pairs) is None
    monkeypatch.setattr(D, "SPECTRA_MAX_BYTES", 1000)
    assert D.dft_cca_rows(x, y, pairs) is None


def test_dft_table_chance_is_the_per_shuffle_one(monkeypatch):
    x, y = _conv_pair()
    kw = dict(chance=True, n_shuffles=5, subsamples={"count": 2, "size": 30})
    used, real = [], ST._dft_shuffles
    monkeypatch.setattr(ST, "_dft_shuffles", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    fast = ST.layer_rows({"c": x}, {"c": y}, ["dft_cca_mean98"], **kw)
    assert len(used) == 2 and all(u is not None for u in used)           # whole set and subsample shuffles
    monkeypatch.setattr(ST, "_dft_shuffles", lambda *a, **k: None)      # the generic per-shuffle path
    slow = ST.layer_rows({"c": x}, {"c": y}, ["dft_cca_mean98"], **kw)
    assert [r["sample"] for r in fast] == [r["sample"] for r in slow] == ["all", "s0", "s1"]
    for a, b in zip(fast, slow):
        for key in ("value", "chance", "chance_low", "chance_high", "p_value"):
            assert a[key] == pytest.approx(b[key], abs=1e-10), key


def test_dft_on_a_wide_fc_layer_is_reduced_like_cca():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((100, 40)), rng.standard_normal((100, 40))   # 2.5 images per neuron
    rows = ST.layer_rows({"fc": x}, {"fc": y}, ["dft_cca_mean98", "cca_mean98"], chance=False, images_per_dim=5)
    by = {r["measure"]: r for r in rows}
    assert by["dft_cca_mean98"]["dims"] == by["cca_mean98"]["dims"] == 20
    assert by["dft_cca_mean98"]["value"] == pytest.approx(by["cca_mean98"]["value"], abs=1e-10)


def _dft_per_frequency(x, y):
    """DFT-CCA's value with one _cca_solve call per frequency (the path before the stacked solve)."""
    from closerlook import similarity_core as SC
    from closerlook import similarity_dft as SD

    x4, y4 = SD._as_4d(x, "x"), SD._as_4d(y, "y")
    h, w, _fh, _fw, rep, sel = SD._frequencies(x4, y4)
    sxx, syy, sxy = SD._dft_scatter(x4, y4, h, w, sel, 512, "float64")
    kc = min(x4.shape[1], y4.shape[1])
    coefs, m98 = np.zeros((h * w, kc)), np.zeros(h * w)
    for t, k in enumerate(sel):
        s = SC._cca_solve(x4.shape[0], sxx[t], syy[t], sxy[t], 0.0, 1e-10, check=False)["coefs"]
        coefs[k, :s.size] = s
        m98[k] = SC.mean_leading(coefs[k], 0.98)
    return float(m98[rep].mean()), float(coefs[rep].mean())


@pytest.mark.parametrize("case", ["generic", "dead_channel", "sizes_differ", "collinear"])
def test_dft_cca_stacked_solve_equals_one_solve_per_frequency(case):
    """The stacked Cholesky path runs the same LAPACK routines on the same matrices; frequencies it cannot take
    (a dead or collinear channel: not positive definite / ill conditioned) fall back to the eigen path. 1e-12:
    float64 throughout, only the order of a prefix sum differs (mean_leading_rows)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 6, 8, 8))
    y = np.tanh(x[:, :5] + 0.5 * rng.standard_normal((200, 5, 8, 8)))
    if case == "dead_channel":
        x[:, 2] = 0.0
    elif case == "sizes_differ":
        y = y[:, :, ::2, ::2].copy()
    elif case == "collinear":
        y[:, 4] = y[:, 3]
    r = S.dft_cca(x, y)
    value, mean = _dft_per_frequency(x, y)
    assert r.value == pytest.approx(value, abs=1e-12) and r.mean == pytest.approx(mean, abs=1e-12)


def test_mean_leading_rows_is_mean_leading_per_row():
    from closerlook.similarity_core import mean_leading_rows

    rng = np.random.default_rng(6)
    c = rng.random((300, 16))
    c[3] = 0.0                      # all zero: 0.0
    c[7] = 1.0                      # equal coefficients
    c[9, 1:] = 0.0                  # one coefficient carries everything
    want = [S.mean_leading(r, 0.98) for r in c]
    assert np.allclose(mean_leading_rows(c, 0.98), want, rtol=0, atol=1e-12)
    assert np.allclose(mean_leading_rows(c, 1.0), [S.mean_leading(r, 1.0) for r in c], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="threshold"):
        mean_leading_rows(c, 0.0)
