"""Training engine: accumulation, distillation, freezing, divergence, validation, outputs."""
import copy
import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from closerlook import io
from closerlook.io import ConfigError
from testkit import THREADS
from closerlook.models import resolve_freeze
from closerlook.spec import validate_run_spec
from closerlook.tables import METRICS_COLUMNS
from closerlook.cli import train_main as main
from closerlook.train import accumulate_gradients, distillation_loss, train_run


@pytest.fixture()
def spec(fmnist_dir, data_cache):
    """200 Fashion-MNIST images, batch 20 -> 10 iterations per epoch; a quarter-width small_cnn."""
    return {
        "name": "tiny", "seed": 0,
        "data": {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(data_cache),
                 "train_per_class": 20, "test_per_class": 10, "subset_seed": 0},
        "model": {"name": "small_cnn", "width": 0.25},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "epochs": 1, "batch_size": 20, "augment": False,
        "checkpoints": {"epochs": [1], "iterations": [0]},
        "device": "cpu", "threads": THREADS,
    }


def _sd(path):
    return io.load_checkpoint(path)["model"]


def _tiny_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


# ----------------------------------------------------------------------------- accumulation

def test_accumulated_batch_equals_true_batch():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (200,))
    net = _tiny_net().double()
    nets = {mb: copy.deepcopy(net) for mb in (None, 100, 50)}
    for mb, m in nets.items():
        opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
        opt.zero_grad(set_to_none=True)
        loss_sum, correct = accumulate_gradients(m, x, y, mb)
        opt.step()
        assert loss_sum.item() / 200 == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-12)
    ref = dict(nets[None].named_parameters())
    for mb in (100, 50):
        for n, p in nets[mb].named_parameters():
            assert torch.allclose(p, ref[n], rtol=0, atol=1e-12), (mb, n)
    # the update is real (not a no-op that would pass trivially)
    assert not torch.allclose(ref["3.weight"], dict(net.named_parameters())["3.weight"], atol=1e-4)


def test_accumulated_batch_float32_tolerance():
    torch.manual_seed(1)
    x = torch.randn(200, 1, 8, 8)
    y = torch.randint(0, 10, (200,))
    a, b = _tiny_net(), None
    b = copy.deepcopy(a)
    for m, mb in ((a, None), (b, 100)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(m, x, y, mb)
        opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), n


# ----------------------------------------------------------------------------- distillation

def test_distillation_alpha0_is_plain_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(32, 10), torch.randn(32, 10), torch.randint(0, 10, (32,))
    assert torch.equal(distillation_loss(s, t, y, temperature=4.0, alpha=0.0), F.cross_entropy(s, y))  # exact: IEEE 0 * kl + 1 * ce == ce


def test_distillation_alpha1_same_logits_is_zero_and_value():
    torch.manual_seed(0)
    s, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    assert abs(distillation_loss(s, s.clone(), y, temperature=4.0, alpha=1.0).item()) < 1e-6
    t = torch.randn(32, 10)
    T, a = 3.0, 0.7
    pt = F.softmax(t / T, 1)
    kl = (pt * (pt.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, T, a).item() == pytest.approx(want.item(), rel=1e-5)


def test_distillation_gradients_finite_and_flow_only_to_student():
    torch.manual_seed(0)
    s = (torch.randn(16, 10) * 30).requires_grad_()
    t = (torch.randn(16, 10) * 30).requires_grad_()
    y = torch.randint(0, 10, (16,))
    distillation_loss(s, t.detach(), y, 4.0, 0.9).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_distill_run_alpha0_equals_plain_run_and_alpha09_trains(spec, tmp_path):
    plain = train_run(spec, tmp_path / "teacher", progress=None)
    assert plain["status"] == "ok"
    teacher = tmp_path / "teacher" / "final.pt"
    d0 = dict(spec, distill={"teacher": str(teacher), "temperature": 4.0, "alpha": 0.0})
    train_run(d0, tmp_path / "alpha0", progress=None)
    a, b = _sd(teacher), _sd(tmp_path / "alpha0" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: same process; teacher present but weightless: exactly plain CE
    d9 = dict(spec, distill={"teacher": str(teacher), "temperature": 4.0, "alpha": 0.9}, seed=1)
    r = train_run(d9, tmp_path / "alpha09", progress=None)
    assert r["status"] == "ok"
    c = _sd(tmp_path / "alpha09" / "final.pt")
    assert all(torch.isfinite(v).all() for v in c.values() if v.is_floating_point())
    # train_ce: the hard-label cross-entropy beside the objective. At alpha 0 the objective is that cross-entropy
    # (batch means x batch size against summed per-image terms: float32 rounding, 1e-5 relative); at 0.9 it is not;
    # a run without a teacher writes its train_loss there
    m0, m9, mp = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("alpha0", "alpha09", "teacher"))
    assert np.allclose(m0["train_ce"], m0["train_loss"], rtol=1e-5, atol=0)
    assert np.isfinite(m9["train_ce"]).all() and not np.allclose(m9["train_ce"], m9["train_loss"], rtol=1e-3)
    assert (m9["train_ce"] > 0).all() and (mp["train_ce"] == mp["train_loss"]).all()  # exact: the same float


# ----------------------------------------------------------------------------- freezing

def test_freeze_classifier_does_not_move_then_trains(spec, tmp_path):
    k = 10
    s = dict(spec, epochs=2, freeze={"groups": ["classifier"], "iterations": k},
             checkpoints={"epochs": [], "iterations": [0, k - 1, k, 20]})
    train_run(s, tmp_path, progress=None)
    from closerlook import models
    model = models.build_model(s["model"], 1, 10, 28)
    frozen = set(resolve_freeze(model, ["classifier"]))
    assert frozen and len(frozen) < len(list(model.parameters()))
    w0, wk, w20 = (_sd(tmp_path / f"iter{i}.pt") for i in (0, k, 20))
    for n in frozen:  # bit for bit: no momentum, no weight-decay drift
        assert torch.equal(w0[n], wk[n]), n  # exact: frozen weights are never written
    assert any(not torch.equal(wk[n], w20[n]) for n in frozen)  # unfrozen afterwards
    moved = [n for n in w0 if n not in frozen and w0[n].is_floating_point() and n in dict(model.named_parameters())]
    assert moved and all(not torch.equal(w0[n], wk[n]) for n in moved)


def test_freeze_unknown_group_is_config_error(spec, tmp_path):
    with pytest.raises(ConfigError, match="freeze.groups"):
        train_run(dict(spec, freeze={"groups": ["no_such_group"], "iterations": 3}), tmp_path, progress=None)


def test_freeze_accepts_raw_prefix():
    net = _tiny_net()
    assert resolve_freeze(net, ["3"]) == ["3.weight", "3.bias"]
    with pytest.raises(ConfigError):
        resolve_freeze(net, ["30"])


# ----------------------------------------------------------------------------- outputs, seeds, divergence

def test_outputs_metrics_and_determinism(spec, tmp_path):
    s = dict(spec, epochs=2, augment=True, schedule={"name": "sgdr", "T0": 1, "Tmult": 1, "lr_min": 1e-4},
             checkpoints={"epochs": [1, 2], "iterations": [0, 7]})
    lines = []
    r1 = train_run(s, tmp_path / "a", progress=lines.append)
    train_run(s, tmp_path / "b", progress=None)
    assert r1["status"] == "ok" and r1["iteration"] == 20
    for f in ("epoch1.pt", "epoch2.pt", "iter0.pt", "iter7.pt", "final.pt", "metrics.csv", "status.json"):
        assert (tmp_path / "a" / f).exists(), f
    assert not (tmp_path / "a" / "resume.pt").exists()
    a, b = _sd(tmp_path / "a" / "final.pt"), _sd(tmp_path / "b" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: same seed twice on the same CPU is bitwise
    assert not all(torch.equal(a[k], _sd(tmp_path / "a" / "iter0.pt")[k]) for k in a)
    meta = io.load_checkpoint(tmp_path / "a" / "iter7.pt")["meta"]
    assert meta["iteration"] == 7 and meta["epoch"] == pytest.approx(7 / 10) and meta["status"] == "ok"
    assert meta["model"] == s["model"] and meta["data"]["num_classes"] == 10
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert list(rows[0]) == METRICS_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["lr"]) == pytest.approx(1e-4) and rows[1]["iteration"] == "20"
    assert lines[0].startswith("epoch 1/2 it 10 lr ") and "img/s" in lines[0]
    assert json.loads((tmp_path / "a" / "status.json").read_text())["status"] == "ok"


def test_finished_run_on_a_class_sorted_folder_cache_is_not_reused(spec, tmp_path):
    # a run finished by closerlook before the folder order (status.json holds the hash of that time,
    # which had no data order in it) is trained again; a Fashion-MNIST run keeps its hash and is reused
    from PIL import Image

    from closerlook.resume import fingerprint
    from closerlook.spec import HASH_IGNORES, spec_hash

    def old_hash(s):  # spec_hash as it was (commit 42b48a0)
        # (sharpness_trace did not exist then: a spec without a trace hashes as before it)
        return fingerprint({k: v for k, v in s.items() if k not in HASH_IGNORES
                            and not (k == "sharpness_trace" and v is None)})

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            d = tmp_path / "tree" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(10):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{i}.png")
    folder = dict(spec, data={"name": "imagefolder", "root": str(tmp_path / "tree"), "cache_dir": None,
                              "train_per_class": None, "test_per_class": None, "subset_seed": 0},
                  checkpoints={"epochs": [], "iterations": []}, batch_size=10)
    for s, reused in ((folder, False), (dict(spec, checkpoints={"epochs": [], "iterations": []}), True)):
        v = validate_run_spec(s)
        assert (spec_hash(v) == old_hash(v)) is reused
        out = tmp_path / s["data"]["name"]
        train_run(s, out, progress=None)
        st = json.loads((out / "status.json").read_text())
        (out / "status.json").write_text(json.dumps(dict(st, spec_hash=old_hash(v))))
        lines = []
        train_run(s, out, progress=lines.append)
        assert any("already complete" in m for m in lines) is reused, lines


def test_divergence_is_recorded_cleanly(spec, tmp_path, capsys):
    s = dict(spec, epochs=3, checkpoints={"epochs": [1, 3], "iterations": [0, 25]})
    spec_file = tmp_path / "run.json"
    spec_file.write_text(json.dumps(s))
    # the CLI override is what makes it diverge (lr 0.05 in the file)
    assert main(["--spec", str(spec_file), "--out", str(tmp_path / "o"), "--quiet", "--set", "optimizer.lr=1e12"]) == 0
    out = tmp_path / "o"
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "diverged" and st["diverged_at_iteration"] < 25
    assert io.load_checkpoint(out / "iter0.pt")["model"] is not None
    for f in ("epoch1.pt", "epoch3.pt", "iter25.pt", "final.pt"):
        ck = io.load_checkpoint(out / f)
        assert ck["model"] is None and ck["meta"]["status"] == "diverged", f
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows[-1]["status"] == "diverged"
    assert not (out / "resume.pt").exists()


def test_bf16_autocast_on_cpu_and_accumulation_run(spec, tmp_path):
    r = train_run(dict(spec, precision="bf16"), tmp_path / "bf16", progress=None)
    assert r["status"] == "ok" and r["train_loss"] < 2.5
    st = json.loads((tmp_path / "bf16" / "status.json").read_text())
    assert st["precision"] == "bf16"
    full = train_run(dict(spec, batch_size=60), tmp_path / "full", progress=None)
    acc = train_run(dict(spec, batch_size=60, micro_batch_size=20), tmp_path / "acc", progress=None)
    a, b = _sd(tmp_path / "full" / "final.pt"), _sd(tmp_path / "acc" / "final.pt")
    for k in a:  # small_cnn has no batch norm: accumulation = true batch up to float32 rounding
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert full["train_loss"] == pytest.approx(acc["train_loss"], rel=1e-4)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("patch,key", [
    ({"optimizer": {"name": "rmsprop", "lr": 0.1}}, "optimizer.name"),
    ({"schedule": {"name": "cosine"}}, "schedule.name"),
    ({"model": {"name": "alexnet"}}, "model.name"),
    ({"data": {"name": "mnist"}}, "data.name"),
    ({"optimizer": {"name": "sgd", "lr": 0}}, "optimizer.lr"),
    ({"optimizer": {"name": "adam", "lr": -1e-3}}, "optimizer.lr"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 50, "micro_batch_size": 20}, "micro_batch_size"),
    ({"checkpoints": {"epochs": [2]}}, "checkpoints.epochs"),
    ({"checkpoints": {"iterations": [11]}}, "checkpoints.iterations"),   # 10 iterations in total
    ({"warmup": {"iterations": -5}}, "warmup.iterations"),
    ({"distill": {"teacher": "t.pt", "alpha": 1.5}}, "distill.alpha"),
    ({"distill": {"teacher": "t.pt", "temperature": 0}}, "distill.temperature"),
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentun": 0.9}}, "optimizer.momentun"),
    ({"freeze": {"groups": ["classifier"], "iters": 5}}, "freeze.iters"),
    ({"device": "tpu"}, "device"),
    ({"precision": "fp16"}, "precision"),
])
def test_validate_run_spec_names_the_key(spec, patch, key):
    bad = copy.deepcopy(spec)
    for k, v in patch.items():
        if k == "data":
            bad["data"] = dict(bad["data"], **v)
        else:
            bad[k] = v
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_run_spec(bad)


def test_validate_run_spec_accepts_and_completes(spec):
    full = validate_run_spec(dict(spec, checkpoints={"epochs": [0, 1], "iterations": [10]}))
    assert full["resume_every"] == 50 and full["warmup"]["iterations"] == 0
    assert full["optimizer"]["nesterov"] is False
    # yaml.safe_load reads "1e-3" as a string (YAML 1.1): accepted as the number it means
    adam = validate_run_spec(dict(spec, optimizer={"name": "adam", "lr": "1e-3"}))
    assert adam["optimizer"]["lr"] == 0.001 and adam["optimizer"]["eps"] == 1e-8  # exact: parsed config values
