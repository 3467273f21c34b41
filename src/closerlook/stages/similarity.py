"""Rule of workflow/rules/similarity.smk: compare two activation stores layer by layer."""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from ..tables import SIMILARITY_COLUMNS, write_csv


def similarity(store_a: str, store_b: str, out: str, settings: Mapping, labels: tuple[str, str] = ("a", "b")) -> list[dict]:
    """The per-layer similarity table between two activation stores (layer i against layer i).

    ``settings``: ``{"measures": [...], "chance": bool, "chance_shuffles": K, "subsamples": {"count", "size"}}``
    (defaults :data:`closerlook.similarity.COMPARISON_DEFAULTS`). Conv activations stored in full
    ``(N, C, H, W)`` go as they are to the spatial measures (DFT-CCA) and spatially averaged to
    the others. A store from a diverged checkpoint gives rows with NaN and ``status = diverged``.
    """
    from ..activations import load_store
    from ..similarity import COMPARISON_DEFAULTS, layer_rows

    s = {**COMPARISON_DEFAULTS, **settings}
    measures = list(s["measures"])
    acts_a, meta_a = load_store(store_a)
    acts_b, meta_b = load_store(store_b)
    if "diverged" in (meta_a.get("status"), meta_b.get("status")):
        rows = [{"layer": "", "layer_index": -1, "measure": m, "sample": "all", "status": "diverged"} for m in measures]
    else:
        rows = [dict(r, status="ok") for r in layer_rows(acts_a, acts_b, measures, chance=bool(s["chance"]),
                                                         n_shuffles=int(s["chance_shuffles"]),
                                                         subsamples=s.get("subsamples"))]
    for r in rows:
        r["a"], r["b"] = labels
    df = pd.DataFrame(rows, columns=SIMILARITY_COLUMNS).sort_values(["layer_index", "measure"], kind="stable")
    write_csv(df, out)
    return rows
