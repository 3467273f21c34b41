"""config/gpu_smoke.yaml: the paper DAG shrunk for one GPU plans, and runs here on the CPU when
shrunk further with ``--config`` overrides (the way a user shrinks it on the command line).

Snakemake reads nested ``--config`` values with YAML's BaseLoader (every scalar a string);
``closerlook.config.retype_cli_values`` (called in common.smk before validation) reads them as
YAML, so these overrides validate as numbers - the run below fails without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from testkit import THREADS

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "gpu_smoke.yaml"
CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"


def _snakemake(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(SMOKE), "--cores", "2", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS=str(THREADS))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _cpu_overrides() -> list[str]:
    """--config entries: CIFAR-10 from the shared zip, 500 training images, a small CNN, 1 thread.

    400 probe images: CCA needs more datapoints than the small CNN's 256-wide FC layers have neurons."""
    cfg = yaml.safe_load(SMOKE.read_text())
    model = "{name: small_cnn, width: 0.25}"   # VGG-16's 4096-wide FC layers cost minutes on a CPU
    runs = {r: "{batch_size: 100, micro_batch_size: 50}" for r, v in cfg["runs"].items()
            if (v or {}).get("batch_size", 0) > 100}
    runs["poorinit"] = f"{{model: {model}}}"
    runs_yaml = "{" + ", ".join(f"{r}: {v}" for r, v in runs.items()) + "}"
    stage = f"{{threads: {THREADS}}}"
    return ["--config", "name=gpu_smoke_cpu",
            "data={name: cifar10_jpeg, root: null, train_per_class: 50, test_per_class: 10, probe_size: 400}",
            f"defaults={{model: {model}, threads: {THREADS}, device: cpu}}",
            f"runs={runs_yaml}",
            "curve_defaults={epochs: 1, eval_train_images: 200}",
            "similarity={subsamples: {count: 2, size: 200}}",
            f"resources={{train: {stage}, curves: {stage}, activations: {stage}, similarity: {stage}}}"]


def test_gpu_smoke_plans_every_stage(tmp_path):
    r = _snakemake(tmp_path, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-4000:]
    out = r.stdout + r.stderr
    cfg = yaml.safe_load(SMOKE.read_text())
    for rule in [f"train_{run}" for run in cfg["runs"]] + ["fit_curve", "evaluate_paths", "plane",
                                                           "extract_activations", "similarity", "figure", "claims"]:
        assert rule in out, f"{rule} missing from the plan:\n{out[-3000:]}"


def test_smoke_pairs_and_subsamples_as_the_paper_config():
    """Fig. 1 joins G seed 0 with each variant's seed 1 (same seed = same init and batches, which
    makes connecting easier), and the subsamples are wider than VGG-16's 4,096-wide FC layers
    (narrower ones leave CCA undefined: NaN rows)."""
    cfg = yaml.safe_load(SMOKE.read_text())
    for name in cfg["figures"]["fig1_robustness"]["curves"]:
        c = cfg["curves"][name]
        assert c["start"]["seed"] != c["end"]["seed"], name
        assert c["end"]["seed"] in cfg["runs"][c["end"]["run"]].get("seeds", cfg["defaults"]["seeds"]), name
    sub = cfg["similarity"]["subsamples"]
    assert 4096 < sub["size"] < cfg["data"]["probe_size"]


def test_cli_overrides_are_typed_before_validation(tmp_path):
    """A nested --config number reaches the schema as a number: a wrong one is refused by name."""
    r = _snakemake(tmp_path, "-n", "--quiet", "--config", "data={train_per_class: 0}")
    assert r.returncode != 0 and "train_per_class" in (r.stdout + r.stderr)
    r = _snakemake(tmp_path, "-n", "--quiet", *_cpu_overrides())
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.slow
def test_gpu_smoke_runs_shrunk_on_cpu(tmp_path):
    if not CIFAR_ZIP.exists():
        pytest.skip(f"CIFAR-10 zip not found at {CIFAR_ZIP} (see ../shared/data/README.md)")
    r = _snakemake(tmp_path, *_cpu_overrides())
    assert r.returncode == 0, f"shrunk smoke run failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    res = tmp_path / "results" / "gpu_smoke_cpu"
    for fig in ("fig1_robustness", "fig2_sgdr", "fig3_plane", "fig4_warmup", "fig5_freeze", "fig6_distill"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    claims = json.loads((res / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == ["1a", "1b", "2a", "2b", "3", "4", "5a", "5b", "6", "7"]
    info = json.loads((res / "data" / "info.json").read_text())
    assert info["train_images"] == 500 and info["data"]["name"] == "cifar10_jpeg"  # the overrides arrived typed
