"""Resume after a real SIGKILL ends bit for bit where an uninterrupted run ends (CPU)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from closerlook import io
from closerlook.train import train_run
from testkit import THREADS, thread_env


def _spec(fmnist_dir, data_cache):
    # 200 images, batch 20: 10 iterations per epoch, 30 in all; augmentation on, momentum + wd,
    # SGDR, a frozen classifier for the first 8 iterations and dropout in the model: every piece
    # of state (optimizer, scheduler, RNG, data position, freezing) must come back exactly.
    return {
        "name": "resume", "seed": 3,
        "data": {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(data_cache),
                 "train_per_class": 20, "test_per_class": 10, "subset_seed": 0},
        "model": {"name": "small_cnn", "width": 0.25, "dropout": 0.3},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
        "schedule": {"name": "sgdr", "T0": 1, "Tmult": 2, "lr_min": 1e-5},
        "warmup": {"iterations": 5, "start_factor": 0.1},
        "freeze": {"groups": ["classifier"], "iterations": 8},
        "epochs": 3, "batch_size": 20, "augment": True,
        "checkpoints": {"epochs": [1, 2], "iterations": [0, 12, 21]},
        "resume_every": 4, "device": "cpu", "threads": THREADS,
    }


def _resume_iteration(out):
    p = out / "resume.pt"
    if not p.exists():
        return -1
    try:
        return int(io.safe_torch_load(p)["state"]["iteration"])
    except Exception:
        return -1


def _start(spec_file, out):
    env = thread_env(CLOSERLOOK_TEST_ITER_SLEEP="0.04")
    return subprocess.Popen([sys.executable, "-m", "closerlook.train", "--spec", str(spec_file), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, out, min_iteration, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"run finished before it could be killed:\n{proc.stdout.read()}")
        it = _resume_iteration(out)
        if it >= min_iteration:
            time.sleep(0.03)  # land somewhere between two saves
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return it
        time.sleep(0.01)
    proc.kill()
    pytest.fail("timed out waiting for resume.pt")


def test_sigkill_and_resume_gives_identical_weights(fmnist_dir, data_cache, tmp_path):
    spec = _spec(fmnist_dir, data_cache)
    spec_file = tmp_path / "run.json"
    spec_file.write_text(json.dumps(spec))
    killed = tmp_path / "killed"

    p = _start(spec_file, killed)
    it1 = _kill_when(p, killed, 6)            # inside epoch 1, while the classifier is still frozen
    assert p.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    p = _start(spec_file, killed)
    it2 = _kill_when(p, killed, 24)           # inside epoch 3
    assert it2 > it1
    assert not (killed / "status.json").exists()
    done = subprocess.run([sys.executable, "-m", "closerlook.train", "--spec", str(spec_file), "--out", str(killed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resume: continuing" in done.stdout

    ref = tmp_path / "ref"
    train_run(spec, ref, progress=None)

    for f in ("final.pt", "epoch1.pt", "epoch2.pt", "iter0.pt", "iter12.pt", "iter21.pt"):
        a, b = io.load_checkpoint(ref / f), io.load_checkpoint(killed / f)
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (f, k)  # exact: resume on the same CPU is bitwise (train.py promise)
        assert a["meta"]["iteration"] == b["meta"]["iteration"]
    ra = list(csv.DictReader(open(ref / "metrics.csv")))
    rb = list(csv.DictReader(open(killed / "metrics.csv")))
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        for col in ("epoch", "iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "status"):
            assert x[col] == y[col], col  # exact: same-CPU resume reproduces every metric digit
    assert json.loads((killed / "status.json").read_text())["status"] == "ok"
    assert not (killed / "resume.pt").exists()
    # a finished run is not retrained
    msgs = []
    again = train_run(spec, killed, progress=msgs.append)
    assert again["status"] == "ok" and "already complete" in msgs[0]


def test_outputs_of_another_spec_are_not_trusted(fmnist_dir, data_cache, tmp_path):
    spec = dict(_spec(fmnist_dir, data_cache), epochs=1, freeze=None, checkpoints={"epochs": [1], "iterations": [0]})
    out = tmp_path / "o"
    # a finished run of another spec in the same directory, plus a foreign resume.pt
    train_run(dict(spec, seed=99), out, progress=None)
    io.atomic_torch_save({"format": "closerlook-resume/1", "key": "0" * 16}, out / "resume.pt")
    msgs = []
    train_run(spec, out, progress=msgs.append)
    assert any("other settings" in m for m in msgs) and not any("already complete" in m for m in msgs)
    ref = tmp_path / "ref"
    train_run(spec, ref, progress=None)
    for f in ("final.pt", "epoch1.pt", "iter0.pt"):
        a, b = io.load_checkpoint(ref / f)["model"], io.load_checkpoint(out / f)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f  # exact: resume on the same CPU is bitwise
