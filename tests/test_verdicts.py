"""The verdict contract's numbers: spread (range / t-interval), the calibrated similarity scale, the
permutation p-value, the trained-run premise, and the verdict logic (premises first, whole ranges)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from closerlook import similarity as S
from closerlook import similarity_tables as ST
from closerlook import verdicts as V


def test_spread_range_then_t_interval():
    e = V.spread("gap", [0.2, 0.5, 0.3])
    assert (e["kind"], e["n"], e["low"], e["high"]) == ("range", 3, 0.2, 0.5)
    assert e["estimate"] == pytest.approx(1 / 3, abs=1e-6)  # rounded to 6 decimals
    e = V.spread("gap", [1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd 1.29099, t(0.975, df=3) = 3.182446 (tables): half-width 2.05426
    assert e["kind"] == "interval" and e["low"] == pytest.approx(2.5 - 2.05426, abs=1e-5)
    assert V.spread("gap", [1.0, 2.0, 3.0, 4.0], level=0.5)["high"] < e["high"]
    assert V.spread("gap", [float("nan"), None])["n"] == 0


def test_calibrated_scale_maps_chance_to_zero_and_identity_to_one():
    assert V.calibrated(0.3, 0.3) == 0.0  # exact: (v - c) = 0
    assert V.calibrated(1.0, 0.3) == pytest.approx(1.0, abs=1e-15)
    assert V.calibrated(0.65, 0.3) == pytest.approx(0.5, abs=1e-15)
    assert np.isnan(V.calibrated(0.99, 0.97, exclude_within=0.05))  # chance within 0.05 of 1: excluded
    assert np.isnan(V.calibrated(1.0, 1.0))
    out = V.calibrated([0.3, 1.0, 0.99], [0.3, 0.3, 0.97], exclude_within=0.05)
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0, abs=1e-15) and np.isnan(out[2])  # exact: as above


def test_calibrated_scale_on_real_measures():
    # identical layers: CCA 1 -> calibrated 1; a layer against a shuffled copy of itself sits at chance -> ~0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 12))
    rows = ST.layer_table({"l": x}, {"l": x.copy()}, ["cca_mean", "linear_cka"], n_shuffles=10)
    for r in rows:
        assert r["calibrated"] == pytest.approx(1.0, abs=1e-9), r  # float64 CCA of identical data
        assert r["p_value"] == pytest.approx(1 / 11, abs=1e-15)
    y = x[rng.permutation(400)]
    rows = ST.layer_table({"l": x}, {"l": y}, ["cca_mean"], n_shuffles=40)
    # an unrelated pair is one more draw from the shuffle distribution: within its spread of 0
    r = rows[0]
    assert abs(r["calibrated"]) < 3 * (r["chance_high"] - r["chance_low"]) / (1 - r["chance"])
    assert r["p_value"] > 0.05


def test_permutation_p_value_is_never_zero():
    assert V.permutation_p(1.0, [0.1, 0.2, 0.3]) == 0.25  # exact: 1 / 4
    assert V.permutation_p(0.0, [0.1, 0.2, 0.3]) == 1.0  # exact: 4 / 4
    assert V.permutation_p(0.2, [0.1, 0.2, 0.3]) == 0.75  # exact: ties count as >=
    assert V.permutation_p(5.0, np.zeros(99)) == 0.01  # exact: 1 / 100
    assert V.permutation_p(5.0, []) == 1.0  # exact: no shuffles, no evidence


def test_subsamples_are_drawn_without_replacement_and_shared_across_layers():
    subs = ST.subsample_indices(100, 4, 30, seed=0)
    assert len(subs) == 4 and all(len(np.unique(ix)) == 30 == ix.size for ix in subs)
    assert not all(np.array_equal(subs[0], s) for s in subs[1:])
    assert all(np.array_equal(a, b) for a, b in zip(subs, ST.subsample_indices(100, 4, 30, seed=0)))
    assert ST.subsample_indices(100, 1, None)[0].size == 50
    with pytest.raises(ValueError, match="subsamples.size"):
        ST.subsample_indices(10, 1, 20)


def test_layer_table_rows_for_subsamples_use_chance_at_their_size():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 20))
    y = x @ rng.standard_normal((20, 20)) + 2.0 * rng.standard_normal((600, 20))
    rows = pd.DataFrame(ST.layer_table({"l": x}, {"l": y}, ["cca_mean"], n_shuffles=8,
                                      subsamples={"count": 3, "size": 100}))
    assert rows["sample"].tolist() == ["all", "s0", "s1", "s2"]
    assert rows["n_images"].tolist() == [600, 100, 100, 100]
    whole, sub = rows.iloc[0], rows.iloc[1:]
    # mean CCA of 20 unrelated neurons: chance grows as images per neuron fall (30 -> 5 per neuron)
    assert (sub["chance"] > whole["chance"] + 0.05).all()
    assert sub["chance"].nunique() == 1  # one chance level per sample size
    assert np.allclose(sub["calibrated"], (sub["value"] - sub["chance"]) / (1 - sub["chance"]), atol=1e-12)
    assert (rows["chance_low"] <= rows["chance"]).all() and (rows["chance"] <= rows["chance_high"]).all()


def test_trained_premise():
    assert V.trained(0.85, 10, 0.1, "r")["holds"]
    p = V.trained(0.10, 10, 0.1, "r")
    assert not p["holds"] and "1/10 + 0.1" in p["rule"]
    assert not V.trained(0.85, 10, 0.1, "r", diverged=True)["holds"]
    assert not V.trained(float("nan"), 10, 0.1, "r")["holds"]
    assert not V.trained(0.85, None, 0.1, "r")["holds"]
    df = pd.DataFrame({"epoch": [2, 1], "test_acc": [0.1, 0.8]})  # the last epoch is at chance
    assert not V.run_trained(df, None, 10, 0.1, "r")["holds"]
    assert not V.run_trained(None, "missing", 10, 0.1, "r")["holds"]


@pytest.mark.parametrize("low, high, verdict", [(0.2, 0.4, "reproduced"), (0.0, 0.04, "not reproduced"),
                                                (0.02, 0.4, "inconclusive")])
def test_verdict_on_the_whole_range(low, high, verdict):
    v = V.Verdict(1, "c", V.DEFAULT_RULES)
    v.premise("runs trained", True, 0.9, "> 0.2")
    v.check(v.effect("gap", [low, high]), 0.05, "above")
    assert v.entry("r")["verdict"] == verdict


def test_failed_premise_is_never_a_verdict_on_the_paper():
    for vals in ([0.2, 0.4], [0.0, 0.01]):
        v = V.Verdict(1, "c", V.DEFAULT_RULES)
        v.premise("runs trained", False, 0.1, "> 0.2")
        v.check(v.effect("gap", vals), 0.05, "above")
        e = v.entry("r")
        assert e["verdict"] == "inconclusive" and "runs trained" in e["reason"]
    v = V.Verdict(1, "c", {**V.DEFAULT_RULES, "min_pairs": 1})
    v.premise("barrier: a", False, 0.0, "> 0.1", blocking=False)
    v.premise("barrier: b", True, 0.5, "> 0.1", blocking=False)
    assert v.enough(["b"], ["a", "b"], "pairs")
    v.check(v.effect("gap", [0.3]), 0.05, "above")
    assert v.entry("r")["verdict"] == "reproduced"


def test_subsamples_smaller_than_a_layer_give_nan_not_an_error():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 60))
    rows = pd.DataFrame(ST.layer_table({"l": x}, {"l": x + rng.standard_normal((200, 60))}, ["cca_mean", "linear_cka"],
                                      n_shuffles=3, subsamples={"count": 2, "size": 40}))
    sub = rows[rows["sample"] != "all"]
    cca, cka = sub[sub["measure"] == "cca_mean"], sub[sub["measure"] == "linear_cka"]
    assert cca[["value", "chance", "calibrated", "p_value"]].isna().all().all()  # 40 images < 60 neurons
    assert np.isfinite(cka["calibrated"]).all()
    assert np.isfinite(rows[rows["sample"] == "all"]["calibrated"]).all()


def test_gate_applies_to_negative_outcomes_only():
    # issue 24.3: a failed positive control turns "not reproduced" into inconclusive, leaves "reproduced" alone
    for vals, verdict in (([0.0, 0.01], "inconclusive"), ([0.2, 0.4], "reproduced")):
        v = V.Verdict(1, "c", V.DEFAULT_RULES)
        v.gate("positive control", False, 0.9, "<= 0.25")
        v.check(v.effect("gap", vals), 0.05, "above")
        e = v.entry("r")
        assert e["verdict"] == verdict and any("needed for a negative outcome" in p["name"] for p in e["premises"])
    assert "positive control" in e["premises"][0]["name"]


def test_noise_widened_range_within_the_threshold_is_inconclusive():
    v = V.Verdict(1, "c", V.DEFAULT_RULES)
    v.check(v.effect("gap", [0.06]), 0.05, "above", noise=0.02, noise_basis="binomial")
    e = v.entry("r")
    assert e["verdict"] == "inconclusive" and "within measurement noise" in e["reason"]
    assert e["effects"][0]["noise"] == {"half_width": 0.02, "basis": "binomial"}
    v = V.Verdict(1, "c", V.DEFAULT_RULES)
    v.check(v.effect("gap", [0.06]), 0.05, "above", noise=0.005)
    assert v.entry("r")["verdict"] == "reproduced"


def test_accuracy_difference_se():
    # 0.85 vs 0.84 on 1,000 images: sqrt(0.1275 + 0.1344) / sqrt(1000) = 0.016183
    assert V.acc_diff_se(0.85, 0.84, 1000) == pytest.approx(0.016183, abs=1e-6)
    assert np.isnan(V.acc_diff_se(0.85, 0.84, None))


def test_single_run_prints_no_spread():
    e = V.spread("gap", [0.3])
    assert V.effect_text(e) == "gap: 0.3 (single run (n = 1): no spread)"
    v = V.Verdict(1, "c", V.DEFAULT_RULES)
    v.check(v.effect("gap", [0.3]), 0.05, "above")
    assert "single run (n = 1): no spread" in v.entry("r")["reason"]


def test_trained_with_a_training_loss_condition():
    # issue 25.3: above the accuracy bar but not fitted: not trained where train_loss_max is set
    assert V.trained(0.4, 10, 0.1, "r", train_loss=1.5)["holds"]
    p = V.trained(0.4, 10, 0.1, "r", train_loss=1.5, train_loss_max=1.0)
    assert not p["holds"] and "train loss <= 1" in p["rule"]
    df = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.5, 0.6], "train_loss": [1.0, 0.4]})
    assert V.run_trained(df, None, 10, 0.1, "r", train_loss_max=0.5)["holds"]
