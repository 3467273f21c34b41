"""Fixtures for tests that need a real SLURM cluster (marker `slurm`).

Which cluster:
  - CLOSERLOOK_SLURM=1: a cluster is promised (CI sets it after
    `ci/slurm/start_cluster.sh`); the tests run and FAIL if it does not answer.
  - CLOSERLOOK_SLURM=0: the tests are skipped (said so in the skip reason).
  - unset: the test cluster of ci/slurm/start_cluster.sh (ClusterName=closerlook)
    is used when it answers; otherwise the tests are SKIPPED with a reason that
    says no cluster is running and how to start one. Another site's cluster that
    happens to answer is never used unless CLOSERLOOK_SLURM=1.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TEST_CLUSTER_NAME = "closerlook"
START_HINT = (
    "start one with `sudo ci/slurm/start_cluster.sh` (stop: ci/slurm/stop_cluster.sh), "
    "then run with CLOSERLOOK_SLURM=1"
)


def _run(cmd, timeout=15):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, "", str(e)
    return p.returncode, p.stdout, p.stderr


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[str, ...]
    gpus: int  # GPUs (gres gpu) summed over the usable nodes

    def gpu_count_note(self) -> str:
        return f"cluster {self.name!r}: nodes {','.join(self.nodes)}, {self.gpus} gres gpu"


def probe_cluster() -> tuple[Cluster | None, str]:
    """(cluster, '') when a controller answers and a node is usable, else (None, why)."""
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return None, "SLURM client commands (sinfo, scontrol) are not installed"
    rc, out, err = _run(["scontrol", "ping"])
    if rc != 0 or "UP" not in out:
        said = ((out + err).strip().splitlines() or [""])[0][:160]
        return None, f"no SLURM controller answers `scontrol ping` ({said})"
    rc, out, err = _run(["scontrol", "show", "config"])
    m = re.search(r"^ClusterName\s*=\s*(\S+)", out, re.M)
    name = m.group(1) if m else "?"
    rc, out, err = _run(["sinfo", "-h", "-N", "-o", "%N|%T|%G"])
    if rc != 0:
        return None, f"`sinfo` failed: {err.strip()[:200]}"
    nodes, gpus = [], 0
    for line in out.splitlines():
        node, state, gres = (line.split("|") + ["", ""])[:3]
        if state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing"):
            nodes.append(node)
            for n in re.findall(r"gpu(?::[^:(,]+)?:(\d+)", gres):
                gpus += int(n)
    if not nodes:
        return None, f"cluster {name!r} has no usable node (sinfo: {out.strip()[:200]})"
    return Cluster(name, tuple(nodes), gpus), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    wanted = os.environ.get("CLOSERLOOK_SLURM", "").strip()
    in_ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    if wanted == "0":
        pytest.skip("SLURM tests disabled by CLOSERLOOK_SLURM=0")
    cluster, why = probe_cluster()
    if wanted == "1":
        # CI may still be starting the cluster in the background: wait for it,
        # but stop waiting as soon as start_cluster.sh reports a failure.
        state = Path(os.environ.get("CLOSERLOOK_SLURM_STATE", "/tmp/closerlook-slurm"))
        deadline = time.time() + float(os.environ.get("CLOSERLOOK_SLURM_WAIT", "240"))
        status = ""
        while cluster is None and time.time() < deadline:
            status = _read(state / "status").strip()
            if status.startswith("failed"):
                break
            time.sleep(1)
            cluster, why = probe_cluster()
        if cluster is None:
            pytest.fail(
                f"CLOSERLOOK_SLURM=1{' (CI)' if in_ci else ''} promises a running SLURM "
                f"cluster, but it is unusable: {why}; start_cluster.sh status: "
                f"{status or 'unknown'}; {state / 'start.log'}:\n{_read(state / 'start.log')[-3000:]}"
            )
        return cluster
    if cluster is None:
        pytest.skip(f"no SLURM cluster running: {why}; {START_HINT}")
    if cluster.name != TEST_CLUSTER_NAME:
        pytest.skip(
            f"a SLURM cluster {cluster.name!r} answers, but it is not the test cluster "
            f"({TEST_CLUSTER_NAME!r}); set CLOSERLOOK_SLURM=1 to submit test jobs to it"
        )
    return cluster


@pytest.fixture
def slurm_run_prefix() -> str:
    """A job-name prefix unique to one test: every SLURM job of that run carries it."""
    return f"cltest-{uuid.uuid4().hex[:10]}"
