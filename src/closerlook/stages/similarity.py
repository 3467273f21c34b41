"""Rules of workflow/rules/similarity.smk: compare two activation stores layer by layer; the measures' positive controls."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..io import atomic_path, load_checkpoint
from ..tables import SIMILARITY_COLUMNS, write_csv
from ..settings_types import SimilaritySettings


def similarity(store_a: str, store_b: str, out: str, settings: Mapping, labels: tuple[str, str] = ("a", "b")) -> list[dict]:
    """The per-layer similarity table between two activation stores (layer i against layer i).

    ``settings``: ``{"measures": [...], "chance": bool, "chance_shuffles": K, "subsamples": {"count", "size"},
    "images_per_dim": r}`` (r: the CCA family compares a layer narrower than n / r images in full, a wider
    one in its top n // r directions)
    (defaults :data:`closerlook.similarity.COMPARISON_DEFAULTS`). Conv activations stored in full
    ``(N, C, H, W)`` go as they are to the spatial measures (DFT-CCA) and spatially averaged to
    the others. A store from a diverged checkpoint gives rows with NaN and ``status = diverged``.
    """
    from ..activation_store import load_store
    from ..similarity_tables import layer_rows

    s = SimilaritySettings.of(settings)
    measures = list(s["measures"])
    acts_a, meta_a = load_store(store_a)
    acts_b, meta_b = load_store(store_b)
    if "diverged" in (meta_a.get("status"), meta_b.get("status")):
        rows = [{"layer": "", "layer_index": -1, "measure": m, "sample": "all", "status": "diverged"} for m in measures]
    else:
        rows = [dict(r, status="ok") for r in layer_rows(acts_a, acts_b, measures, chance=bool(s["chance"]),
                                                         n_shuffles=int(s["chance_shuffles"]),
                                                         subsamples=s.get("subsamples"),
                                                         images_per_dim=s.get("images_per_dim"))]
    for r in rows:
        r["a"], r["b"] = labels
    df = pd.DataFrame(rows, columns=SIMILARITY_COLUMNS).sort_values(["layer_index", "measure"], kind="stable")
    write_csv(df, out)
    return rows


def similarity_controls(outputs: Mapping[str, str], settings: Mapping, *, stores: Mapping[str, str] | None = None,
                        ckpt: str | None = None, act_settings: Mapping | None = None, data: Mapping | None = None,
                        probe_size: int | None = None, device: Any = "auto", factories: Sequence[str] = ()) -> list[dict]:
    """The similarity measures' positive controls (closerlook.controls): layer identification between two
    activation stores (``stores = {"a", "b"}``) and change detection on a checkpoint (``ckpt``) with one
    middle layer re-initialised, both captured here on the probe set as :func:`extract_activations` does.

    ``outputs``: ``{"controls", "controls_md", "identification", "change_detection"}`` paths. A diverged
    input gives that control's rows with ``passes = False`` and the reason in ``rule``."""
    from .. import controls as K
    from ..activation_store import load_store

    s = dict(settings)
    measures = list(s["measures"])
    ident = change = None
    rows: list[dict] = []
    if stores:
        (acts_a, meta_a), (acts_b, meta_b) = load_store(stores["a"]), load_store(stores["b"])
        if "diverged" in (meta_a.get("status"), meta_b.get("status")):
            rows += _diverged_controls("identification", measures)
        else:
            ident = K.identification(acts_a, acts_b, measures, level=float(s["level"]),
                                     images_per_dim=s.get("images_per_dim"))
    if ckpt:
        got = _reinitialised_acts(ckpt, s, act_settings or {}, data or {}, int(probe_size or 0), device, factories)
        if got is None:
            rows += _diverged_controls("change_detection", measures)
        else:
            orig, changed, target = got
            change = K.change_detection(orig, changed, measures, target, min_before=float(s["min_before"]),
                                        max_target=float(s["max_target"]), images_per_dim=s.get("images_per_dim"))
    rows = K.controls_table(ident, change) + rows
    write_csv(pd.DataFrame(rows, columns=K.CONTROL_COLUMNS), outputs["controls"])
    write_csv(pd.DataFrame(K.identification_rows(ident) if ident else []), outputs["identification"])
    write_csv(pd.DataFrame(change["rows"] if change else [], columns=["layer", "layer_index", "role", "measure", "value"]),
              outputs["change_detection"])
    with atomic_path(outputs["controls_md"]) as tmp:
        Path(tmp).write_text(K.controls_markdown(ident, change))
    return rows


def _diverged_controls(control: str, measures: Sequence[str]) -> list[dict]:
    return [{"control": control, "measure": m, "passes": False, "statistic": float("nan"), "threshold": float("nan"),
             "n_layers": 0, "rule": "input diverged: not measured"} for m in measures]


def _reinitialised_acts(ckpt: str, s: Mapping, act: Mapping, data: Mapping, probe_size: int, device, factories):
    """(original activations, activations with the chosen layer re-initialised, the layer); None if diverged."""
    from .. import controls as K
    from ..activations import capture
    from ..data import load_subsets, probe_set
    from ..devices import resolve_device
    from ..models import analysis_layers, model_from_checkpoint

    ck = load_checkpoint(ckpt)
    if ck["model"] is None or (ck.get("meta") or {}).get("status") == "diverged":
        return None
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, ckpt, allow=factories).to(dev)
    layers = analysis_layers(model)
    target = (s.get("change_detection") or {}).get("layer") or K.middle_layer(list(layers))
    changed, _ = K.reinitialise(model, layers, target, seed=int(s["seed"]))
    xtr, _, _, _, info = load_subsets(dict(data))
    images = probe_set(xtr, probe_size)
    kw = dict(batch_size=int(act.get("batch_size", 500)), mean=info["mean"], std=info["std"],
              mode=act.get("mode", "pool"), subsample=int(act.get("subsample", 1) or 1), device=dev)
    return capture(model, layers, images, **kw), capture(changed, layers, images, **kw), target
