"""The whole DAG on a model nobody here wrote: torchvision's ResNet-18 (adapted to grey 28x28
images by `adapt: io`), read from a torchvision data-set class, with configured analysis layers
and freeze groups; a fitted curve, a similarity comparison and one figure, through the real
`snakemake` (about two minutes on 2 cores)."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from testkit import thread_env, with_threads

from closerlook.io import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
LAYERS = ["relu", "layer1", "layer2", "layer3", "layer4", "fc"]


def _config(tv_root: Path) -> dict:
    return with_threads({
        "name": "tvnet",
        "data": {"name": "torchvision:FashionMNIST", "root": str(tv_root), "download": False,
                 "cache_dir": "resources/data", "train_per_class": 20, "test_per_class": 10, "probe_size": 200},
        "defaults": {
            "model": {"name": "torchvision:resnet18", "adapt": "io", "analysis_layers": ["relu", "layer*", "fc"],
                      "groups": {"classifier": ["fc"]}},
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
            "schedule": {"name": "constant"}, "epochs": 2, "batch_size": 50, "augment": False, "seeds": [0],
            "checkpoints": {"epochs": [1], "iterations": [0, 2]},
        },
        "runs": {"a": {"freeze": {"groups": ["classifier"], "iterations": 2}}},
        "curve_defaults": {"kind": "bezier", "num_bends": 3, "epochs": 1, "lr": 0.01, "batch_size": 50, "points": 3,
                           "bn_batches": 2},
        "curves": {"a-w1-w2": {"start": {"run": "a", "epoch": 1}, "end": {"run": "a", "final": True}}},
        # CKA: 512 channels in layer4 against 200 probe images would leave CCA at 1 by construction
        "similarity": {"measures": ["linear_cka"], "chance": False,
                       "comparisons": {"init-final": {"a": {"run": "a", "iteration": 0}, "b": {"run": "a", "final": True}}}},
        "figures": {"format": ["png"], "dpi": 50, "fig1_robustness": {"curves": ["a-w1-w2"]}},
    })


@pytest.fixture(scope="module")
def done(tmp_path_factory, fmnist_dir):
    wd = tmp_path_factory.mktemp("tv-e2e")
    raw = wd / "tv" / "FashionMNIST" / "raw"  # torchvision's layout, from Debian's .gz files
    raw.mkdir(parents=True)
    for gz in fmnist_dir.glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (wd / "cfg.yaml").write_text(yaml.safe_dump(_config(wd / "tv"), sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
           "--configfile", str(wd / "cfg.yaml"), "--cores", "2",
           "all", "results/tvnet/similarity/init-final/seed0.csv"]  # no figure of this config reads it
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                       env=thread_env(PYTHONPATH=str(REPO / "src")))
    assert r.returncode == 0, f"pipeline failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return wd / "results" / "tvnet"


def test_the_figure_is_drawn_from_a_torchvision_model(done):
    assert (done / "figures" / "fig1_robustness.png").stat().st_size > 1000
    meta = load_checkpoint(done / "runs" / "a" / "seed0" / "final.pt")["meta"]
    assert meta["model"]["name"] == "torchvision:resnet18" and meta["data"]["name"] == "torchvision:FashionMNIST"
    assert (meta["data"]["in_channels"], meta["data"]["num_classes"]) == (1, 10)
    for kind in ("curve", "line"):
        t = pd.read_csv(done / "curves" / "a-w1-w2" / "seed0" / f"{kind}.csv")
        assert len(t) == 3 and t["train_loss"].notna().all() and (t["status"] == "ok").all()


def test_configured_layers_are_the_ones_compared(done):
    t = pd.read_csv(done / "similarity" / "init-final" / "seed0.csv")
    assert list(t.sort_values("layer_index")["layer"]) == LAYERS  # forward order
    assert t["value"].between(0, 1 + 1e-9).all()  # CKA in [0, 1] (float64 rounding)
    store = json.loads((done / "activations" / "a" / "seed0" / "final" / "meta.json").read_text())
    assert [entry["name"] for entry in store["layers"]] == LAYERS


def test_the_configured_classifier_group_is_frozen_for_its_iterations(done):
    run = done / "runs" / "a" / "seed0"
    w0, w2 = (load_checkpoint(run / f"{tag}.pt")["model"] for tag in ("iter0", "iter2"))
    # groups: {classifier: [fc]} frozen for 2 iterations: fc untouched, the features trained
    assert w0["fc.weight"].equal(w2["fc.weight"]) and w0["fc.bias"].equal(w2["fc.bias"])  # exact: no update
    assert not w0["conv1.weight"].equal(w2["conv1.weight"])
    assert json.loads((done / "data" / "info.json").read_text())["train_images"] == 200
