"""The same seed twice on the CPU: identical metrics (but timings) and identical checkpoint tensors."""
import csv
import hashlib
import json

import torch

from closerlook import io
from closerlook.train import train_run

from reliability_helpers import tiny_spec

TIMING = {"wall_s", "images_per_s"}


def _tensor_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(path))]


def test_same_seed_twice_is_identical_and_another_seed_is_not(fmnist_dir, data_cache, tmp_path):
    # augmentation, momentum, weight decay, warmup and dropout: every source of randomness is in play
    spec = tiny_spec(fmnist_dir, data_cache, model={"name": "small_cnn", "width": 0.25, "dropout": 0.2},
                     warmup={"iterations": 4, "start_factor": 0.1}, seed=7)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train_run(spec, a, progress=None)
    train_run(spec, b, progress=None)
    train_run(dict(spec, seed=8), c, progress=None)

    ra, rb = _rows(a / "metrics.csv"), _rows(b / "metrics.csv")
    assert len(ra) == 2 and ra == rb
    assert ra != _rows(c / "metrics.csv")
    for name in ("iter0.pt", "iter5.pt", "epoch1.pt", "final.pt"):
        ca, cb, cc = (io.load_checkpoint(d / name) for d in (a, b, c))
        assert _tensor_hash(ca["model"]) == _tensor_hash(cb["model"]), name
        assert _tensor_hash(ca["model"]) != _tensor_hash(cc["model"]), name
        assert ca["meta"] == cb["meta"], name
        # the files themselves are byte-identical (torch.save gets a file object, not the random temp name)
        assert hashlib.sha256((a / name).read_bytes()).digest() == hashlib.sha256((b / name).read_bytes()).digest(), name
    sa, sb = (json.loads((d / "status.json").read_text()) for d in (a, b))
    for s in (sa, sb):
        for k in TIMING:
            s["final"].pop(k)
    assert sa == sb
