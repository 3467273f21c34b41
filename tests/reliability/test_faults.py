"""Faults: SIGKILL and rerun, truncated files, a full disk, a diverged run (library level).

The end-to-end version of divergence (and of a killed activation job) through the
real snakemake is in test_workflow_faults.py.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from closerlook import activations, io
from closerlook.train import train_run

from reliability_helpers import tiny_spec
from testkit import THREADS


def _tensors_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # exact: resume on the same CPU is bitwise


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture(scope="module")
def runs(fmnist_dir, data_cache, tmp_path_factory):
    """Two finished tiny runs (seeds 0 and 1) and the data spec they used."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (0, 1):
        spec = tiny_spec(fmnist_dir, data_cache, seed=seed)
        train_run(spec, base / f"seed{seed}", progress=None)
        out[seed] = base / f"seed{seed}"
    out["data"] = tiny_spec(fmnist_dir, data_cache)["data"]
    return out


# ----------------------------------------------------------------------------- SIGKILL + rerun

def _poll_kill(proc, ready, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"process finished before it could be killed:\n{proc.stdout.read()}")
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("timed out waiting for the kill point")


def _resume_iter(path: Path, key) -> int:
    try:
        return int(key(io.safe_torch_load(path)))
    except Exception:
        return -1


def test_training_sigkill_then_rerun_equals_uninterrupted(fmnist_dir, data_cache, tmp_path, capsys):
    spec = tiny_spec(fmnist_dir, data_cache, epochs=3, checkpoints={"epochs": [1, 2], "iterations": [0, 15]})
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(spec))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "closerlook.train", "--spec", str(f), "--out", str(out)]
    env = dict(os.environ, CLOSERLOOK_TEST_ITER_SLEEP="0.05", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _poll_kill(p, lambda: _resume_iter(out / "resume.pt", lambda r: r["state"]["iteration"]) >= 12)
    assert p.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists() and not (out / "status.json").exists()
    assert not [n for n in _listing(out) if ".tmp" in n and n.endswith(".pt") and not n.startswith(".")]
    from closerlook import cli
    assert cli.train_main(cmd[3:]) == 0          # the rerun (in-process: same CLI, no second start-up)
    assert "resume: continuing" in capsys.readouterr().out
    ref = tmp_path / "ref"
    train_run(spec, ref, progress=None)
    for name in ("iter0.pt", "iter15.pt", "epoch1.pt", "epoch2.pt", "final.pt"):
        _tensors_equal(io.load_checkpoint(ref / name)["model"], io.load_checkpoint(out / name)["model"])
    assert json.loads((out / "status.json").read_text())["status"] == "ok"


def _fit_cmd(runs, out, epochs):
    d = runs["data"]
    return [sys.executable, "-m", "closerlook.curves", "fit", "--start", str(runs[0] / "final.pt"),
            "--end", str(runs[1] / "final.pt"), "--out", str(out), "--epochs", str(epochs), "--batch-size", "10",
            "--resume-every", "5", "--seed", "3", "--augment", "--data", d["name"], "--root", d["root"],
            "--cache-dir", d["cache_dir"], "--train-per-class", str(d["train_per_class"]),
            "--test-per-class", str(d["test_per_class"]), "--device", "cpu", "--threads", str(THREADS)]


# the stopping rule on (checked every epoch, never firing: patience above the epochs) adds its
# monitor to every epoch end; a resumed fit must still equal the uninterrupted one bit for bit
_STOP_ARGS = ["--stop-min-delta", "0", "--stop-patience", "100", "--stop-images", "100"]


@pytest.mark.parametrize("extra", [[], _STOP_ARGS], ids=["plain", "stop_rule"])
def test_curve_fit_sigkill_then_rerun_equals_uninterrupted(runs, tmp_path, capsys, extra):
    epochs = 8  # 20 batches per epoch: 160 iterations, a few seconds
    out = tmp_path / "killed"
    fit_cmd = lambda o, e: _fit_cmd(runs, o, e) + extra  # noqa: E731
    p = subprocess.Popen(fit_cmd(out, epochs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # kill mid-epoch once the resume state is past epoch 2
    _poll_kill(p, lambda: _resume_iter(out / "resume.pt", lambda r: r["iteration"]) >= 45)
    assert p.returncode == -signal.SIGKILL
    assert (out / "resume.pt").exists() and not (out / "curve.pt").exists()
    from closerlook import cli
    assert cli.curves_main(fit_cmd(out, epochs)[3:]) == 0     # rerun, in-process
    assert "resumed from" in capsys.readouterr().err
    ref = tmp_path / "ref"
    assert cli.curves_main(fit_cmd(ref, epochs)[3:]) == 0     # uninterrupted reference
    a, b = io.load_checkpoint(ref / "curve.pt"), io.load_checkpoint(out / "curve.pt")
    _tensors_equal(a["model"], b["model"])
    assert a["meta"]["iteration"] == b["meta"]["iteration"] == epochs * 20
    assert not (out / "resume.pt").exists()
    cols = ["epoch", "iteration", "lr", "train_loss", "train_acc", "reg", "status"]
    cols += ["stop_max_loss", "stop_best", "stop_wait", "stopped"] if extra else []
    import pandas as pd
    pd.testing.assert_frame_equal(pd.read_csv(ref / "metrics.csv")[cols], pd.read_csv(out / "metrics.csv")[cols])  # exact: same-CPU resume


_CAPTURE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(int(sys.argv[5]))
    from closerlook.activations import capture_to_store
    from closerlook.data import load_subsets, probe_set
    from closerlook.io import load_checkpoint
    from closerlook.models import analysis_layers, model_from_checkpoint
    ckpt, data, out, flag = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    model = model_from_checkpoint(load_checkpoint(ckpt), ckpt)
    xtr, _, _, _, info = load_subsets(data)
    def slow(x):  # the killed run: announce the first batch, then crawl
        if flag != "-":
            Path(flag).touch()
            time.sleep(0.3)
        return x
    capture_to_store(model, analysis_layers(model), probe_set(xtr, 200), out, meta={"checkpoint": ckpt},
                     batch_size=20, mean=info["mean"], std=info["std"], mode="pool", transform=slow)
""")


def test_activation_capture_sigkill_then_rerun_equals_uninterrupted(runs, tmp_path, monkeypatch):
    ckpt = str(runs[0] / "final.pt")
    data = json.dumps(runs["data"])
    out, flag = tmp_path / "killed", tmp_path / "started"
    p = subprocess.Popen([sys.executable, "-c", _CAPTURE, ckpt, data, str(out), str(flag), str(THREADS)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _poll_kill(p, lambda: flag.exists() and time.sleep(0.5) is None)
    assert p.returncode == -signal.SIGKILL
    # nothing under a final name: no meta.json, no <layer>.npy; only dot-prefixed temp files
    names = _listing(out)
    assert names and all(n.startswith(".") and ".tmp" in n for n in names), names
    with pytest.raises(io.CheckpointError) as ei:
        activations.load_store(out)
    assert str(out / "meta.json") in str(ei.value) and "rerun" in str(ei.value)
    # rerun into the same folder (what snakemake --rerun-incomplete does after removing it; here it is kept)
    ref = tmp_path / "ref"
    for target in (out, ref):      # in-process: the same script body
        monkeypatch.setattr(sys, "argv", ["capture", ckpt, data, str(target), "-", str(THREADS)])
        exec(compile(_CAPTURE, "capture", "exec"), {"__name__": "capture"})
    a, ma = activations.load_store(ref)
    b, mb = activations.load_store(out)
    assert a.keys() == b.keys() and len(a) >= 3
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # exact: same checkpoint, same probe, same CPU
    assert ma["probe_fingerprint"] == mb["probe_fingerprint"]


# ----------------------------------------------------------------------------- truncated files

def test_truncated_checkpoint_names_file_and_recovery(runs, tmp_path):
    src = (runs[0] / "final.pt").read_bytes()
    for n, label in ((len(src) // 2, "half"), (100, "header"), (0, "empty")):
        p = tmp_path / f"{label}.pt"
        p.write_bytes(src[:n])
        with pytest.raises(io.CheckpointError) as ei:
            io.load_checkpoint(p)
        msg = str(ei.value)
        assert str(p) in msg and "rerun" in msg and ("truncated" in msg or "empty" in msg), msg
    with pytest.raises(io.CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "missing.pt")


def test_truncated_activation_npy_names_file_and_recovery(tmp_path):
    acts = {"conv1": np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32),
            "fc": np.arange(500, dtype=np.float32).reshape(50, 10)}
    store = activations.save_store(tmp_path / "store", acts, {"checkpoint": "x.pt"})
    got, _ = activations.load_store(store)
    np.testing.assert_array_equal(got["fc"], acts["fc"])  # exact: the bytes written are read back
    f = store / "fc.npy"
    full = f.read_bytes()
    for n in (len(full) - 40, 60):   # data cut short; header cut short
        f.write_bytes(full[:n])
        with pytest.raises(io.CheckpointError) as ei:
            activations.load_store(store)
        msg = str(ei.value)
        assert str(f) in msg and "rerun" in msg, msg
    f.write_bytes(full)
    (store / "meta.json").write_text('{"format": "closerlook-activations/1", "layers": [')   # truncated JSON
    with pytest.raises(io.CheckpointError, match="meta.json"):
        activations.load_store(store)


# ----------------------------------------------------------------------------- full disk

def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_keeps_the_earlier_output_and_leaves_no_temp_file(runs, tmp_path, monkeypatch):
    d = tmp_path / "out"
    d.mkdir()
    good = d / "final.pt"
    good.write_bytes((runs[0] / "final.pt").read_bytes())
    before = good.read_bytes()
    text = d / "status.json"
    io.atomic_write_json(text, {"status": "ok"})

    # (1) the rename fails (ENOSPC surfaces at os.replace / fsync on some file systems)
    monkeypatch.setattr(io.os, "replace", _enospc)
    with pytest.raises(OSError) as ei:
        io.save_checkpoint(good, {"w": torch.zeros(3)}, {"run": "x"})
    assert ei.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert good.read_bytes() == before and _listing(d) == ["final.pt", "status.json"]

    # (2) the write itself fails half-way: torch.save writes some bytes, then the disk is full
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if hasattr(f, "truncate"):
            f.flush()
            f.truncate(50)
        else:
            with open(f, "r+b") as fh:
                fh.truncate(50)
        _enospc()

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError):
        io.save_checkpoint(good, {"w": torch.zeros(3)}, {"run": "x"})
    monkeypatch.undo()
    assert good.read_bytes() == before and _listing(d) == ["final.pt", "status.json"]
    _tensors_equal(io.load_checkpoint(good)["model"], io.load_checkpoint(runs[0] / "final.pt")["model"])

    # (3) text outputs (metrics, status): a failing write leaves the old file
    real_write = Path.write_bytes

    def failing_write(self, data):
        real_write(self, data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError):
        io.atomic_write_json(text, {"status": "diverged", "pad": "x" * 1000})
    monkeypatch.undo()
    assert json.loads(text.read_text()) == {"status": "ok"} and _listing(d) == ["final.pt", "status.json"]


def test_full_disk_during_activation_capture_keeps_the_earlier_store(runs, tmp_path, monkeypatch):
    from closerlook.models import analysis_layers, model_from_checkpoint

    model = model_from_checkpoint(io.load_checkpoint(runs[0] / "final.pt"))
    probe = torch.randint(0, 255, (60, 1, 28, 28), dtype=torch.uint8)
    store = tmp_path / "store"
    activations.capture_to_store(model, analysis_layers(model), probe, store, batch_size=20)
    old, _ = activations.load_store(store, mmap=False)
    names = _listing(store)

    real = activations.iter_batches

    def failing(*a, **k):   # the second batch hits a full disk
        for i, item in enumerate(real(*a, **k)):
            if i == 1:
                _enospc()
            yield item

    monkeypatch.setattr(activations, "iter_batches", failing)
    model2 = model_from_checkpoint(io.load_checkpoint(runs[1] / "final.pt"))
    with pytest.raises(OSError):
        activations.capture_to_store(model2, analysis_layers(model2), probe, store, batch_size=20)
    monkeypatch.undo()
    assert _listing(store) == names            # no temp file left, nothing new under a final name
    again, _ = activations.load_store(store)
    for k in old:
        np.testing.assert_array_equal(old[k], again[k])  # exact: same checkpoint, same probe, same CPU


# ----------------------------------------------------------------------------- divergence (library level)

def test_diverged_run_is_recorded_and_downstream_marks_it(runs, fmnist_dir, data_cache, tmp_path):
    spec = tiny_spec(fmnist_dir, data_cache, name="boom", optimizer={"name": "sgd", "lr": 1.0e4, "momentum": 0.9},
                     checkpoints={"epochs": [1], "iterations": [0, 5]})
    out = tmp_path / "boom"
    res = train_run(spec, out, progress=None)
    assert res["status"] == "diverged"
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "diverged" and "non-finite" in st["reason"]
    for name in ("iter5.pt", "epoch1.pt", "final.pt"):     # promised checkpoints exist, marked, no weights
        ck = io.load_checkpoint(out / name)
        assert ck["model"] is None and ck["meta"]["status"] == "diverged"
    assert io.load_checkpoint(out / "iter0.pt")["model"] is not None   # the initialisation is fine
    import pandas as pd
    m = pd.read_csv(out / "metrics.csv")
    assert m["status"].iloc[-1] == "diverged"
    # a student of the diverged teacher is itself marked diverged (no crash, every checkpoint written)
    student = tmp_path / "student"
    res = train_run(tiny_spec(fmnist_dir, data_cache, name="student",
                              distill={"teacher": str(out / "final.pt"), "temperature": 4.0, "alpha": 0.9}),
                    student, progress=None)
    assert res["status"] == "diverged"
    assert "teacher" in json.loads((student / "status.json").read_text())["reason"]
    assert io.load_checkpoint(student / "final.pt")["meta"]["status"] == "diverged"
    # a curve to a diverged endpoint: outputs marked diverged, exit 0
    d = runs["data"]
    common = ["--data", d["name"], "--root", d["root"], "--cache-dir", d["cache_dir"], "--train-per-class", "20",
              "--test-per-class", "10", "--device", "cpu"]
    from closerlook import cli
    assert cli.curves_main(["fit", "--start", str(runs[0] / "final.pt"), "--end", str(out / "final.pt"),
                            "--out", str(tmp_path / "c"), "--epochs", "1", "--quiet", *common]) == 0
    assert io.load_checkpoint(tmp_path / "c" / "curve.pt")["meta"]["status"] == "diverged"
    assert cli.curves_main(["evaluate", "--start", str(runs[0] / "final.pt"), "--end", str(out / "final.pt"),
                            "--curve", str(tmp_path / "c" / "curve.pt"), "--out", str(tmp_path / "c.csv"),
                            "--points", "3", "--quiet", *common]) == 0
    t = pd.read_csv(tmp_path / "c.csv")
    assert (t["status"] == "diverged").all() and t["test_acc"].isna().all()


def test_store_rewrite_killed_between_layer_renames_is_refused_not_mixed(runs, tmp_path, monkeypatch):
    """Rewriting an existing store (a rerun after its checkpoint changed): a kill after some layer files
    were renamed into place must not leave a store that reads as complete with old and new layers mixed."""
    from closerlook.models import analysis_layers, model_from_checkpoint

    probe = torch.randint(0, 255, (40, 1, 28, 28), dtype=torch.uint8)
    store = tmp_path / "store"
    m0 = model_from_checkpoint(io.load_checkpoint(runs[0] / "final.pt"))
    activations.capture_to_store(m0, analysis_layers(m0), probe, store, batch_size=20)
    assert len(activations.load_store(store)[0]) >= 3

    real_replace = os.replace
    calls = []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt("simulated kill")   # a BaseException, like the process dying
        real_replace(src, dst)

    m1 = model_from_checkpoint(io.load_checkpoint(runs[1] / "final.pt"))
    monkeypatch.setattr(io.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        activations.capture_to_store(m1, analysis_layers(m1), probe, store, batch_size=20)
    monkeypatch.undo()
    with pytest.raises(io.CheckpointError, match="incomplete"):
        activations.load_store(store)
