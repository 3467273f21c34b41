"""End-to-end runs through `snakemake --profile profiles/slurm` on a real SLURM
cluster (see conftest.py for when these run, skip or fail).

a) GPU rules are submitted with a GPU request (checked on SLURM's side:
   `scontrol show job -d` -> TresPerJob gres:gpu / JOB_GRES gpu, and the GPU index
   SLURM gave each running job), two GPU jobs run at once on different GPUs and
   each saw its own CUDA_VISIBLE_DEVICES; CPU rules request no GPU.
b) Preemption: a checkpointing job is `scancel`-ed mid-run; Snakemake resubmits it
   (profile: retries) and the new SLURM job resumes from its last checkpoint
   ("resumed from step K", K > 0); the result equals an uninterrupted run's.

The workflow under test is a parameter (WorkflowCase / PreemptCase): today the
fixture workflow in tests/slurm/fixture; the project's workflow with
`--configfile config/tiny.yaml` plugs in the same way.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixture"

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


# ---------------------------------------------------------------- cases -------

@dataclass
class WorkflowCase:
    id: str
    snakefile: Path | None            # None: the repository's workflow/Snakefile
    configfile: Path | None = None
    config: dict = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    gpu_rules: tuple[str, ...] = ()   # rules that must request a GPU
    cpu_rules: tuple[str, ...] = ()   # rules that must not
    concurrent_gpu_jobs: int = 2      # at least this many GPU jobs must overlap
    # outputs (relative to the run dir) holding JSON with the CUDA_VISIBLE_DEVICES
    # and SLURM_JOB_ID each GPU job saw; () when the workflow does not record them
    cvd_outputs: tuple[str, ...] = ()
    timeout_s: int = 240


@dataclass
class PreemptCase:
    id: str
    snakefile: Path | None
    configfile: Path | None = None
    config: dict = field(default_factory=dict)
    target: str = ""
    rule: str = ""                    # the rule whose SLURM job is cancelled
    state_file: str = ""              # checkpoint written during the run (not an output)
    checkpoints_before_kill: int = 3  # distinct checkpoint writes seen before scancel
    resume_log: str = ""              # file whose lines say "resumed from step K"
    resume_re: str = r"resumed from step (\d+)"
    final_output: str = ""            # compared with an uninterrupted local run
    compare: Callable[[Path, Path], None] | None = None
    timeout_s: int = 300


GPU_CASES = [
    WorkflowCase(
        id="fixture",
        snakefile=FIXTURE / "Snakefile",
        config={"gpu_seconds": 20},
        gpu_rules=("gpu_probe",),
        cpu_rules=("summary",),
        cvd_outputs=("results/gpu_a.txt", "results/gpu_b.txt"),
    ),
    # Later: the project's tiny config, e.g.
    # WorkflowCase(id="tiny", snakefile=None, configfile=REPO / "config/tiny.yaml",
    #              gpu_rules=("train",), cpu_rules=(...)),
]

PREEMPT_CASES = [
    PreemptCase(
        id="fixture",
        snakefile=FIXTURE / "Snakefile",
        config={"long_steps": 24, "long_step_seconds": 0.5},
        target="preempt",
        rule="long_job",
        state_file="results/state/long/state.json",
        resume_log="results/state/long/history.log",
        final_output="results/long/final.json",
    ),
    # Later: the training engine (resume.pt in its run dir), e.g.
    # PreemptCase(id="tiny-train", snakefile=None, configfile=REPO / "config/tiny.yaml",
    #             target="results/tiny/runs/<run>/final.pt", rule="train",
    #             state_file="results/tiny/runs/<run>/resume.pt", ...)
]


# -------------------------------------------------------------- helpers -------

def snakemake_slurm_cmd(workdir: Path, *, snakefile, configfile, config, targets,
                        prefix: str, extra=()) -> list[str]:
    """The documented SLURM command (profiles/slurm with the workflow profile
    switched off) plus test-only overrides that keep runs on the one-node test
    cluster quick."""
    cmd = [
        sys.executable, "-m", "snakemake", *targets,  # targets first: --config takes many values
        "--workflow-profile", "none",
        "--profile", str(REPO / "profiles" / "slurm"),
        "--directory", str(workdir),
        # test-only overrides
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        "--slurm-jobname-prefix", prefix,
        "--slurm-keep-successful-logs",
        "--latency-wait", "10",
    ]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    if config:
        cmd += ["--config", *[f"{k}={v}" for k, v in config.items()]]
    return cmd + list(extra)


def local_snakemake_cmd(workdir: Path, *, snakefile, configfile, config, targets) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", *targets, "--workflow-profile", "none",
           "--cores", "1", "--directory", str(workdir)]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    if config:
        cmd += ["--config", *[f"{k}={v}" for k, v in config.items()]]
    return cmd


def sh(cmd: list[str], timeout: float = 20) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def run_jobs(prefix: str) -> dict[str, dict]:
    """Every job of the run (name starts with prefix; squeue keeps finished jobs for
    MinJobAge): id -> {comment, state}."""
    out = sh(["squeue", "-h", "--states=all", "-o", "%i|%j|%k|%T"])
    jobs = {}
    for line in out.splitlines():
        jid, name, comment, state = (line.split("|") + ["", "", ""])[:4]
        if name.startswith(prefix):
            jobs[jid.strip()] = {"comment": comment.strip(), "state": state.strip()}
    return jobs


def job_details(jid: str) -> str:
    return sh(["scontrol", "show", "job", "-d", jid])


def rule_of(comment: str) -> str:
    # the plugin's comment: rule_<name> or rule_<name>_wildcards_<wc>
    return re.sub(r"_wildcards_.*$", "", comment.removeprefix("rule_"))


def gres_indices(details: str) -> set[str]:
    """GPU indices of a RUNNING job, from `scontrol show job -d`:
    '... GRES=gpu:fake:1(IDX:0)' (a finished job shows 'GRES=')."""
    idx = set()
    for spec in re.findall(r"\bGRES=\S*?\(IDX:([0-9,\-]+)\)", details):
        for part in spec.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                idx.update(str(i) for i in range(int(lo), int(hi) + 1))
            elif part:
                idx.add(part)
    return idx


class JobMonitor(threading.Thread):
    """Polls SLURM while a run is going: which jobs of the run run, and on which GPUs."""

    def __init__(self, prefix: str, period: float = 0.5):
        super().__init__(daemon=True)
        self.prefix, self.period = prefix, period
        self.stop_evt = threading.Event()
        self.samples: list[tuple[float, dict[str, set[str]]]] = []  # (t, {jid: gpu idx})
        self.gpu_idx: dict[str, set[str]] = {}
        self.errors: list[str] = []

    def run(self):
        while not self.stop_evt.is_set():
            try:
                running = {}
                for jid, info in run_jobs(self.prefix).items():
                    if info["state"] == "RUNNING":
                        idx = gres_indices(job_details(jid))
                        running[jid] = idx
                        if idx:
                            self.gpu_idx.setdefault(jid, set()).update(idx)
                self.samples.append((time.time(), running))
            except Exception as e:  # keep polling; report at the end
                self.errors.append(repr(e))
            self.stop_evt.wait(self.period)

    def stop(self):
        self.stop_evt.set()
        self.join(10)


def wait_run(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # snakemake cancels its SLURM jobs on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        pytest.fail(f"snakemake did not finish within {timeout}s; log:\n{tail(log)}")


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{e}>"


# ---------------------------------------------------------------- tests -------

@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_gpu_rules_get_their_own_gpu(case: WorkflowCase, slurm_cluster, slurm_run_prefix, tmp_path):
    if slurm_cluster.gpus < case.concurrent_gpu_jobs:
        msg = (f"needs {case.concurrent_gpu_jobs} GPUs (gres gpu); "
               f"{slurm_cluster.gpu_count_note()}")
        if os.environ.get("CLOSERLOOK_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    workdir = tmp_path / "run"
    workdir.mkdir()
    log = tmp_path / "snakemake.log"
    cmd = snakemake_slurm_cmd(workdir, snakefile=case.snakefile, configfile=case.configfile,
                              config=case.config, targets=case.targets, prefix=slurm_run_prefix)
    monitor = JobMonitor(slurm_run_prefix)
    monitor.start()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = wait_run(proc, case.timeout_s, log)
        finally:
            monitor.stop()
    assert rc == 0, f"snakemake failed (rc {rc}):\n{tail(log)}"
    assert not monitor.errors or monitor.samples, f"SLURM polling failed: {monitor.errors[:3]}"

    # SLURM's record of every job of this run (finished jobs stay for MinJobAge)
    jobs = run_jobs(slurm_run_prefix)
    by_rule: dict[str, list[str]] = {}
    for jid, info in jobs.items():
        by_rule.setdefault(rule_of(info["comment"]), []).append(jid)
    for rule in case.gpu_rules + case.cpu_rules:
        assert by_rule.get(rule), f"no SLURM job for rule {rule!r}; jobs: {jobs}"
    for rule in case.gpu_rules:
        for jid in by_rule[rule]:
            d = job_details(jid)
            assert re.search(r"TresPer(Job|Node|Task)=\S*gres[:/]gpu", d), \
                f"job {jid} (rule {rule}) was submitted without a GPU request:\n{d}"
            assert re.search(r"JOB_GRES=gpu", d), f"job {jid} (rule {rule}) got no GPU:\n{d}"
            assert jobs[jid]["state"] == "COMPLETED", f"job {jid}: {jobs[jid]}"
    for rule in case.cpu_rules:
        for jid in by_rule[rule]:
            d = job_details(jid)
            assert "gpu" not in " ".join(re.findall(r"(?:TresPer\w+|JOB_GRES)=\S*", d)), \
                f"CPU job {jid} (rule {rule}) requested a GPU:\n{d}"

    # two GPU jobs running at the same time, on different GPUs (seen while running)
    gpu_jobs = {j for r in case.gpu_rules for j in by_rule[r]}
    best = max((sum(1 for j in running if j in gpu_jobs) for _, running in monitor.samples),
               default=0)
    assert best >= case.concurrent_gpu_jobs, (
        f"at most {best} GPU jobs ran at once (wanted {case.concurrent_gpu_jobs}); "
        f"samples: {monitor.samples[-10:]}")
    for t, running in monitor.samples:
        idx = [i for j, s in running.items() if j in gpu_jobs for i in s]
        assert len(idx) == len(set(idx)), f"two running jobs shared a GPU at {t}: {running}"

    # what each GPU job saw: CUDA_VISIBLE_DEVICES set by SLURM from its gres
    if case.cvd_outputs:
        seen = {}
        for rel in case.cvd_outputs:
            rec = json.loads((workdir / rel).read_text())
            jid, cvd = rec["SLURM_JOB_ID"], rec["CUDA_VISIBLE_DEVICES"]
            assert jid in gpu_jobs, f"{rel}: job {jid} is not one of this run's GPU jobs"
            assert cvd is not None, f"{rel}: CUDA_VISIBLE_DEVICES not set in job {jid}"
            if jid in monitor.gpu_idx:
                assert {cvd} == monitor.gpu_idx[jid], \
                    f"job {jid} saw CUDA_VISIBLE_DEVICES={cvd}, SLURM gave {monitor.gpu_idx[jid]}"
            seen[rel] = cvd
        assert sorted(seen.values()) == [str(i) for i in range(len(case.cvd_outputs))], \
            f"each concurrent GPU job must see its own GPU: {seen}"


@pytest.mark.parametrize("case", PREEMPT_CASES, ids=lambda c: c.id)
def test_preempted_job_resumes_from_checkpoint(case: PreemptCase, slurm_cluster,
                                               slurm_run_prefix, tmp_path):
    workdir, refdir = tmp_path / "run", tmp_path / "reference"
    workdir.mkdir()
    refdir.mkdir()
    log, reflog = tmp_path / "snakemake.log", tmp_path / "reference.log"
    cmd = snakemake_slurm_cmd(workdir, snakefile=case.snakefile, configfile=case.configfile,
                              config=case.config, targets=(case.target,),
                              prefix=slurm_run_prefix)
    refcmd = local_snakemake_cmd(refdir, snakefile=case.snakefile, configfile=case.configfile,
                                 config=case.config, targets=(case.target,))
    state = workdir / case.state_file
    with open(log, "w") as fh, open(reflog, "w") as rfh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        # the uninterrupted reference run, locally, meanwhile
        ref = subprocess.Popen(refcmd, cwd=REPO, stdout=rfh, stderr=subprocess.STDOUT)
        try:
            # wait for a few checkpoints of the first SLURM job, then cancel it
            mtimes: set[int] = set()
            deadline = time.time() + case.timeout_s / 2
            while len(mtimes) < case.checkpoints_before_kill:
                assert proc.poll() is None, f"run ended before the kill:\n{tail(log)}"
                assert time.time() < deadline, \
                    f"no {case.checkpoints_before_kill} checkpoints in {state}:\n{tail(log)}"
                try:
                    mtimes.add(state.stat().st_mtime_ns)
                except FileNotFoundError:
                    pass
                time.sleep(0.1)
            victims = [j for j, i in run_jobs(slurm_run_prefix).items()
                       if rule_of(i["comment"]) == case.rule and i["state"] == "RUNNING"]
            assert len(victims) == 1, f"expected one running {case.rule} job: {victims}"
            subprocess.run(["scancel", victims[0]], check=True, timeout=20)
            rc = wait_run(proc, case.timeout_s, log)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                ref.wait(case.timeout_s)
            except subprocess.TimeoutExpired:
                ref.kill()
    assert rc == 0, f"snakemake failed after the preemption (rc {rc}):\n{tail(log)}"
    assert ref.returncode == 0, f"reference run failed:\n{tail(reflog)}"

    # SLURM's side: the cancelled job and a resubmitted one that completed
    jobs = {j: i for j, i in run_jobs(slurm_run_prefix).items()
            if rule_of(i["comment"]) == case.rule}
    assert jobs.get(victims[0], {}).get("state") == "CANCELLED", jobs
    again = [j for j, i in jobs.items() if j != victims[0]]
    assert again and all(jobs[j]["state"] == "COMPLETED" for j in again), \
        f"{case.rule} was not resubmitted after the scancel: {jobs}\n{tail(log)}"

    # the resubmitted job resumed from its checkpoint instead of starting over
    text = (workdir / case.resume_log).read_text()
    resumed = [int(k) for k in re.findall(case.resume_re, text)]
    assert resumed and max(resumed) > 0, f"no resume from a checkpoint in {case.resume_log}:\n{text}"

    # ... and finished with exactly the uninterrupted run's result
    got, want = workdir / case.final_output, refdir / case.final_output
    if case.compare is not None:
        case.compare(got, want)
    else:
        assert got.read_bytes() == want.read_bytes(), \
            f"resumed result differs:\n{got.read_text()}\nvs uninterrupted:\n{want.read_text()}"
