"""Resume state, one implementation for training and curve fitting.

A long job saves ``resume.pt`` atomically every few iterations: its own state
(weights, optimizer, position, partial metrics) plus the RNG state, under the
:func:`fingerprint` of every setting that determines the result. A restart with
the same settings continues from it and, on the same CPU, ends bitwise equal to
an uninterrupted run; a file from other settings, or one that cannot be read
(truncated, crafted), is ignored with a message and the job starts afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .io import CheckpointError, atomic_torch_save, fingerprint, safe_torch_load  # noqa: F401 (fingerprint: torch-free, in io)

FORMAT = "closerlook-resume/1"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def rng_state(generator: torch.Generator | None = None) -> dict:
    """torch's global RNG, Python's ``random``, every CUDA device's, and ``generator`` if given."""
    version, internal, gauss = random.getstate()
    st = {"torch": torch.get_rng_state(), "python": [int(version), [int(v) for v in internal], gauss]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        st["gen"] = generator.get_state()
    return st


def set_rng_state(st: Mapping, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(st["torch"])
    if "python" in st:
        v, internal, gauss = st["python"]
        random.setstate((v, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    if generator is not None and "gen" in st:
        generator.set_state(st["gen"])


def save(path: str | os.PathLike, key: str, state: Mapping[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as the resume file of settings ``key``."""
    atomic_torch_save({"format": FORMAT, "key": key, **state}, Path(path))


def load(path: str | os.PathLike, key: str, say: Callable[[str], Any] = print) -> dict | None:
    """The resume state saved under ``key``, or None (no file, other settings, unreadable: said why)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        st = safe_torch_load(path, map_location="cpu")
    except CheckpointError as exc:
        say(f"resume: ignoring unreadable {path} ({exc}); starting afresh")
        return None
    if not isinstance(st, dict) or st.get("format") != FORMAT or st.get("key") != key:
        say(f"resume: {path} belongs to other settings; starting afresh")
        return None
    return st
