"""GPU choice for concurrent local jobs, checked without a GPU.

Snakemake caps GPU jobs (``--resources gpu=N``) but does not say which GPU a
job gets; ``closerlook.jobs`` makes each concurrent job claim its own.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from closerlook import devices, jobs

REPO = Path(__file__).resolve().parents[1]


def test_job_device_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("CLOSERLOOK_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert devices.job_device(1, cuda_available=False, num_gpus=0) == "cpu"
    assert devices.job_device(0, cuda_available=True, num_gpus=2) == "cpu"  # rule asked for no GPU
    assert devices.job_device(1, cuda_available=True, num_gpus=1) == "cuda:0"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert devices.job_device(1, cuda_available=True, num_gpus=1) == "cuda:0"  # SLURM set the device


_CLAIM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from closerlook.devices import claim_gpu
    i = claim_gpu(int(sys.argv[1]), locks=Path(sys.argv[2]), wait_s=float(sys.argv[3]), poll_s=0.05)
    print(i, flush=True)
    time.sleep(float(sys.argv[4]))
    """
)


def _claimer(n, locks, wait_s, hold_s):
    return subprocess.Popen([sys.executable, "-c", _CLAIM, str(n), str(locks), str(wait_s), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_processes_get_distinct_gpus_and_a_third_waits(tmp_path):
    a = _claimer(2, tmp_path, 5, 120)
    b = _claimer(2, tmp_path, 5, 120)
    ga, gb = int(a.stdout.readline()), int(b.stdout.readline())
    assert {ga, gb} == {0, 1}
    c = _claimer(2, tmp_path, 0.5, 0)  # both held: times out
    _, err = c.communicate(timeout=60)
    assert c.returncode != 0 and "no free GPU" in err
    a.terminate()
    b.terminate()
    a.wait(timeout=30)
    b.wait(timeout=30)
    d = _claimer(2, tmp_path, 5, 0)  # a lock is freed when its process ends
    assert int(d.stdout.readline()) in (0, 1)
    d.wait(timeout=30)


def test_claim_survives_sigkill_of_holder(tmp_path):
    a = _claimer(1, tmp_path, 5, 60)
    assert int(a.stdout.readline()) == 0
    a.kill()
    a.wait(timeout=30)
    b = _claimer(1, tmp_path, 5, 0)
    assert int(b.stdout.readline()) == 0
    b.wait(timeout=30)


def test_two_local_snakemake_gpu_jobs_take_different_devices(tmp_path):
    """Real snakemake, --resources gpu=2, two GPU jobs at once (GPUs simulated)."""
    locks = tmp_path / "locks"
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(textwrap.dedent(f"""
        rule all:
            input: expand("dev{{i}}.txt", i=[1, 2])

        rule pick:
            output: "dev{{i}}.txt"
            resources: gpu=1
            run:
                import os, time
                os.environ["CLOSERLOOK_GPU_LOCK_DIR"] = {str(locks)!r}
                from closerlook.devices import job_device
                dev = job_device(resources.gpu, cuda_available=True, num_gpus=2)
                time.sleep(3)  # hold the GPU while the other job picks
                open(output[0], "w").write(dev)
    """))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(tmp_path),
                        "--cores", "2", "--resources", "gpu=2", "--workflow-profile", "none"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    devs = sorted((tmp_path / f"dev{i}.txt").read_text() for i in (1, 2))
    assert devs == ["cuda:0", "cuda:1"], devs


def test_publish_links_outputs_and_names_missing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "final.pt").write_bytes(b"abc")
    out = tmp_path / "results" / "final.pt"
    jobs.publish(work, [out])
    assert out.read_bytes() == b"abc"
    out.unlink()  # Snakemake removing the output of a failed job keeps the work copy
    assert (work / "final.pt").exists()
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        jobs.publish(work, [tmp_path / "results" / "metrics.csv"])


def test_a_torch_free_job_runs_on_the_cpu_without_importing_torch(tmp_path):
    # a fake snakemake object: one log, 1 thread, a GPU requested (ignored: the job reads tables only)
    code = textwrap.dedent(f"""
        import sys, types
        sys.modules.update(torch=None)                # `import torch` raises from here on
        from closerlook.jobs import job
        smk = types.SimpleNamespace(log=[{str(tmp_path / "j.log")!r}], threads=1,
                                    resources=types.SimpleNamespace(gpu=1))
        with job(smk, stage="figure x", torch=False) as ctx:
            assert ctx["device"] == "cpu", ctx
        try:
            with job(smk, stage="train x"):
                pass
        except ImportError:
            print("torch needed")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "torch needed" in (tmp_path / "j.log").read_text() + r.stdout    # the default still imports it
    assert "figure x: start (device cpu" in (tmp_path / "j.log").read_text()
