"""Through the real snakemake: a run that diverges flows through every stage (curves, plane,
activations, similarity, figures, claims) marked diverged, nothing crashes; a data cache_dir full
of spaces and quotes is just a path; a snakemake killed mid-extraction reruns to the same arrays.
"""
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closerlook import activations, io

from reliability_helpers import REPO, SNAKEMAKE, run_snakemake, write_yaml
from testkit import with_threads

pytestmark = pytest.mark.slow
CACHE = "data cache 'q\" ;x $(touch pwned)"


def _config(tiny_cfg):
    cfg = with_threads({
        "name": "div",
        "data": dict(tiny_cfg["data"], cache_dir=CACHE),
        "defaults": dict(tiny_cfg["defaults"], epochs=2, schedule={"name": "constant"},
                         checkpoints={"epochs": [1], "iterations": [0, 3]}),
        "runs": {
            "sgd": {},
            "boom": {"optimizer": {"name": "sgd", "lr": 1.0e4, "momentum": 0.9, "weight_decay": 5.0e-4}},
        },
        "curve_defaults": {"epochs": 1, "batch_size": 50, "points": 3},
        "curves": {"G-A": {"start": {"run": "sgd", "final": True}, "end": {"run": "boom", "final": True}}},
        "planes": {"p": {"curve": "G-A", "grid": [3, 3], "project": {"run": "boom", "epochs": [1]}}},
        "activations": {"mode": "pool", "batch_size": 100},
        "similarity": {"measures": ["cca_mean", "linear_cka"], "chance": True, "comparisons": {
            "w-sgd": {"a": {"run": "sgd", "iteration": 0}, "b": {"run": "sgd", "iteration": 3}},
            "w-boom": {"a": {"run": "boom", "iteration": 0}, "b": {"run": "boom", "iteration": 3}},
        }},
        "figures": {
            "format": ["png"], "dpi": 50,
            "fig1_robustness": {"curves": ["G-A"]},
            "fig3_plane": {"plane": "p"},
            "fig4_warmup": {"runs": {"LB no warmup": "sgd", "LB warmup": "boom"},
                            "comparisons": {"LB no warmup": "w-sgd", "LB warmup": "w-boom"}, "measure": "cca_mean"},
        },
        "claims": dict(tiny_cfg.get("claims") or {}),
    })
    return cfg


@pytest.fixture(scope="module")
def done(tiny_cfg, fmnist_dir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("diverged e2e")     # a space in the working directory too
    cf = write_yaml(wd / "div.yaml", _config(tiny_cfg))
    r = run_snakemake(wd, cf, "--cores", "2", timeout=900)
    assert r.returncode == 0, f"pipeline failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return wd, cf


def test_diverged_run_is_recorded(done):
    wd, _ = done
    R = wd / "results" / "div"
    st = json.loads((R / "runs/boom/seed0/status.json").read_text())
    assert st["status"] == "diverged" and "non-finite" in st["reason"]
    assert json.loads((R / "runs/sgd/seed0/status.json").read_text())["status"] == "ok"
    assert pd.read_csv(R / "runs/boom/seed0/metrics.csv")["status"].iloc[-1] == "diverged"
    assert io.load_checkpoint(R / "runs/boom/seed0/final.pt")["model"] is None


def test_downstream_tables_are_marked_diverged(done):
    wd, _ = done
    R = wd / "results" / "div"
    for f in ("curves/G-A/seed0/curve.csv", "curves/G-A/seed0/line.csv", "planes/p/seed0/grid.csv",
              "planes/p/seed0/points.csv", "similarity/w-boom/seed0.csv"):
        t = pd.read_csv(R / f)
        assert "status" in t.columns and (t["status"] == "diverged").all(), f
    assert io.load_checkpoint(R / "curves/G-A/seed0/curve.pt")["meta"]["status"] == "diverged"
    _, meta = activations.load_store(R / "activations/boom/seed0/iter3")
    assert meta["status"] == "diverged"
    ok = pd.read_csv(R / "similarity/w-sgd/seed0.csv")       # the healthy run is computed as usual
    assert np.isfinite(ok["value"]).all() and (ok.get("status", pd.Series(["ok"])) != "diverged").all()
    for fig in ("fig1_robustness", "fig3_plane", "fig4_warmup"):
        assert (R / "figures" / f"{fig}.png").stat().st_size > 1000


def test_claims_that_need_the_diverged_run_are_inconclusive(done):
    wd, _ = done
    R = wd / "results" / "div"
    claims = json.loads((R / "claims.json").read_text())
    items = list(claims["claims"].values() if isinstance(claims["claims"], dict) else claims["claims"])
    assert items and all(c["verdict"] == "inconclusive" for c in items)   # nothing judged on NaN numbers
    # the robustness claim (curve G-A to the diverged run) and the plane claim say why
    assert sum("diverged" in json.dumps(c) for c in items) >= 2
    assert (R / "claims.md").read_text().count("inconclusive") >= 1


def test_cache_dir_with_quotes_is_a_path_and_nothing_else_is_created(done):
    wd, _ = done
    names = sorted(p.name for p in (wd / CACHE).iterdir())
    assert names == ["fashion_mnist-test.pt", "fashion_mnist-train.pt", "logs"], names   # logs: the data job's log
    assert sorted(p.name for p in wd.iterdir() if not p.name.startswith(".")) == sorted([CACHE, "div.yaml", "results"])
    assert not list(wd.rglob("pwned")) and not (REPO / "pwned").exists()


SLOW_HOOK = textwrap.dedent("""
    # Test hook (only in this test's PYTHONPATH): slow the activation job down so it can be killed mid-way.
    import os, sys, time
    if os.environ.get("CL_TEST_SLOW_ACTIVATIONS") and any("extract_activations" in a for a in sys.argv):
        import closerlook.activations as _A
        _real = _A.iter_batches
        def _slow(*a, **k):
            for item in _real(*a, **k):
                time.sleep(1.5)
                yield item
        _A.iter_batches = _slow
""")


def test_snakemake_killed_mid_extraction_reruns_to_the_same_arrays(done, tmp_path):
    wd, cf = done
    R = wd / "results" / "div"
    store = R / "activations/sgd/seed0/iter3"
    before, _ = activations.load_store(store, mmap=False)
    target = str(store.relative_to(wd))
    shutil.rmtree(store)          # the extraction has to run (as on a first run)
    (tmp_path / "sitecustomize.py").write_text(SLOW_HOOK)
    # the hook's folder first, then whatever PYTHONPATH already names (the checkout under test)
    env = dict(os.environ, CL_TEST_SLOW_ACTIVATIONS="1",
               PYTHONPATH=os.pathsep.join(x for x in (str(tmp_path), os.environ.get("PYTHONPATH")) if x))
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd), "--configfile", str(cf),
           "--cores", "1", target]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    t0 = time.time()
    while not (store.exists() and any(n.name.startswith(".") for n in store.iterdir())):
        assert p.poll() is None, f"snakemake ended before the kill:\n{p.stdout.read()[-3000:]}"
        assert time.time() - t0 < 180, "timed out waiting for the extraction to start"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)   # snakemake and its job, as a crash or an OOM kill would
    p.wait()
    assert store.exists() and not (store / "meta.json").exists()
    leftovers = [n.name for n in store.iterdir()]
    assert any(".tmp" in n for n in leftovers) and all(n.startswith(".") for n in leftovers), leftovers
    with pytest.raises(io.CheckpointError, match="incomplete"):
        activations.load_store(store)   # half-written: refused, not read
    # recovery: unlock (a killed snakemake leaves its lock) and rerun; the incomplete output is redone
    r = run_snakemake(wd, cf, "--unlock")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_snakemake(wd, cf, "--cores", "1", "--rerun-incomplete", target)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    after, _ = activations.load_store(store)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])  # exact: same checkpoint, same probe, same CPU
    # no temp file of the killed job left behind (.snakemake_timestamp is snakemake's directory marker)
    assert not [n.name for n in store.iterdir() if ".tmp" in n.name]
