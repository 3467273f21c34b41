"""Rules of workflow/rules/ensembles.smk: FGE, SWA and the ensemble comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import curves
from ..data import DeviceLoader, load_subsets
from ..devices import resolve_device
from ..io import load_checkpoint, save_checkpoint
from ..models import model_from_checkpoint
from ..settings_types import EnsembleSettings
from ..tables import write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders


def _train_loader(data: Mapping, training: Mapping, dev):
    xtr, ytr, _, _, info = load_subsets(_data_block(data))
    kw = dict(mean=info["mean"], std=info["std"], device=dev, seed=int(training["seed"]))
    return (DeviceLoader(xtr, ytr, int(training["batch_size"]), augment=bool(training["augment"]), shuffle=True,
                         drop_last=True, **kw),
            DeviceLoader(xtr, ytr, 500, augment=False, shuffle=False, drop_last=False, **kw))


def _from_base(base: str, outputs: Sequence[str], training: Mapping, data: Mapping, device: Any, what: str,
               factories: Sequence[str] = ()):
    """(base checkpoint, its model, training loader, BN loader, iterations) for FGE / SWA; None (outputs
    written marked diverged) when the base run had diverged."""
    b = _endpoint(base)
    if b is None:
        for out in outputs:
            save_checkpoint(out, None, {"status": "diverged", f"{what}_base": str(base)})
        return None
    dev = resolve_device(device)
    model = model_from_checkpoint(load_checkpoint(base), base, allow=factories).to(dev)
    loader, bn_loader = _train_loader(data, training, dev)
    return b, model, loader, bn_loader, int(training["budget_epochs"]) * len(loader)


def fge(base: str, outputs: Sequence[str], training: Mapping, data: Mapping, device: Any = "auto", log: Log = print,
        factories: Sequence[str] = ()) -> None:
    """Fast geometric ensembling from ``base``: one member checkpoint per output (Garipov's cyclic lr)."""
    from .. import ensembles as ens

    got = _from_base(base, outputs, training, data, device, "fge", factories)
    if got is None:
        return
    b, model, loader, _, total = got
    members = ens.train_fge(model, loader, training["optimizer"], total, len(outputs), float(training["lr_max"]),
                            float(training["lr_min"]), log=log)
    for k, (out, st) in enumerate(zip(outputs, members)):
        save_checkpoint(out, st, {**b["meta"], "run": f"fge:{b['meta'].get('run')}", "fge_base": str(base),
                                  "fge_member": k, "status": "ok"})


def swa(base: str, out: str, training: Mapping, data: Mapping, device: Any = "auto", log: Log = print,
        factories: Sequence[str] = ()) -> None:
    """SWA weights from ``base`` over the same extra budget as FGE (torch.optim.swa_utils), BN recomputed."""
    from .. import ensembles as ens

    got = _from_base(base, [out], training, data, device, "swa", factories)
    if got is None:
        return
    b, model, loader, bn_loader, total = got
    state, n = ens.train_swa(model, loader, bn_loader, training["optimizer"], total, int(training["members"]),
                             float(training["swa_lr"]), log=log)
    save_checkpoint(out, state, {**b["meta"], "run": f"swa:{b['meta'].get('run')}", "swa_base": str(base),
                                 "swa_averaged": n, "status": "ok"})


def _curve_members(curve: Mapping, dev, factories: Sequence[str] = ()) -> list[tuple[str, dict | None]]:
    a, b = _endpoint(curve["start"]), _endpoint(curve["end"])
    ck = load_checkpoint(curve["curve"])
    if a is None or b is None or ck["model"] is None:
        return [(f"t={t:.3f}", None) for t in curve["ts"]]
    c = curves.load_curve(curve["curve"], _module(a, curve["start"], dev, factories), map_location=dev)
    c.check_endpoints(a["model"], b["model"], curve["curve"], curve["start"], curve["end"])
    with torch.no_grad():
        return [(f"t={t:.3f}", {k: v.detach().clone() for k, v in c.weights_at(t).items()}) for t in curve["ts"]]


def ensembles(members: Mapping[str, Sequence[str]], curve: Mapping, budgets: Mapping, settings: Mapping, data: Mapping,
              outputs: Mapping[str, str], device: Any = "auto", log: Log = print,
                  factories: Sequence[str] = ()) -> None:
    """``outputs["ensembles"]`` and ``["members"]``: accuracy, NLL and diversity of every ensemble.

    ``members``: method -> member checkpoints (SWA: its one network); ``curve``: ``{"curve", "start", "end", "ts"}``."""
    from .. import ensembles as ens

    s = EnsembleSettings.of(settings)
    dev = resolve_device(device)
    loaded = {m: [(Path(p).stem, _endpoint(p)) for p in ps] for m, ps in members.items()}
    first = next(e for es in loaded.values() for _l, e in es if e is not None)
    module = model_from_checkpoint({"meta": first["meta"], "model": None}, allow=factories).to(dev)
    states = {m: [(lab, None if e is None else e["model"]) for lab, e in es] for m, es in loaded.items()}
    states["curve"] = _curve_members(curve, dev, factories)
    swa_meta = (loaded.get("swa") or [(None, None)])[0][1]
    snaps = {"swa": int(swa_meta["meta"].get("swa_averaged", 1))} if swa_meta else {}
    d = _data_block(data)
    bn_loader, test_loader = _eval_loaders(d, dev, None, int(s["eval_batch_size"]))
    order = [m for m in ens.METHODS if m in states]
    ens_df, mem_df = ens.evaluate_ensembles(module, {m: states[m] for m in order}, budgets, test_loader, bn_loader,
                                            s, device=dev, snapshots=snaps, log=log)
    write_csv(ens_df, outputs["ensembles"])
    write_csv(mem_df, outputs["members"])
