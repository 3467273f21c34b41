"""closerlook.ensembles: member counts of FGE / SWA / snapshots, the ensemble summary, and each verdict of
the "Beyond the paper" entries on synthetic tables."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from closerlook import ensembles as E
from closerlook.io import ConfigError
from closerlook.schedules import sgdr_cycle_ends
from closerlook.tables import ENSEMBLE_COLUMNS, write_csv


def test_fge_members_sit_at_the_lr_minimum_of_each_cycle():
    its = E.fge_member_iterations(40, 4)
    assert its == [4, 14, 24, 34]  # cycle 10: the 5th iteration of each cycle ends its first half
    for i in its:
        assert E.fge_lr(i, 10, 0.05, 0.0005) == pytest.approx(0.0005, rel=1e-12)  # float64 closed form
    assert E.fge_lr(9, 10, 0.05, 0.0005) == pytest.approx(0.05, rel=1e-12)  # the cycle ends back at lr_max
    assert E.fge_lr(0, 10, 0.05, 0.0005) < 0.05
    with pytest.raises(ConfigError, match="ensembles.budget_epochs"):
        E.fge_member_iterations(7, 4)


def test_swa_updates_at_the_end_of_each_part():
    assert E.swa_update_iterations(40, 4) == [9, 19, 29, 39]
    assert E.swa_update_iterations(10, 3) == [2, 5, 9]


def test_snapshot_members_are_cycle_ends():
    assert sgdr_cycle_ends({"name": "sgdr", "T0": 1, "Tmult": 2}, 7) == [1, 3, 7]
    assert sgdr_cycle_ends({"name": "sgdr", "T0": 2, "Tmult": 1}, 8) == [2, 4, 6, 8]
    assert sgdr_cycle_ends({"name": "step"}, 8) == []


def _tiny(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3)] + ([nn.BatchNorm2d(3)] if bn else []) + [nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 8),
                                                                        nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def _data(n_batches=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_batches)]


def test_train_fge_collects_one_member_per_cycle():
    model, data = _tiny(), _data()
    members = E.train_fge(model, data, {"momentum": 0.9, "weight_decay": 5e-4}, total=12, members=3, lr_max=0.05, lr_min=0.001)
    assert len(members) == 3
    assert not torch.equal(members[0]["3.weight"], members[1]["3.weight"])  # exact: distinct iterates differ


def test_train_swa_averages_members_snapshots():
    model, data = _tiny(bn=True), _data()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    state, n = E.train_swa(model, data, data, {"momentum": 0.0}, total=8, members=4, lr=0.0)
    assert n == 4
    # lr 0: every snapshot is the start, so their average is the start (float32 running mean of equal values)
    torch.testing.assert_close(state["0.weight"], start["0.weight"], rtol=1e-6, atol=1e-7)
    assert not torch.equal(state["1.running_mean"], start["1.running_mean"])  # BN recomputed on the data


def _outputs(preds, feats, y):
    out = []
    for k, (p, f) in enumerate(zip(preds, feats)):
        probs = torch.full((len(y), 3), 0.1, dtype=torch.float64)
        probs[torch.arange(len(y)), torch.tensor(p)] = 0.8
        out.append((f"m{k}", (probs, torch.tensor(y), f)))
    return out


def test_summarise_accuracy_disagreement_and_cka():
    import numpy as np

    y = [0, 1, 2, 0]
    f = np.random.default_rng(0).normal(size=(4, 5))
    row, members = E.summarise("fge", _outputs([[0, 1, 2, 0], [0, 1, 2, 1]], [f, f], y), budget=9)
    assert [m["test_acc"] for m in members] == [1.0, 0.75]  # exact: counts of 4 over 4
    assert row["disagreement"] == 0.25  # exact: one of four predictions differs
    assert row["cka"] == pytest.approx(1.0, abs=1e-12)  # identical features, float64
    assert row["test_acc"] == 1.0 and row["members"] == 2 and row["budget_epochs"] == 9  # exact: counts
    one, _ = E.summarise("swa", _outputs([[0, 1, 2, 0]], [f], y), budget=9, snapshots=4)
    assert one["snapshots"] == 4 and pd.isna(one["disagreement"])


def _table(path, rows):
    df = pd.DataFrame([{c: r.get(c, 0.0) for c in ENSEMBLE_COLUMNS} for r in rows], columns=ENSEMBLE_COLUMNS)
    write_csv(df, path)
    return str(path)


def _row(method, acc, member_min=0.8, snaps=4, budget=10.0, status="ok"):
    return {"method": method, "members": 1 if method == "swa" else snaps, "snapshots": snaps, "budget_epochs": budget,
            "test_acc": acc, "test_nll": 0.3, "member_acc_min": member_min, "disagreement": 0.1, "cka": 0.9,
            "status": status}


def _verdicts(tmp_path, per_inst):
    layout = {"ensembles": {f"i{k}": _table(tmp_path / f"e{k}.csv", rows) for k, rows in enumerate(per_inst)}}
    return {e["id"]: e for e in E.evaluate_beyond(layout)}


def test_beyond_gives_each_verdict(tmp_path):
    ref = _row("independent", 0.90, budget=20.0)
    v = _verdicts(tmp_path, [[ref, _row("snapshot", 0.895), _row("fge", 0.80), _row("curve", 0.90, member_min=0.11),
                              _row("swa", 0.91, budget=30.0)]])
    assert v["beyond-snapshot"]["verdict"] == "reproduced"
    assert v["beyond-fge"]["verdict"] == "not reproduced"
    assert v["beyond-curve"]["verdict"] == "inconclusive"
    assert "trained above chance" in v["beyond-curve"]["reason"]
    assert v["beyond-swa"]["verdict"] == "inconclusive" and "no more training" in v["beyond-swa"]["reason"]
    eff = v["beyond-fge"]["effects"][0]
    assert eff["kind"] == "range" and eff["n"] == 1
    assert eff["estimate"] == pytest.approx(-0.10, abs=1e-12)  # float64 difference of two CSV values
    for e in v.values():
        assert {"verdict", "premises", "effects", "rule", "reason", "measured"} <= set(e)
        assert all({"name", "holds", "value", "rule"} <= set(p) for p in e["premises"])
        assert all({"name", "estimate", "low", "high", "n", "kind"} <= set(f) for f in e["effects"])


def test_beyond_interval_straddling_is_inconclusive(tmp_path):
    ref = _row("independent", 0.90, budget=20.0)
    insts = [[ref, _row("snapshot", 0.90 + d)] for d in (-0.03, 0.01, -0.02, 0.02)]
    e = _verdicts(tmp_path, insts)["beyond-snapshot"]
    acc = e["effects"][0]
    assert acc["kind"] == "interval" and acc["n"] == 4 and acc["low"] < -0.01 < acc["high"]
    assert e["verdict"] == "inconclusive" and "straddles" in e["reason"]


def test_beyond_diverged_or_missing_is_inconclusive(tmp_path):
    ref = _row("independent", 0.90, budget=20.0)
    v = _verdicts(tmp_path, [[ref, _row("snapshot", 0.90, status="diverged")]])
    assert v["beyond-snapshot"]["verdict"] == "inconclusive"
    missing = E.evaluate_beyond({"ensembles": {"i0": str(tmp_path / "nope.csv")}})
    assert missing and all(e["verdict"] == "inconclusive" for e in missing)
    text = E.render_beyond(missing)
    assert text.startswith("## Beyond the paper") and "premise absent" in text
