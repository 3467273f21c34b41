"""What a workflow job needs around a library call: logs, a GPU, safe outputs.

The scripts in ``scripts/`` are thin: each one calls :func:`job` and then one
library function. This module knows nothing about Snakemake itself; it takes
the ``snakemake`` object duck-typed (``.log``, ``.output``, ``.resources``,
``.threads``).

GPU choice. Snakemake caps how many GPU jobs run at once (``--resources
gpu=2``) but does not tell a job which GPU to use, so two local jobs would
both land on ``cuda:0``. :func:`claim_gpu` gives each concurrent job its own
device by holding an exclusive ``flock`` on one lock file per visible GPU
for the life of the process; the lock is dropped by the kernel when the
process ends, even on SIGKILL. Under SLURM (or any scheduler that sets
``CUDA_VISIBLE_DEVICES`` per job) the job simply uses its first visible
device.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

_HELD_LOCKS: list = []  # keep lock files open for the life of the process


def lock_dir() -> Path:
    d = Path(os.environ.get("CLOSERLOOK_GPU_LOCK_DIR", "/tmp/closerlook-gpu-locks"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def claim_gpu(num_gpus: int, *, locks: Path | None = None, wait_s: float = 3600.0, poll_s: float = 0.5) -> int:
    """Return the index of a GPU no other local job holds, and hold it.

    Tries indices 0..num_gpus-1 with a non-blocking exclusive ``flock``; if
    all are taken (more concurrent GPU jobs than GPUs), waits and retries.
    """
    if num_gpus < 1:
        raise ValueError("claim_gpu: no GPU visible")
    locks = locks or lock_dir()
    deadline = time.monotonic() + wait_s
    while True:
        for i in range(num_gpus):
            fh = open(locks / f"gpu{i}.lock", "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            _HELD_LOCKS.append(fh)
            return i
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {num_gpus} after {wait_s:.0f} s (locks in {locks})")
        time.sleep(poll_s)


def job_device(gpu_requested: int, *, cuda_available: bool | None = None, num_gpus: int | None = None) -> str:
    """The device string a job should use.

    ``gpu_requested`` is the job's ``resources.gpu``. Without CUDA the job
    runs on the CPU. Under a scheduler that set ``CUDA_VISIBLE_DEVICES`` to a
    single device, that device is ``cuda:0``. Otherwise a free local GPU is
    claimed with :func:`claim_gpu`.
    """
    if cuda_available is None or num_gpus is None:
        try:
            import torch

            cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
            num_gpus = torch.cuda.device_count() if num_gpus is None else num_gpus
        except ImportError:  # pragma: no cover
            cuda_available, num_gpus = False, 0
    if not gpu_requested or not cuda_available or not num_gpus:
        return "cpu"
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cuda:0"
    if num_gpus == 1:
        return "cuda:0"
    return f"cuda:{claim_gpu(num_gpus)}"


@contextlib.contextmanager
def job(smk, *, stage: str) -> Iterator[dict]:
    """Run a job body with stdout/stderr appended to the job's log file.

    Yields ``{"device": ..., "threads": ...}``. Sets torch's thread count to the
    job's ``threads`` so concurrent jobs share the cores as Snakemake planned.
    """
    log = Path(str(smk.log[0])) if len(smk.log) else None
    threads = int(getattr(smk, "threads", 1) or 1)
    gpu = int(getattr(smk.resources, "gpu", 0) or 0) if hasattr(smk, "resources") else 0
    stream = None
    old = sys.stdout, sys.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        stream = open(log, "a", buffering=1)
        sys.stdout = sys.stderr = stream
    try:
        import torch

        torch.set_num_threads(threads)
        device = job_device(gpu)
        # which GPU the scheduler gave this job (SLURM sets CUDA_VISIBLE_DEVICES from its gres)
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        slurm = f", SLURM_JOB_ID={os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {stage}: start (device {device}, threads {threads}, pid {os.getpid()}, "
              f"CUDA_VISIBLE_DEVICES={cvd}{slurm})", flush=True)
        yield {"device": device, "threads": threads}
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {stage}: done", flush=True)
    except BaseException as exc:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {stage}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        raise
    finally:
        sys.stdout, sys.stderr = old
        if stream is not None:
            stream.close()


def publish(work_dir: str | os.PathLike, outputs) -> None:
    """Make each declared output from the file of the same name in ``work_dir``.

    Long jobs write into a work directory that is not a declared output, so
    that Snakemake's removal of a killed job's outputs never deletes the state
    a rerun resumes from. At the end the finished files are hard-linked (or
    copied, across file systems) into place, atomically.
    """
    work_dir = Path(work_dir)
    for out in map(Path, map(str, outputs)):
        src = work_dir / out.name
        if not src.exists():
            raise FileNotFoundError(f"{src}: the job finished without writing this file (expected for output {out})")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.publish.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, out)


def data_args(data: dict) -> list[str]:
    """Command-line flags of the data spec, for the library CLIs."""
    out = ["--data", data["name"]]
    for key in ("root", "cache_dir", "train_per_class", "test_per_class", "subset_seed"):
        if data.get(key) is not None:
            out += [f"--{key.replace('_', '-')}", str(data[key])]
    return out


def run_cli(main, argv: list[str]) -> None:
    """Call a library CLI's ``main(argv)``; a non-zero status fails the job."""
    print("args:", " ".join(argv), flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"{getattr(main, '__module__', 'cli')} exited with status {rc}")
