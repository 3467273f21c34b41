"""Lenses (closerlook.lenses) and sharpness (closerlook.sharpness) against dense references.

Float64 throughout, so tolerances are a few orders above the float64 rounding of the
operations involved (sums over <= a few hundred terms of O(1) numbers).
"""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from closerlook import landscape as L
from closerlook import lenses as Ls
from closerlook import sharpness as S
from closerlook.curves import Layout


def _tiny(seed=0):
    """Conv + BN + Linear (51 parameters), float64: every kind of parameter the lenses treat."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _bn_state(module, x):
    st = {k: v.clone() for k, v in module.state_dict().items()}
    L.recompute_bn(module, st, [(x, None)])
    return st


def _dense_hessian(module, state, x, y):
    """Reference: torch.autograd.functional.hessian of the mean loss over the flat parameters (eval mode)."""
    lay = Layout(module)
    p0 = lay.flat_params(state)
    bufs = {k: state[k] for k in lay.keys if k not in lay.param_keys}

    def f(p):
        parts = dict(zip(lay.param_keys, (c.view(lay.shapes[k]) for k, c in zip(lay.param_keys, torch.split(p, lay.param_sizes)))))
        module.eval()
        return nn.functional.cross_entropy(functional_call(module, {**bufs, **parts}, (x,)), y)

    return torch.autograd.functional.hessian(f, p0)


def test_lanczos_extremes_match_the_dense_hessian():
    m, (x, y) = _tiny(), _data()
    st = _bn_state(m, x)
    H = _dense_hessian(m, st, x, y)
    ev = torch.linalg.eigvalsh(H).numpy()
    op = S.HessianOperator(m, st, [(x[:10], y[:10]), (x[10:], y[10:])])  # two batches: the loss is their mean
    ritz = S.lanczos(op.hvp, op.dim, steps=op.dim, seed=0)
    assert ev[0] < 0 < ev[-1]  # an untrained point: both signs present, so lambda_min is a real test
    # 1e-4 relative (the bar); float64 HVPs and a full Krylov space are good to ~1e-10
    np.testing.assert_allclose([ritz[-1], ritz[0]], [ev[-1], ev[0]], rtol=1e-4)
    # fewer steps than dimensions: the extremes converge first
    short = S.lanczos(op.hvp, op.dim, steps=30, seed=3)
    np.testing.assert_allclose(short[-1], ev[-1], rtol=1e-4)


def test_hutchinson_trace_within_three_standard_errors():
    m, (x, y) = _tiny(1), _data(seed=1)
    st = _bn_state(m, x)
    dense = float(torch.trace(_dense_hessian(m, st, x, y)))
    op = S.HessianOperator(m, st, [(x, y)])
    tr, se = S.hutchinson(op.hvp, op.dim, probes=200, seed=1)
    assert se > 0
    assert abs(tr - dense) <= 3 * se, (tr, se, dense)
    assert tr == S.hutchinson(op.hvp, op.dim, probes=200, seed=1)[0]  # exact: same seed, same probes, same order


def test_sharpness_at_reports_the_scale_aware_measure():
    m, (x, y) = _tiny(2), _data(seed=2)
    st = {k: v.clone() for k, v in m.state_dict().items()}
    r = S.sharpness_at(m, st, [(x, y)], [(x, y)], lanczos_steps=20, probes=10, seed=0)
    wsq = float(sum(p.detach().double().pow(2).sum() for p in m.parameters()))
    np.testing.assert_allclose(r["weight_norm_sq"], wsq, rtol=1e-12)  # float64 sum of 51 squares
    np.testing.assert_allclose(r["lambda_max_scaled"], r["lambda_max"] * wsq, rtol=1e-12)
    assert r["lambda_min"] <= r["lambda_max"] and np.isfinite(r["trace_se"])
    assert torch.equal(st[next(k for k in st if k.endswith("running_mean"))], m.state_dict()["1.running_mean"])  # exact: input not modified


def test_filter_normalisation_gives_each_filter_the_weights_norm():
    m = _tiny(3)
    st = m.state_dict()
    d = Ls.filter_normalised_direction(m, st, seed=5)
    lay = Layout(m)
    parts = dict(zip(lay.param_keys, torch.split(d, lay.param_sizes)))
    for k in lay.param_keys:
        w, dk = st[k].double(), parts[k].view(lay.shapes[k])
        if w.dim() >= 2:  # conv: per output filter; Linear: per output neuron
            np.testing.assert_allclose(dk.reshape(w.shape[0], -1).norm(dim=1), w.reshape(w.shape[0], -1).norm(dim=1),
                                       rtol=1e-12)  # float64 norms of <= 9 terms
        else:  # biases and BN weight/bias: zero, as Li et al.
            assert torch.count_nonzero(dk) == 0, k
    assert torch.equal(d, Ls.filter_normalised_direction(m, st, seed=5))  # exact: same CPU generator stream
    assert not torch.equal(d, Ls.filter_normalised_direction(m, st, seed=6))


def test_random_slices_one_bn_pass_and_one_evaluation_per_point():
    m, (x, y) = _tiny(4), _data(seed=4)
    calls = {"bn": 0, "eval": 0}
    rec, ev = L.recompute_bn, L.evaluate_state

    def count(key, fn):
        def inner(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return inner

    L.recompute_bn, L.evaluate_state = count("bn", rec), count("eval", ev)
    try:
        s1, s2 = Ls.random_slices(m, m.state_dict(), [(x, y)], None, points=5, grid=[3, 4], span=0.5)
    finally:
        L.recompute_bn, L.evaluate_state = rec, ev
    assert len(s1) == 5 and len(s2) == 12
    assert calls == {"bn": 17, "eval": 34}  # per point: one BN pass, one train + one (empty) test evaluation
    # the 1-D slice is the v = 0 line of the 2-D slice: same direction 0
    centre = s1.loc[s1["alpha"].abs().idxmin()]
    assert abs(centre["alpha"]) < 1e-12   # the middle of 5 points over [-0.5, 0.5]
    centre = centre["train_loss"]
    np.testing.assert_allclose(centre, L.evaluate_state(m, _bn_state(m, x), [(x, y)])[0], rtol=1e-12)


def _trajectory(n=9, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, p, generator=g, dtype=torch.float64) * torch.linspace(2, 0.1, p, dtype=torch.float64)
    return torch.cumsum(steps, 0)


@pytest.mark.parametrize("center", ["final", "mean"])
def test_pca_through_the_gram_equals_the_svd_of_the_stacked_matrix(center):
    W = _trajectory()
    origin = W[-1]
    G = Ls.trajectory_gram(lambda i: W[i], len(W), origin, memory_mb=40 * 8 * 3 / 2**20)  # 2 held + 1 streamed
    X = (W - origin).numpy()
    np.testing.assert_allclose(G, X @ X.T, rtol=1e-12, atol=1e-9)  # float64 dot products of 40 terms, |G| ~ 1e2
    pca = Ls.pca_from_gram(G, center)
    Xc = X - X.mean(0) if center == "mean" else X
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(pca.eigenvalues[:5], s[:5] ** 2, rtol=1e-9)
    comps = Ls.pca_components(lambda i: W[i], len(W), origin, pca, k=2).numpy()
    for k in range(2):
        sign = np.sign(comps[k] @ Vt[k])
        np.testing.assert_allclose(sign * comps[k], Vt[k], atol=1e-9)  # unit vectors, float64
        np.testing.assert_allclose(sign * pca.coords[:, k], X @ Vt[k], atol=1e-8)  # coordinates relative to the final
    np.testing.assert_allclose(pca.total, (Xc ** 2).sum(), rtol=1e-12)
    if center == "mean":  # Li et al.'s call: scikit-learn's PCA of the rows w_i - w_final
        from sklearn.decomposition import PCA

        np.testing.assert_allclose(pca.explained[:3], PCA().fit(X).explained_variance_ratio_[:3], rtol=1e-9)


def test_variance_share_of_the_pca_plane_is_its_explained_variance():
    W = _trajectory(seed=1)
    origin, n = W[-1], len(W)
    pca = Ls.pca_from_gram(Ls.trajectory_gram(lambda i: W[i], n, origin), "final")
    comps = Ls.pca_components(lambda i: W[i], n, origin, pca, k=2)
    q = torch.randn(W.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    views = {"pca": [comps[0] * 3.0, comps[0] + comps[1]], "random": [q]}  # any basis of the span works
    shares = Ls.variance_shares(lambda i: W[i], n, origin, views, total=pca.total, center="final")
    np.testing.assert_allclose(shares["pca"], pca.explained[:2].sum(), rtol=1e-9)
    X = (W - origin).numpy()
    np.testing.assert_allclose(shares["random"], ((X @ (q / q.norm()).numpy()) ** 2).sum() / (X ** 2).sum(), rtol=1e-9)


def test_tsne_only_when_perplexity_below_a_third_of_n():
    W = _trajectory(n=12, seed=3)
    G = Ls.trajectory_gram(lambda i: W[i], 12, W[-1])
    assert Ls.tsne_coords(G, perplexity=4.0) is None  # 4 >= 12 / 3
    xy = Ls.tsne_coords(G, perplexity=3.0, seed=0)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()


def _save_trajectory(folder, n=8, diverge_at=None):
    """n checkpoints of a BN small_cnn on a random walk (iterations 0, 10, ...), the last saved as final."""
    from closerlook.io import save_checkpoint
    from closerlook.models import build_model

    spec = {"name": "small_cnn", "batch_norm": True, "width": 0.25}
    torch.manual_seed(0)
    m = build_model(spec, 1, 10, 28)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    meta = {"model": spec, "data": {"name": "fashion_mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}}
    paths = []
    for i in range(n):
        for k, v in sd.items():
            if v.is_floating_point():
                v.add_(0.02 * (1 + i % 3) * torch.randn_like(v))
        p = folder / (f"iter{10 * i}.pt" if i < n - 1 else "final.pt")
        save_checkpoint(p, None if i == diverge_at else sd, {**meta, "iteration": 10 * i, "status": "ok"})
        paths.append(str(p))
    return paths


def test_lens_trajectory_stage_writes_consistent_tables(tmp_path):
    import pandas as pd

    from closerlook import stages

    ck = _save_trajectory(tmp_path)
    out = tmp_path / "lens"
    stages.lens_trajectory(ck, ck[2], ck[-1], ck[4], str(out), {"perplexity": 2.0}, device="cpu", log=lambda s: None)
    pca, traj, views = (pd.read_csv(out / f"{n}.csv") for n in ("pca", "trajectory", "views"))
    np.testing.assert_allclose(pca["explained"].sum(), 1.0, rtol=1e-9)  # float64 ratios of one trace
    assert list(traj["label"]) == [f"iter{10 * i}" for i in range(7)] + ["final"]
    assert traj[["pc1", "pc2"]].iloc[-1].abs().max() < 1e-9  # the origin is the final checkpoint (float64 ~1e-14)
    assert np.isfinite(traj["tsne1"]).all()  # perplexity 2 < 8 / 3
    share = dict(zip(views["view"], views["variance_share"]))
    np.testing.assert_allclose(share["PCA plane (top 2)"], pca["explained"][:2].sum(), rtol=1e-6)  # float32 axes
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in share.values())
    assert share["PCA plane (top 2)"] >= max(v for k, v in share.items() if k.endswith("2-D at w1"))  # PCA is optimal
    # too few checkpoints for the perplexity: no t-SNE, said in the table as NaN
    stages.lens_trajectory(ck, ck[2], ck[-1], ck[4], str(out), {"perplexity": 5.0}, device="cpu", log=lambda s: None)
    assert pd.read_csv(out / "trajectory.csv")["tsne1"].isna().all()


def test_lens_trajectory_with_a_diverged_checkpoint_is_marked(tmp_path):
    import pandas as pd

    from closerlook import stages

    ck = _save_trajectory(tmp_path, n=5, diverge_at=3)
    stages.lens_trajectory(ck, ck[0], ck[-1], ck[1], str(tmp_path / "lens"), {}, device="cpu", log=lambda s: None)
    assert (pd.read_csv(tmp_path / "lens" / "views.csv")["status"] == "diverged").all()
