"""Rule of workflow/rules/activations.smk: capture a checkpoint's layer activations on the probe set."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..data import load_subsets, probe_set
from ..devices import resolve_device
from ..io import load_checkpoint
from ..models import analysis_layers, model_from_checkpoint
from ..settings_types import CaptureSettings


def extract_activations(ckpt: str, out: str, settings: Mapping, data: Mapping, probe_size: int,
                        device: Any = "auto", factories: Sequence[str] = ()) -> None:
    """Every analysis layer of one checkpoint on the probe set (first ``probe_size`` training images)."""
    from ..activations import capture_to_store, save_store

    s = CaptureSettings.of(settings)
    ck = load_checkpoint(ckpt)
    meta = {"checkpoint": str(ckpt), "status": ck["meta"].get("status", "ok")}
    if ck["model"] is None:  # the run diverged before this checkpoint
        save_store(out, {}, dict(meta, status="diverged"), dtype=s["dtype"])
        return
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, ckpt, allow=factories).to(dev)
    xtr, _, _, _, info = load_subsets(dict(data))
    capture_to_store(model, analysis_layers(model), probe_set(xtr, probe_size), out, meta=meta,
                     batch_size=s["batch_size"], mean=info["mean"], std=info["std"], mode=s["mode"],
                     subsample=s["subsample"], device=dev, dtype=s["dtype"])
