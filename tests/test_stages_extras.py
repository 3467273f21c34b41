"""The stages of alignment and ensembles on real (tiny) checkpoints and data: files written, counts right."""
from __future__ import annotations

import pandas as pd
import torch

from closerlook import align as A
from closerlook import curves, stages
from closerlook.io import load_checkpoint, save_checkpoint
from closerlook.models import build_model

MODEL = {"name": "small_cnn", "batch_norm": False, "init": "kaiming", "width": 0.25}
DATA_META = {"name": "fashion_mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}


def _ckpt(path, seed=0, state=None):
    torch.manual_seed(seed)
    net = build_model(MODEL, 1, 10, 28)
    save_checkpoint(path, state or net.state_dict(), {"run": "r", "seed": seed, "epoch": 1, "status": "ok",
                                                      "model": MODEL, "data": DATA_META})
    return str(path)


def test_align_end_recovers_a_permuted_copy(tmp_path):
    a = _ckpt(tmp_path / "a.pt", 0)
    sd = load_checkpoint(a)["model"]
    spec = A.builtin_spec(build_model(MODEL, 1, 10, 28))
    b = _ckpt(tmp_path / "b.pt", 0, A.apply_permutation(spec, A.random_permutation(spec, 2), sd))
    stages.align_end(a, b, str(tmp_path / "aligned.pt"), A.ALIGN_DEFAULTS, log=lambda s: None)
    out = load_checkpoint(tmp_path / "aligned.pt")
    assert all(torch.equal(out["model"][k], sd[k]) for k in sd)  # exact: permutations copy values
    assert out["meta"]["distance_after"] == 0.0 < out["meta"]["distance_before"]  # exact: identical weights
    assert out["meta"]["model"] == MODEL  # rebuildable like the end checkpoint


def test_fge_swa_and_ensembles_stages(tmp_path, fmnist_dir, data_cache):
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(data_cache), "train_per_class": 10,
            "test_per_class": 5}
    base, other = _ckpt(tmp_path / "base.pt", 0), _ckpt(tmp_path / "other.pt", 1)
    training = {"batch_size": 20, "augment": False, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                "seed": 0, "members": 2, "budget_epochs": 2, "lr_max": 0.01, "lr_min": 0.0001, "swa_lr": 0.002}
    fge = [str(tmp_path / f"fge{k}.pt") for k in range(2)]
    stages.fge(base, fge, training, data, device="cpu", log=lambda s: None)
    stages.swa(base, str(tmp_path / "swa.pt"), training, data, device="cpu", log=lambda s: None)
    assert load_checkpoint(tmp_path / "swa.pt")["meta"]["swa_averaged"] == 2
    assert [load_checkpoint(p)["meta"]["fge_member"] for p in fge] == [0, 1]
    c = curves.Curve(build_model(MODEL, 1, 10, 28), load_checkpoint(base)["model"], load_checkpoint(other)["model"])
    curves.save_curve(tmp_path / "curve.pt", c, {"model": MODEL, "data": DATA_META})
    members = {"independent": [base, other], "snapshot": [base, fge[0]], "fge": fge, "swa": [str(tmp_path / "swa.pt")]}
    curve = {"curve": str(tmp_path / "curve.pt"), "start": base, "end": other, "ts": [0.0, 1.0]}
    budgets = {"independent": 2.0, "snapshot": 1.0, "fge": 3.0, "swa": 3.0, "curve": 2.0}
    outs = {"ensembles": str(tmp_path / "ensembles.csv"), "members": str(tmp_path / "members.csv")}
    stages.ensembles(members, curve, budgets, {"cka_images": 20, "eval_batch_size": 25}, data, outs, device="cpu",
                     log=lambda s: None)
    ens, mem = pd.read_csv(outs["ensembles"]).set_index("method"), pd.read_csv(outs["members"])
    assert list(ens.index) == ["independent", "snapshot", "fge", "curve", "swa"]
    assert ens.loc["swa", "members"] == 1 and ens.loc["swa", "snapshots"] == 2
    assert (ens["status"] == "ok").all() and ens.loc["fge", "budget_epochs"] == 3.0  # exact: whole epochs, counted
    assert mem.groupby("method").size().to_dict() == {"curve": 2, "fge": 2, "independent": 2, "snapshot": 2, "swa": 1}
    # the curve's ends are the independent members: same accuracies
    ind = mem[mem["method"] == "independent"]["test_acc"].to_numpy()
    cur = mem[mem["method"] == "curve"]["test_acc"].to_numpy()
    assert (ind == cur).all()  # exact: the same weights give the same argmax counts
