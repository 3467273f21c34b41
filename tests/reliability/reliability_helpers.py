"""Shared helpers of the reliability suite: the tiny config, tiny run specs, snakemake in a tmp dir."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml
from testkit import THREADS, thread_env

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def tiny_spec(fmnist_dir, cache_dir, **over) -> dict:
    """A run spec of a few seconds: 200 images, small_cnn width 0.25, 2 epochs of 10 iterations."""
    spec = {
        "name": "rel", "seed": 0,
        "data": {"name": "fashion_mnist", "root": str(fmnist_dir), "cache_dir": str(cache_dir),
                 "train_per_class": 20, "test_per_class": 10, "subset_seed": 0},
        "model": {"name": "small_cnn", "width": 0.25},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "epochs": 2, "batch_size": 20, "augment": True,
        "checkpoints": {"epochs": [1], "iterations": [0, 5]},
        "resume_every": 4, "device": "cpu", "threads": THREADS,
    }
    spec.update(copy.deepcopy(over))
    return spec


def run_snakemake(workdir: Path, configfile: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    """The real snakemake command on the repo's Snakefile, with all results under ``workdir``."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    env = thread_env()
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path
