"""Device and precision choice for training and evaluation.

``resolve_device`` maps the run spec's ``device`` (``auto`` | ``cpu`` | ``cuda`` |
``cuda:N``) to a :class:`torch.device`; ``resolve_precision`` maps ``precision``
(``auto`` | ``fp32`` | ``bf16``) to ``"fp32"`` or ``"bf16"`` (auto: bf16 autocast on
CUDA, fp32 on CPU). ``autocast`` gives the matching context manager (a no-op for
fp32). ``local_gpu_slot`` spreads concurrent Snakemake jobs over local GPUs.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .io import ConfigError
from .catalog import DEVICE_CHOICES, PRECISIONS, _device_value, check_device_name  # noqa: F401 (torch-free, in catalog: planning imports no torch)


def resolve_device(spec: Any = "auto") -> torch.device:
    """Return the torch device for a spec dict (its ``device`` key) or a device string.

    ``auto`` picks CUDA when available (honouring ``local_gpu_slot``), CPU otherwise.
    Asking for CUDA where there is none raises :class:`ConfigError`.
    """
    v = check_device_name(spec)
    if v == "cpu":
        return torch.device("cpu")
    if v == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_gpu_slot())
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {v!r} requested but CUDA is not available on this machine (use auto or cpu)")
    if v == "cuda":
        return torch.device("cuda", local_gpu_slot())
    idx = int(v[5:])
    if idx >= torch.cuda.device_count():
        raise ConfigError(f"device: {v!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", idx)


def local_gpu_slot() -> int:
    """The current CUDA device (workflow jobs choose theirs with :func:`job_device`)."""
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


# ------------------------------------------------------------------ one GPU per concurrent job
# Snakemake caps how many GPU jobs run at once (``--resources gpu=2``) but does
# not tell a job which GPU to use, so two local jobs would both land on
# ``cuda:0``. :func:`claim_gpu` gives each concurrent job its own device by
# holding an exclusive ``flock`` on one lock file per visible GPU for the life
# of the process; the kernel drops the lock when the process ends, even on
# SIGKILL. Under SLURM (or any scheduler that sets ``CUDA_VISIBLE_DEVICES`` per
# job) the job simply uses its first visible device.

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


def resolve_precision(precision: Any, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` on CPU; ``fp32``/``bf16`` as given."""
    if isinstance(precision, Mapping):
        precision = precision.get("precision", "auto")
    p = "auto" if precision is None else str(precision).lower()
    if p not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return p


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` (bf16) on ``device``; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: Any) -> None:
    """``torch.set_num_threads`` when ``threads`` is a positive int (None: leave as is)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads: {threads!r} must be a positive integer or null")
    torch.set_num_threads(threads)
