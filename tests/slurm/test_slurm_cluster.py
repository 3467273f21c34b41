"""End-to-end runs of the project's workflow through
`snakemake --profile profiles/slurm --configfile config/tiny.yaml` on a real
SLURM cluster (see conftest.py for when these run, skip or fail). Every run works
in a temporary --directory, so the repository's results/ are never touched.

a) GPU rules are submitted with a GPU request (checked on SLURM's side:
   `scontrol show job -d` -> TresPerJob gres:gpu / JOB_GRES gpu, and the GPU index
   SLURM gave each running job), two GPU jobs (two training seeds) run at once on
   different GPUs and each saw its own CUDA_VISIBLE_DEVICES (the start line that
   closerlook.jobs.job() writes into the job's log); CPU rules (cpu_rules) request
   no GPU.
b) Preemption: a training job is `scancel`-ed mid-run once its resume.pt (in the
   work dir, not a declared output) has been rewritten a few times; Snakemake
   resubmits it (profile: retries), the new SLURM job resumes from the last
   checkpoint (train_run logs "resume: continuing <run> from iteration K", K > 0)
   and its checkpoints equal, tensor for tensor, an uninterrupted local run's.

The workflow under test is a parameter (WorkflowCase / PreemptCase).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from testkit import THREADS, with_threads

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "config" / "tiny.yaml"

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


# ---------------------------------------------------------------- cases -------

@dataclass
class WorkflowCase:
    id: str
    snakefile: Path | None            # None: the repository's Snakefile
    configfile: Path | None = None
    derive: Callable[[dict], dict] | None = None  # test config derived from configfile
    config: dict = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    gpu_rules: tuple[str, ...] = ()   # rules that must request a GPU
    cpu_rules: tuple[str, ...] = ()   # rules that must not
    concurrent_gpu_jobs: int = 2      # at least this many GPU jobs must overlap
    # job logs (relative to the run dir) whose start line records the job's
    # CUDA_VISIBLE_DEVICES and SLURM_JOB_ID (closerlook.jobs.job())
    gpu_logs: tuple[str, ...] = ()
    # ... of which these jobs ran at the same time: each must have seen its own GPU
    distinct_gpu_logs: tuple[str, ...] = ()
    seed_data: bool = False           # copy the decoded data cache into the run dir
    timeout_s: int = 420


@dataclass
class PreemptCase:
    id: str
    snakefile: Path | None
    configfile: Path | None = None
    derive: Callable[[dict], dict] | None = None
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # extra environment (reaches the jobs: --export=ALL)
    seed_data: bool = False
    target: str = ""
    rule: str = ""                    # the rule whose SLURM job is cancelled
    state_file: str = ""              # checkpoint written during the run (not an output)
    checkpoints_before_kill: int = 2  # distinct checkpoint writes seen before scancel
    resume_log: str = ""              # file whose lines say the job resumed from K
    resume_re: str = r"resumed from step (\d+)"
    # the uninterrupted run: reference(run_dir, config_file, ref_dir) -> None
    reference: Callable[[Path, Path | None, Path], None] | None = None
    # compare(run_dir, ref_dir): the resumed run's result equals the reference
    compare: Callable[[Path, Path], None] | None = None
    timeout_s: int = 420


# The tiny config (config/tiny.yaml): data prep, two training seeds, one curve fit.
TINY_R = "results/tiny"
DATA_CACHE = ("resources/data/fashion_mnist-train.pt", "resources/data/fashion_mnist-test.pt")


def tiny_longer_sgd(cfg: dict) -> dict:
    """Run `sgd` long enough to be killed mid-run: 4 epochs (24 iterations),
    resume.pt rewritten every 2 iterations."""
    cfg = dict(cfg)
    runs = dict(cfg["runs"])
    runs["sgd"] = dict(runs["sgd"], epochs=4, resume_every=2)
    cfg["runs"] = runs
    return cfg


def train_reference(run: str, seed: int):
    """An uninterrupted local run of the same spec (closerlook.train.train_run, CPU,
    1 thread as the jobs), written to ref_dir."""
    def ref(run_dir: Path, configfile: Path | None, ref_dir: Path) -> None:
        code = (
            "import sys, yaml\n"
            "from closerlook import config as C\n"
            "from closerlook.train import train_run\n"
            "cfg = yaml.safe_load(open(sys.argv[1]))\n"
            f"spec = dict(C.run_spec(cfg, {run!r}, {seed}), device='cpu', threads={THREADS})\n"
            "train_run(spec, sys.argv[2], progress=None)\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "CLOSERLOOK_TEST_ITER_SLEEP"}
        p = subprocess.run([sys.executable, "-c", code, str(configfile), str(ref_dir)], cwd=run_dir,
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"reference run failed:\n{p.stdout}\n{p.stderr}"
    return ref


def same_checkpoints(rel: str):
    """Every *.pt and status.json spec hash in run_dir/rel equals ref_dir's: torch.equal
    on each tensor of the model state (the engine resumes bitwise on CPU)."""
    def compare(run_dir: Path, ref_dir: Path) -> None:
        import json

        import torch

        got_dir = run_dir / rel
        names = sorted(p.name for p in got_dir.glob("*.pt"))
        assert "final.pt" in names, f"no final.pt in {got_dir}: {names}"
        assert names == sorted(p.name for p in ref_dir.glob("*.pt")), (names, list(ref_dir.iterdir()))
        h = json.loads((got_dir / "status.json").read_text())["spec_hash"]
        assert h == json.loads((ref_dir / "status.json").read_text())["spec_hash"], \
            "the reference trained another spec"
        for name in names:
            a = torch.load(got_dir / name, map_location="cpu", weights_only=True)
            b = torch.load(ref_dir / name, map_location="cpu", weights_only=True)
            assert a["meta"]["iteration"] == b["meta"]["iteration"], name
            assert a["model"].keys() == b["model"].keys(), name
            diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]  # exact: same-CPU resume
            assert not diff, f"{name}: tensors differ from the uninterrupted run: {diff}"
    return compare


GPU_CASES = [
    WorkflowCase(
        id="tiny",
        snakefile=None,
        configfile=TINY,
        # two training seeds (run at once on the two GPUs), then one curve fit between
        # seed 0's epoch-1 and epoch-2 checkpoints
        targets=(f"{TINY_R}/runs/sgd/seed1/final.pt", f"{TINY_R}/curves/sgd-w1-w2/seed0/curve.pt"),
        gpu_rules=("train_sgd", "fit_curve"),
        # The data prep (rule prepare_data, CPU, no gpu resource) would add a third
        # stage of ~1 min on the 2-core CI machine; the data cache is copied in instead.
        # That a job without a gpu resource requests no GPU is checked in
        # test_profiles.py (the plugin's sbatch string).
        seed_data=True,
        gpu_logs=(f"{TINY_R}/logs/train/sgd/seed0.log", f"{TINY_R}/logs/train/sgd/seed1.log",
                  f"{TINY_R}/logs/curves/sgd-w1-w2/seed0-fit.log"),
        distinct_gpu_logs=(f"{TINY_R}/logs/train/sgd/seed0.log", f"{TINY_R}/logs/train/sgd/seed1.log"),
    ),
]

PREEMPT_CASES = [
    PreemptCase(
        id="tiny-train",
        snakefile=None,
        configfile=TINY,
        derive=tiny_longer_sgd,
        env={"CLOSERLOOK_TEST_ITER_SLEEP": "0.4"},  # train_run's test hook: ~10 s of training
        seed_data=True,  # data cache copied in: only the training job runs
        target=f"{TINY_R}/runs/sgd/seed0/final.pt",
        rule="train_sgd",
        state_file=f"{TINY_R}/work/runs/sgd/seed0/resume.pt",
        resume_log=f"{TINY_R}/logs/train/sgd/seed0.log",
        resume_re=r"resume: continuing \S+ from iteration (\d+)",
        reference=train_reference("sgd", 0),
        compare=same_checkpoints(f"{TINY_R}/runs/sgd/seed0"),
    ),
]


# -------------------------------------------------------------- helpers -------

def snakemake_slurm_cmd(workdir: Path, *, snakefile, configfile, config, targets,
                        prefix: str, extra=()) -> list[str]:
    """The documented SLURM command (`--profile profiles/slurm`; Snakemake also loads
    profiles/default as the workflow profile, which must not get in the way) plus
    test-only overrides that keep runs on the one-node test cluster quick."""
    cmd = [
        sys.executable, "-m", "snakemake", *targets,  # targets first: --config takes many values
        "--profile", str(REPO / "profiles" / "slurm"),
        "--directory", str(workdir),
        # test-only overrides
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


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """A directory with the decoded Fashion-MNIST caches (resources/data/*.pt): the
    repository's when `make demo`/tests made them, else decoded once here."""
    have = REPO / "resources" / "data"
    if all((REPO / rel).exists() for rel in DATA_CACHE):
        return have
    d = tmp_path_factory.mktemp("data_cache")
    code = ("import sys\nfrom closerlook.data import load_split\n"
            "for split in ('train', 'test'):\n"
            "    load_split('fashion_mnist', split, root=None, cache_dir=sys.argv[1])\n")
    p = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"could not prepare the data cache:\n{p.stderr[-2000:]}"
    return d


def prepare_run_dir(case, tmp_path: Path, request) -> tuple[Path, Path | None]:
    """The run directory (and the config file) of one case."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    configfile = case.configfile
    if configfile is not None:
        import yaml

        cfg = with_threads(yaml.safe_load(Path(configfile).read_text()))
        if case.derive is not None:
            cfg = case.derive(cfg)
        configfile = tmp_path / "config.yaml"
        configfile.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if case.seed_data:
        src = request.getfixturevalue("data_cache")
        for rel in DATA_CACHE:
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / Path(rel).name, workdir / rel)  # a copy: never write into the repo's
    return workdir, configfile


def seeded_args(case) -> tuple[str, ...]:
    # Without a provenance record of the copied cache Snakemake 9.27 still reruns
    # prepare_data ("Code has changed since last execution"); judge it by mtime only.
    return ("--rerun-triggers", "mtime") if case.seed_data else ()


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


START_RE = re.compile(r": start \(.*CUDA_VISIBLE_DEVICES=([^,)\s]+), SLURM_JOB_ID=(\d+)\)")


def job_starts(log: Path) -> list[tuple[str, str]]:
    """(CUDA_VISIBLE_DEVICES, SLURM_JOB_ID) of every start line in a job log
    (closerlook.jobs.job() appends one per attempt)."""
    return START_RE.findall(log.read_text(errors="replace"))


class JobMonitor(threading.Thread):
    """Polls SLURM while a run is going: which jobs of the run run, and on which GPUs."""

    def __init__(self, prefix: str, period: float = 1.0):
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
def test_gpu_rules_get_their_own_gpu(case: WorkflowCase, slurm_cluster, slurm_run_prefix, tmp_path,
                                     request):
    if slurm_cluster.gpus < case.concurrent_gpu_jobs:
        msg = (f"needs {case.concurrent_gpu_jobs} GPUs (gres gpu); "
               f"{slurm_cluster.gpu_count_note()}")
        if os.environ.get("CLOSERLOOK_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    workdir, configfile = prepare_run_dir(case, tmp_path, request)
    log = tmp_path / "snakemake.log"
    cmd = snakemake_slurm_cmd(workdir, snakefile=case.snakefile, configfile=configfile,
                              config=case.config, targets=case.targets, prefix=slurm_run_prefix,
                              extra=seeded_args(case))
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
    seen = {}
    for rel in case.gpu_logs:
        starts = job_starts(workdir / rel)
        assert len(starts) == 1, f"{rel}: expected one start line with CUDA_VISIBLE_DEVICES " \
                                 f"and SLURM_JOB_ID:\n{tail(workdir / rel)}"
        cvd, jid = starts[0]
        assert jid in gpu_jobs, f"{rel}: job {jid} is not one of this run's GPU jobs {gpu_jobs}"
        assert cvd != "unset", f"{rel}: CUDA_VISIBLE_DEVICES not set in job {jid}"
        if jid in monitor.gpu_idx:
            assert {cvd} == monitor.gpu_idx[jid], \
                f"job {jid} saw CUDA_VISIBLE_DEVICES={cvd}, SLURM gave {monitor.gpu_idx[jid]}"
        seen[rel] = cvd
    if case.distinct_gpu_logs:
        got = sorted(seen[rel] for rel in case.distinct_gpu_logs)
        assert got == [str(i) for i in range(len(case.distinct_gpu_logs))], \
            f"each concurrent GPU job must see its own GPU: {seen}"


@pytest.mark.parametrize("case", PREEMPT_CASES, ids=lambda c: c.id)
def test_preempted_job_resumes_from_checkpoint(case: PreemptCase, slurm_cluster,
                                               slurm_run_prefix, tmp_path, request):
    workdir, configfile = prepare_run_dir(case, tmp_path, request)
    refdir = tmp_path / "reference"
    log = tmp_path / "snakemake.log"
    cmd = snakemake_slurm_cmd(workdir, snakefile=case.snakefile, configfile=configfile,
                              config=case.config, targets=(case.target,),
                              prefix=slurm_run_prefix, extra=seeded_args(case))
    state = workdir / case.state_file
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **case.env))
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
                proc.wait(30)
    assert rc == 0, f"snakemake failed after the preemption (rc {rc}):\n{tail(log)}"

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
    starts = [jid for _, jid in job_starts(workdir / case.resume_log)]
    if starts:  # a job log that records its SLURM job (closerlook.jobs.job())
        # Snakemake deletes a job's log before it reruns the job, so the log holds the
        # retry only; the cancelled attempt's log is in Snakemake's output
        # (show-failed-logs), proving that attempt ran the job body before the kill.
        assert starts[-1] in again, (starts, victims, again)
        after_retry = text[text.rindex(f"SLURM_JOB_ID={starts[-1]}"):]
        assert re.search(case.resume_re, after_retry), \
            f"the resubmitted job {starts[-1]} did not resume:\n{text}"
        killed = [jid for _, jid in job_starts(log)]
        assert victims[0] in killed, \
            f"no start line of the cancelled job {victims[0]} in Snakemake's output:\n{tail(log)}"

    # ... and finished with exactly the uninterrupted run's result
    assert case.reference is not None and case.compare is not None
    t0 = time.time()
    case.reference(workdir, configfile, refdir)
    print(f"reference run: {time.time() - t0:.1f} s")
    case.compare(workdir, refdir)
