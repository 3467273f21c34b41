"""Rule of workflow/rules/distill.smk: the students' fidelity to their teacher (closerlook.fidelity)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from ..devices import resolve_device
from ..tables import write_csv
from ..settings_types import FidelitySettings
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders, _state_on


def fidelity(pairs: Sequence[Mapping], data: Mapping, out: str, settings: Mapping | None = None,
             device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> pd.DataFrame:
    """``out``: top-1 agreement and mean KL(teacher || student) at T = 1 per (student, seed, split).

    ``pairs``: ``[{"student": "distilled" | "independent", "seed", "teacher": ckpt, "ckpt": ckpt}, ...]``.
    A diverged student (or teacher) gives rows marked ``diverged``."""
    from .. import fidelity as F

    s = FidelitySettings.of(settings)
    dev = resolve_device(device)
    train_loader, test_loader = _eval_loaders(_data_block(data), dev, s["train_images"], int(s["batch_size"]))
    loaders = {"test": test_loader, "train": train_loader}
    cache: dict[str, Any] = {}

    def logits_of(path: str):
        if path not in cache:
            ck = _endpoint(path)
            if ck is None:
                cache[path] = None
            else:
                module = _module(ck, path, dev, factories)
                cache[path] = {sp: F.logits(module, _state_on(ck, dev), ld) for sp, ld in loaders.items()}
        return cache[path]

    rows = []
    for p in pairs:
        got = F.rows_for(logits_of(p["teacher"]), logits_of(p["ckpt"]), p["student"], int(p["seed"]),
                         float(s["temperature"]))
        for r in got:
            log(f"{r['student']} seed{r['seed']} {r['split']}: agreement={r['agreement']:.4f} kl={r['kl']:.4f} "
                f"n={r['n_images']} {r['status']}")
        rows += got
    df = pd.DataFrame(F.sort_rows(rows), columns=list(F.COLUMNS))
    write_csv(df, out)
    return df
