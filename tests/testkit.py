"""What every test module shares: the thread knob and the tiny config as the tests run it.

``CLOSERLOOK_TEST_THREADS`` (default 1) is the one place that decides how many
threads the suite's torch computations use: this process (conftest), every run
spec and library CLI the tests start, and every job of the tiny config run
through the real ``snakemake``. Run the suite with 1 and with 2: a test whose
result depends on the thread count compares floats too tightly.

(A module name of its own: ``import conftest`` resolved to tests/slurm/conftest.py
on a fresh clone.)
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
THREADS = int(os.environ.get("CLOSERLOOK_TEST_THREADS", "1") or 1)
if THREADS < 1:
    raise ValueError(f"CLOSERLOOK_TEST_THREADS={THREADS}: must be a positive integer")
# every workflow stage that takes a thread count (config `resources:` blocks)
_STAGES = ("train", "curves", "activations", "similarity")


def thread_env(**extra: str) -> dict:
    """The environment for a subprocess of the suite: BLAS/OpenMP threads = the knob."""
    return dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1", **extra)


def with_threads(cfg: dict) -> dict:
    """A workflow config whose runs and stage jobs use the knob's thread count."""
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("defaults", {})["threads"] = THREADS
    res = cfg.setdefault("resources", {}) or {}
    cfg["resources"] = res
    for stage in _STAGES:
        res.setdefault(stage, {})["threads"] = THREADS
    return cfg


def tiny_config() -> dict:
    """config/tiny.yaml as the tests run it (thread knob applied)."""
    return with_threads(yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))


def write_tiny(dest: Path) -> Path:
    dest.write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    return dest


def randomise_bn(sd: dict, seed: int) -> dict:
    """Non-trivial BN parameters and statistics (at init they are 1 / 0: a permutation would leave them
    equal), so that the BN entries carry the permutation too. Shared by the alignment tests."""
    import torch  # here, not at the top: testkit is imported by tests that keep torch out of their process

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if k.endswith(("running_var", "weight")) and v.dim() == 1:
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")) and v.dim() == 1:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
        else:
            out[k] = v
    return out
