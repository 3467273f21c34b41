"""The Snakemake profiles resolve as docs/slurm.md says, and the SLURM plugin turns
the `gpu` resource into the sbatch GPU request the profile comments promise.
No cluster needed (these run in every `make test`)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "profiles" / "slurm"
DEFAULT = REPO / "profiles" / "default"


def resolve(*profiles: Path, argv=()):
    from snakemake.cli import get_argument_parser

    return get_argument_parser(profiles=list(profiles)).parse_args(list(argv))


def test_slurm_profile():
    a = resolve(SLURM)
    assert a.executor == "slurm"
    assert a.retries >= 1  # a cancelled/preempted job is resubmitted
    assert a.rerun_incomplete and a.latency_wait >= 30
    assert a.slurm_status_command == "squeue"
    assert not a.resources, "no global resource cap (e.g. gpu) on a cluster"
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(a.default_resources)
    # gpu_model in default-resources would make every CPU job request a GPU
    assert "gpu_model" not in a.default_resources and "gpu" not in a.default_resources


def test_default_profile():
    a = resolve(DEFAULT)
    assert a.executor in (None, "local")
    assert not a.resources, "no GPU cap: a CPU-only machine runs GPU rules in parallel on the CPU"
    assert a.rerun_incomplete and a.printshellcmds


def test_workflow_profile_does_not_override_slurm_profile():
    """Snakemake loads profiles/default automatically (workflow profile) and its
    values win over --profile: so it must set nothing the SLURM profile needs,
    and `snakemake --profile profiles/slurm` alone gets the cluster settings."""
    slurm = resolve(SLURM)
    both = resolve(SLURM, DEFAULT)
    assert both.executor == "slurm"
    assert both.retries == slurm.retries >= 1
    assert both.keep_going == slurm.keep_going
    assert both.latency_wait == slurm.latency_wait
    assert not both.resources


def _job(**res):
    class Res(dict):
        __getattr__ = dict.__getitem__

    return SimpleNamespace(resources=Res(res), threads=1)


@pytest.mark.parametrize(
    "res, want",
    [
        ({"gpu": 1}, " --gpus=1"),
        ({"gpu": 2}, " --gpus=2"),
        ({"gpu": 0}, ""),  # CPU-only config: no GPU request at all
        ({}, ""),
        ({"gpu": 1, "gpu_model": "a100"}, " --gpus=a100:1"),
        ({"gpu_model": "a100"}, " --gpus=a100:1"),  # the trap: model alone asks for a GPU
    ],
)
def test_plugin_gpu_request(res, want):
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    assert utils.set_gres_string(_job(**res)) == want
