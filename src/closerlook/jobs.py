"""What a workflow job needs around a library call: logs, a device, safe outputs.

The scripts in ``scripts/`` are thin: each one calls :func:`job` and then one
library function. This module knows nothing about Snakemake itself; it takes
the ``snakemake`` object duck-typed (``.log``, ``.output``, ``.resources``,
``.threads``). The GPU a job uses is chosen by
:func:`closerlook.devices.job_device`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

@contextlib.contextmanager
def job(smk, *, stage: str, torch: bool = True) -> Iterator[dict]:
    """Run a job body with stdout/stderr appended to the job's log file.

    Yields ``{"device": ..., "threads": ...}``. Sets torch's thread count to the
    job's ``threads`` so concurrent jobs share the cores as Snakemake planned.
    ``torch=False``: a job that only reads tables or stores (figures, claims, similarity tables) runs on
    the CPU without importing torch, ~2.5 CPU-s of start-up saved per job.
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
        device = _torch_device(gpu, threads) if torch else "cpu"
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


def _torch_device(gpu: int, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    from .devices import job_device  # (here, like torch: importing jobs stays torch-free)

    return job_device(gpu)


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
