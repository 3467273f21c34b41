"""Device and precision choice for training and evaluation.

``resolve_device`` maps the run spec's ``device`` (``auto`` | ``cpu`` | ``cuda`` |
``cuda:N``) to a :class:`torch.device`; ``resolve_precision`` maps ``precision``
(``auto`` | ``fp32`` | ``bf16``) to ``"fp32"`` or ``"bf16"`` (auto: bf16 autocast on
CUDA, fp32 on CPU). ``autocast`` gives the matching context manager (a no-op for
fp32). ``local_gpu_slot`` spreads concurrent Snakemake jobs over local GPUs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import torch

from .io import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "fp32", "bf16")


def _device_value(spec: Any) -> str:
    if isinstance(spec, Mapping):
        spec = spec.get("device", "auto")
    if spec is None:
        return "auto"
    if isinstance(spec, torch.device):
        return str(spec)
    return str(spec).strip().lower()


def check_device_name(value: Any, key: str = "device") -> str:
    """Validate the *form* of a device value (without requiring the hardware)."""
    v = _device_value(value)
    if v in ("auto", "cpu", "cuda"):
        return v
    if v.startswith("cuda:") and v[5:].isdigit():
        return v
    raise ConfigError(f"{key}: {value!r} is not a device; use one of auto, cpu, cuda, cuda:N")


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
    """GPU index for this process when several jobs share a machine.

    Uses ``CLOSERLOOK_GPU_SLOT`` when set (e.g. from a Snakemake resource),
    otherwise the current device. Always within ``device_count()``.
    """
    n = max(torch.cuda.device_count(), 1)
    slot = os.environ.get("CLOSERLOOK_GPU_SLOT")
    if slot is not None and slot.strip().isdigit():
        return int(slot) % n
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


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


def describe(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
