"""Positive controls of the similarity measures on synthetic data with known answers (issue 24.5)."""
import numpy as np
import pytest
import torch
from torch import nn

from closerlook import controls as K

MEASURES = ["cca_mean", "cca_mean98", "svcca", "linear_cka"]


def _chain(rng, n=1000, width=16, depth=7):
    """A random deep network's layers: each a tanh of a random linear map of the previous one."""
    h = rng.standard_normal((n, width))
    acts = {}
    for k in range(depth):
        h = np.tanh(h @ rng.standard_normal((width, width)) * (1.5 / np.sqrt(width)) + 0.3 * rng.standard_normal(width))
        acts[f"l{k}"] = h
    return acts


def _rotation(rng, d):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_identification_threshold_is_the_binomial_tail():
    from scipy.stats import binom

    for L in (3, 9, 20):
        k = K.identification_threshold(L, 0.95)
        assert binom.sf(k - 1, L, 1 / L) <= 0.05 < binom.sf(k - 2, L, 1 / L)
    assert K.identification_threshold(9, 0.95) == 4


def test_identical_networks_up_to_rotation_are_identified_by_every_measure():
    rng = np.random.default_rng(0)
    a = _chain(rng)
    b = {k: v @ _rotation(rng, v.shape[1]) for k, v in a.items()}
    res = K.identification(a, b, MEASURES)
    for m in MEASURES:
        r = res["measures"][m]
        # CKA: invariant to rotations. CCA (and SVCCA): invariant to every invertible linear map, so a rotation
        # leaves the diagonal at 1 as well; CCA's trouble is wide layers, not rotations.
        assert r["share"] == 1.0, m  # exact: a count ratio, 9/9
        assert r["margin"] > 0, m
        assert r["within_one"] == 1.0  # exact: a count ratio
    rows = K.controls_table(res, None)
    assert all(r["passes"] for r in rows) and {r["measure"] for r in rows} == set(MEASURES)


def test_independent_noise_identifies_at_chance():
    L, shares = 8, []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        a = {f"l{k}": rng.standard_normal((400, 8)) for k in range(L)}
        b = {f"l{k}": rng.standard_normal((400, 8)) for k in range(L)}
        res = K.identification(a, b, ["linear_cka", "cca_mean"])
        shares += [res["measures"][m]["share"] for m in ("linear_cka", "cca_mean")]
        assert not any(r["passes"] for r in K.controls_table(res, None))
    assert abs(np.mean(shares) - 1 / L) < 0.1


def test_equal_width_identification_restricts_candidates():
    mat = np.array([[0.5, 0.9, 0.2], [0.1, 0.6, 0.3], [0.9, 0.2, 0.8]])
    s = K.identification_stats(mat, widths=[4, 8, 4])
    assert s["identified"] == 1 and s["per_layer"][0]["best"] == 1          # row 0's best overall is wider layer 1
    assert s["n_equal"] == 2 and s["per_layer"][0]["identified_equal_width"]  # among width 4: layer 0
    assert s["share_equal"] == 0.5 and s["chance_equal"] == 0.5  # exact: count ratios, 1/2
    assert s["per_layer"][2]["margin"] == pytest.approx(0.8 - 0.9)


def test_store_with_one_reinitialised_middle_layer():
    rng = np.random.default_rng(1)
    a = _chain(rng)
    b = dict(a)
    b["l3"] = rng.standard_normal(a["l3"].shape)        # re-initialised: unrelated to the original
    b["l4"] = np.tanh(b["l3"] @ rng.standard_normal((16, 16)) / 4)
    res = K.change_detection(a, b, MEASURES, "l3")
    before = [r["value"] for r in res["rows"] if r["role"] == "before"]
    assert min(before) > 1 - 1e-6
    for m in MEASURES:
        assert res["measures"][m]["statistic"] < 0.5 and res["measures"][m]["passes"], m
    md = K.controls_markdown(None, res)
    assert "l3 | target" in md and "l4 | after" in md


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12),
                                  nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        return self.body(x)


def test_reinitialise_any_module_changes_only_the_chosen_layer():
    from closerlook.activations import capture

    torch.manual_seed(0)
    model = _MLP()
    layers = {"h1": "body.1", "h2": "body.3", "h3": "body.5", "out": "body.6"}
    assert K.middle_layer(list(layers)) == "h2"
    new, reset = K.reinitialise(model, layers, "h2", seed=3)
    assert reset == ["body.2"]
    assert torch.equal(new.body[0].weight, model.body[0].weight)
    assert not torch.equal(new.body[2].weight, model.body[2].weight)
    x = torch.randn(500, 6)
    a = capture(model, layers, x)
    b = capture(new, layers, x)
    assert np.array_equal(a["h1"], b["h1"]) and not np.array_equal(a["h2"], b["h2"])
    res = K.change_detection(a, b, ["linear_cka"], "h2", max_target=1.0)
    assert res["measures"]["linear_cka"]["before_ok"]
    with pytest.raises(ValueError, match="last layer"):
        K.reinitialise(model, layers, "out")
    # the same seed gives the same re-initialisation; the global RNG is left as it was
    s = torch.random.get_rng_state()
    again, _ = K.reinitialise(model, layers, "h2", seed=3)
    assert torch.equal(torch.random.get_rng_state(), s)
    assert torch.equal(again.body[2].weight, new.body[2].weight)


def test_controls_table_has_interface_a_columns():
    rng = np.random.default_rng(2)
    a = _chain(rng, depth=4)
    ident = K.identification(a, a, ["linear_cka"])
    ch = K.change_detection(a, a, ["linear_cka"], "l1")
    rows = K.controls_table(ident, ch)
    assert [r["control"] for r in rows] == ["identification", "change_detection"]
    assert all(set(r) == set(K.CONTROL_COLUMNS) for r in rows)
    assert rows[1]["passes"] is False                   # nothing changed: the target stays at 1
    md = K.controls_markdown(ident, ch)
    assert "Layer identification" in md and "Change detection" in md


def test_stage_writes_interface_a_outputs(tmp_path):
    import pandas as pd

    from closerlook import stages
    from closerlook.activations import save_store

    rng = np.random.default_rng(3)
    a = _chain(rng, n=300, depth=4)
    save_store(tmp_path / "a", {k: v.astype(np.float32) for k, v in a.items()}, {"status": "ok"})
    save_store(tmp_path / "b", {k: (v @ _rotation(rng, 16)).astype(np.float32) for k, v in a.items()}, {"status": "ok"})
    outs = {k: str(tmp_path / f"{k}.out") for k in ("controls", "controls_md", "identification", "change_detection")}
    s = {**K.CONTROL_DEFAULTS, "measures": ["linear_cka", "cca_mean"]}
    stages.similarity_controls(outs, s, stores={"a": str(tmp_path / "a"), "b": str(tmp_path / "b")})
    df = pd.read_csv(outs["controls"])
    assert list(df.columns) == K.CONTROL_COLUMNS and df["passes"].all() and (df["control"] == "identification").all()
    ident = pd.read_csv(outs["identification"])
    assert len(ident) == 8 and "vs_l0" in ident.columns
    assert "Layer identification" in open(outs["controls_md"]).read()


def test_config_controls_block_resolves_and_refuses_bad_pairs():
    import copy

    from closerlook import config as C
    from closerlook.io import ConfigError

    cfg = C.load_config("config/demo.yaml")
    s = C.control_settings(cfg)
    assert s["measures"] == C.similarity_settings(cfg)["measures"] and s["level"] == 0.95  # exact: the default passed through, no arithmetic
    eps = C.control_endpoints(cfg)
    assert (eps["a"].seed, eps["b"].seed, eps["checkpoint"].tag) == (0, 1, "final")
    lay = C.control_layout(cfg)
    assert lay == {"controls": "results/demo/similarity/controls.csv", "controls_md": "results/demo/similarity/controls.md"}
    bad = copy.deepcopy(cfg)
    bad["controls"]["identification"]["b"] = {"run": "adam", "final": True, "seed": 1}
    with pytest.raises(ConfigError, match="controls.identification"):
        C.control_endpoints(bad)
    none = copy.deepcopy(cfg)
    del none["controls"]
    assert C.control_settings(none) == {} and C.control_layout(none) == {}


def test_controls_reduce_wide_layers_as_the_similarity_table_does():
    """similarity.images_per_dim reaches the controls (control_settings), and a control's value of a layer pair is
    the similarity table's: the control tests the measure the claims are judged on (issue 25.3)."""
    from pathlib import Path

    from closerlook import config as C
    from closerlook.similarity_tables import layer_table

    rng = np.random.default_rng(0)
    a = {"narrow": rng.standard_normal((300, 10)), "wide": rng.standard_normal((300, 200))}
    b = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in a.items()}
    ms = ["cca_mean", "linear_cka"]
    mats = K.cross_matrix(a, b, ms, images_per_dim=5)
    rows = layer_table(a, b, ms, chance=False, images_per_dim=5)
    for r in rows:
        i = ["narrow", "wide"].index(r["layer"])
        assert mats[r["measure"]][i, i] == r["value"]  # exact: one computation, one code path
    assert mats["cca_mean"][1, 1] != K.cross_matrix(a, b, ms)["cca_mean"][1, 1]   # the reduction took effect
    cfg = C.load_config(Path(__file__).resolve().parents[1] / "config" / "cifar_lite.yaml")
    assert C.control_settings(cfg)["images_per_dim"] == C.similarity_settings(cfg)["images_per_dim"] == 5


def _conv_chain(rng, n=300):
    """Conv-like maps (N, C, H, W) of two sizes and an FC layer, each a function of the previous one."""
    x = rng.standard_normal((n, 4, 8, 8))
    c1 = np.tanh(np.einsum("oc,nchw->nohw", rng.standard_normal((6, 4)), x))
    c2 = np.tanh(np.einsum("oc,nchw->nohw", rng.standard_normal((6, 6)), c1.reshape(n, 6, 4, 2, 4, 2).mean(axis=(3, 5))))
    fc = np.tanh(c2.mean(axis=(2, 3)) @ rng.standard_normal((6, 40)))
    return {"c1": c1, "c2": c2, "fc": fc}


def test_controls_compute_dft_cca_as_the_similarity_table_does():
    """DFT-CCA in the controls (issue 25): a conv pair on its full maps, a pair with an FC side on the spatial
    means reduced as the table reduces a 2-D layer (DFT-CCA of an FC layer is CCA mean98 of its DC frequency),
    the other measures on the spatial means; the diagonal equals the similarity table's value."""
    from closerlook.similarity import dft_cca
    from closerlook.similarity_tables import layer_rows

    rng = np.random.default_rng(0)
    a = _conv_chain(rng)
    b = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in a.items()}
    ms = ["dft_cca_mean98", "cca_mean98", "linear_cka"]
    mats = K.cross_matrix(a, b, ms, images_per_dim=10)
    for r in layer_rows(a, b, ms, chance=False, images_per_dim=10):
        i = ["c1", "c2", "fc"].index(r["layer"])
        assert mats[r["measure"]][i, i] == r["value"], r  # exact: the same computation on the same arrays
    assert mats["dft_cca_mean98"][0, 1] == dft_cca(a["c1"], b["c2"]).value  # exact: one call, sizes 8 vs 4
    # conv vs FC: the DC frequency only, i.e. CCA mean98 of the spatial means, with fc (40 wide, 300 images) reduced
    # 1e-10: CCA of the one DC frequency (complex arithmetic) vs plain CCA, float64 reorderings of O(1) values
    assert mats["dft_cca_mean98"][1, 2] == pytest.approx(mats["cca_mean98"][1, 2], abs=1e-10)
    assert np.isfinite(mats["dft_cca_mean98"]).all()


def test_dft_cca_identifies_conv_layers_up_to_a_channel_mixing():
    rng = np.random.default_rng(1)
    a = _conv_chain(rng)
    b = {k: (np.einsum("oc,nchw->nohw", _rotation(rng, v.shape[1]), v) if v.ndim == 4 else v @ _rotation(rng, v.shape[1]))
         for k, v in a.items()}
    r = K.identification(a, b, ["dft_cca_mean98"])["measures"]["dft_cca_mean98"]
    assert r["share"] == 1.0 and r["margin"] > 0  # exact: 3/3, a count ratio


def test_change_detection_reads_full_maps_for_dft_cca():
    rng = np.random.default_rng(2)
    a = _conv_chain(rng)
    changed = dict(a, c2=np.tanh(rng.standard_normal(a["c2"].shape)))
    res = K.change_detection(a, changed, ["dft_cca_mean98", "linear_cka"], "c2", min_before=0.99, max_target=0.5)
    vals = {(r["layer"], r["measure"]): r["value"] for r in res["rows"]}
    assert vals[("c1", "dft_cca_mean98")] == pytest.approx(1.0, abs=1e-6)  # identical maps, float64 CCA
    assert vals[("c2", "dft_cca_mean98")] < 0.5 and res["measures"]["dft_cca_mean98"]["passes"]


def test_control_settings_keep_dft_cca_only_with_full_maps():
    import copy
    from pathlib import Path

    from closerlook import config as C

    cfg = C.load_config(Path(__file__).resolve().parents[1] / "config" / "demo.yaml")
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("similarity", {})["measures"] = ["dft_cca_mean98", "cca_mean", "linear_cka"]
    cfg["controls"].pop("measures", None)
    cfg["activations"] = dict(cfg.get("activations") or {}, mode="pool")
    assert C.control_settings(cfg)["measures"] == ["cca_mean", "linear_cka"]
    cfg["activations"]["mode"] = "full"
    assert C.control_settings(cfg)["measures"] == ["dft_cca_mean98", "cca_mean", "linear_cka"]
    from closerlook.io import ConfigError

    cfg["activations"]["mode"] = "pool"
    cfg["controls"]["measures"] = ["dft_cca_mean98"]
    with pytest.raises(ConfigError, match="controls.measures: dft_cca_mean98 reads full conv maps"):
        C.control_settings(cfg)


def test_poisson_binomial_threshold_matches_enumeration_and_the_binomial():
    import itertools

    for L in (3, 9, 20):  # equal chances: the binomial threshold of the all-layers test
        assert K.poisson_binomial_threshold([1 / L] * L, 0.95) == K.identification_threshold(L, 0.95)
    probs = [0.5] * 6 + [1 / 3] * 3  # small_cnn judged by shape: three conv pairs and three FC layers
    tail = [0.0] * (len(probs) + 2)
    for hits in itertools.product((0, 1), repeat=len(probs)):
        pr = float(np.prod([p if h else 1 - p for h, p in zip(hits, probs)]))
        for k in range(sum(hits) + 1):
            tail[k] += pr
    k = K.poisson_binomial_threshold(probs, 0.95)
    assert tail[k] <= 0.05 < tail[k - 1]
    assert K.poisson_binomial_threshold([0.5, 0.5], 0.95) == 3  # even 2/2 (p = 0.25) is not enough


def test_identification_by_shape_ignores_matches_across_shapes():
    """DFT-CCA's bias (fewer shared frequencies read higher) made every conv row pick an FC column;
    judged among layers of the row's own shape, the corresponding layer wins; singleton shapes are
    left out of the count."""
    mat = np.array([[0.6, 0.5, 0.1, 0.1, 0.9],
                    [0.5, 0.6, 0.1, 0.1, 0.9],
                    [0.1, 0.1, 0.7, 0.2, 0.9],
                    [0.1, 0.1, 0.2, 0.7, 0.9],
                    [0.1, 0.1, 0.1, 0.1, 0.8]])
    shapes = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (6, 4, 4), (40,)]
    assert K.identification_stats(mat)["identified"] == 1   # all layers: only the FC row
    j = K.judged_identification(mat, shapes, 0.9)
    assert (j["n"], j["identified"], j["chance"]) == (4, 4, 0.5)  # exact: counts and 1/2
    assert j["threshold_count"] == 4 and j["passes"]   # P(4 of 4) = 1/16 <= 0.1
    everything = K.judged_identification(mat, [()] * 5, 0.9)
    assert everything["identified"] == 1 and not everything["passes"]


def test_dft_cca_is_judged_among_layers_of_one_shape():
    rng = np.random.default_rng(3)
    n, x = 300, rng.standard_normal((300, 4, 8, 8))
    acts, h = {}, x
    for name, pool in (("c1a", False), ("c1b", False), ("c2a", True), ("c2b", False)):
        if pool:
            h = h.reshape(n, 6, 4, 2, 4, 2).mean(axis=(3, 5))
        h = np.tanh(np.einsum("oc,nchw->nohw", rng.standard_normal((6, h.shape[1])) * 0.8, h))
        acts[name] = h
    f = h.mean(axis=(2, 3))
    for name in ("fca", "fcb"):
        f = np.tanh(f @ rng.standard_normal((f.shape[1], 12)))
        acts[name] = f
    mix = {k: (np.einsum("oc,nchw->nohw", _rotation(rng, v.shape[1]), v) if v.ndim == 4 else v @ _rotation(rng, v.shape[1]))
           for k, v in acts.items()}
    res = K.identification(acts, mix, ["dft_cca_mean98", "linear_cka"])
    j = res["measures"]["dft_cca_mean98"]["judged"]
    assert j["basis"] == "layers of the same shape" and (j["n"], j["identified"]) == (6, 6) and j["passes"]
    assert res["measures"]["linear_cka"]["judged"]["basis"] == "all layers"
    row = {r["measure"]: r for r in K.controls_table(res, None)}
    assert row["dft_cca_mean98"]["passes"] and row["dft_cca_mean98"]["n_layers"] == 6
    assert "Poisson-binomial" in row["dft_cca_mean98"]["rule"]
    assert "layers of the same shape | 6/6 (>= 6)" in K.controls_markdown(res, None)
