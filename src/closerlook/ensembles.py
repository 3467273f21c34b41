"""Ensembles along the study: what an SGDR run's snapshots buy, beside FGE, curve points, SWA and seeds.

All with the same number of members ``K`` (SWA: one network averaged from K snapshots):

* **independent**: K runs of one recipe from different seeds (the reference);
* **snapshot** (Huang et al. 2017): one SGDR run's checkpoints at cycle ends;
* **fge** (Garipov et al. 2018, fast geometric ensembling): from a trained checkpoint, a
  short run with a triangular cyclic learning rate (``lr_max`` -> ``lr_min`` -> ``lr_max``
  each cycle); a member at each cycle's minimum, i.e. in the middle of the cycle;
* **curve**: K points along a fitted curve between two networks (t evenly spaced, ends included);
* **swa** (Izmailov et al. 2018): from the same checkpoint, the same extra epochs at a
  constant SWA learning rate (``torch.optim.swa_utils``), the weights averaged at the end of
  each of K equal parts, BN statistics recomputed (``swa_utils.update_bn``).

FGE and SWA get the same extra budget (``budget_epochs`` from the base checkpoint).
:func:`evaluate_ensembles` gives test accuracy and NLL of each ensemble (mean of the
members' softmax), of each member, and member diversity: mean pairwise prediction
disagreement and mean pairwise linear CKA of the members' penultimate layer (the input of
the last Linear) on test images. BN statistics are recomputed for every member on
unaugmented training data. :func:`evaluate_beyond` turns the tables into the "Beyond the paper"
entries of claims.json (:mod:`closerlook.verdicts`' contract: premises, effects with their range
or interval, verdict), which :func:`closerlook.claims.evaluate` adds as ``result["beyond"]``.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.optim import swa_utils

from . import verdicts as V
from .data import batches_of
from .io import ConfigError
from .landscape import recompute_bn
from .settings_types import EnsembleSettings
from .similarity import linear_cka
from .tables import ENSEMBLE_COLUMNS, MEMBER_COLUMNS, read_table
from .defaults import ENSEMBLE_DEFAULTS, FGE_LR_MIN_RATIO, SWA_LR_RATIO, resolve_lrs  # noqa: F401 (torch-free: planning imports no torch)

METHODS = ("independent", "snapshot", "fge", "curve", "swa")
LABELS = {"independent": "independent seeds", "snapshot": "SGDR snapshots", "fge": "FGE",
          "curve": "curve ensemble", "swa": "SWA (one network)"}


# --------------------------------------------------------------------------- training FGE and SWA


def fge_lr(i: int, cycle: int, lr_max: float, lr_min: float) -> float:
    """Garipov et al.'s triangular cyclic lr at iteration i (0-based): lr_max -> lr_min at mid-cycle -> lr_max."""
    t = ((i % cycle) + 1) / cycle
    return (1 - 2 * t) * lr_max + 2 * t * lr_min if t <= 0.5 else (2 - 2 * t) * lr_min + (2 * t - 1) * lr_max


def fge_member_iterations(total: int, members: int) -> list[int]:
    """The iterations (0-based) after which FGE collects a member: the middle of each of ``members`` cycles."""
    cycle = total // members
    if cycle < 2:
        raise ConfigError(f"ensembles.budget_epochs: {total} iterations give cycles shorter than 2 iterations "
                          f"for {members} members")
    return [k * cycle + cycle // 2 - 1 for k in range(members)]


def swa_update_iterations(total: int, members: int) -> list[int]:
    """The iterations (0-based) after which SWA averages the weights: the end of each of ``members`` equal parts."""
    if total < members:
        raise ConfigError(f"ensembles.budget_epochs: {total} iterations for {members} SWA snapshots")
    return [(k + 1) * total // members - 1 for k in range(members)]


def _sgd(model: nn.Module, opt: Mapping, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(opt.get("momentum", 0.0)),
                           weight_decay=float(opt.get("weight_decay", 0.0)), nesterov=bool(opt.get("nesterov", False)))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, loader: Any, total: int,
           before: Callable[[int], None], after: Callable[[int], None]) -> None:
    """``total`` SGD steps over the epochs of ``loader``; ``before(i)`` / ``after(i)`` around step i (0-based)."""
    model.train()
    batches = (b for e in itertools.count() for b in batches_of(loader, e))
    for i in range(total):
        x, y = next(batches)
        before(i)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), y)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"ensembles: non-finite training loss at iteration {i}")
        loss.backward()
        opt.step()
        after(i)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_fge(model: nn.Module, loader: Any, optimizer: Mapping, total: int, members: int, lr_max: float,
              lr_min: float, log: Callable[[str], Any] | None = None) -> list[dict[str, torch.Tensor]]:
    """FGE members (state dicts, in order) from ``model``'s current weights over ``total`` iterations."""
    cycle = total // members
    collect = set(fge_member_iterations(total, members))
    opt = _sgd(model, optimizer, lr_max)
    out: list[dict[str, torch.Tensor]] = []

    def before(i: int) -> None:
        for g in opt.param_groups:
            g["lr"] = fge_lr(i, cycle, lr_max, lr_min)

    def after(i: int) -> None:
        if i in collect:
            out.append(_snapshot(model))
            if log:
                log(f"fge member {len(out)}/{members} after iteration {i + 1} (lr {opt.param_groups[0]['lr']:.3g})")

    _steps(model, opt, loader, total, before, after)
    return out


def train_swa(model: nn.Module, loader: Any, bn_loader: Any, optimizer: Mapping, total: int, members: int, lr: float,
              log: Callable[[str], Any] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """SWA weights (BN recomputed on ``bn_loader``) and the number of snapshots averaged into them.

    The lr is constant at ``lr`` (SWALR with a one-step anneal: the base checkpoint already ended its schedule)."""
    swa = swa_utils.AveragedModel(model)
    opt = _sgd(model, optimizer, lr)
    sched = swa_utils.SWALR(opt, swa_lr=lr, anneal_epochs=1, anneal_strategy="cos")
    update = set(swa_update_iterations(total, members))

    def after(i: int) -> None:
        sched.step()
        if i in update:
            swa.update_parameters(model)
            if log:
                log(f"swa snapshot {int(swa.n_averaged)}/{members} after iteration {i + 1}")

    _steps(model, opt, loader, total, lambda i: None, after)
    swa_utils.update_bn((x for x, _y in batches_of(bn_loader)), swa)
    return _snapshot(swa.module), int(swa.n_averaged)


# --------------------------------------------------------------------------- evaluation


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("ensembles: the network has no Linear layer whose input is the penultimate representation")
    return linears[-1]


@torch.no_grad()
def member_outputs(module: nn.Module, state: Mapping, test_loader: Any, bn_loader: Any, feature_images: int,
                   device: Any = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(softmax probabilities [N, C] float64, labels [N], penultimate features of the first ``feature_images``)."""
    state = {k: v.to(device) if device is not None else v.clone() for k, v in state.items()}
    recompute_bn(module, state, bn_loader, None, device)
    feats: list[torch.Tensor] = []
    hook = _last_linear(module).register_forward_pre_hook(lambda _m, inp: feats.append(inp[0].detach().flatten(1).cpu()))
    was = module.training
    module.eval()
    probs, labels = [], []
    try:
        for x, y in batches_of(test_loader):
            x = x.to(device) if device is not None else x
            probs.append(F.softmax(functional_call(module, state, (x,)).double(), dim=1).cpu())
            labels.append(y.cpu())
    finally:
        hook.remove()
        module.train(was)
    return torch.cat(probs), torch.cat(labels), torch.cat(feats)[:feature_images].double().numpy()


def _nll(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-300)).mean())


def summarise(method: str, outputs: Sequence[tuple[str, tuple]], budget: float,
              snapshots: int | None = None) -> tuple[dict, list[dict]]:
    """The ensemble row and the member rows of one method from its members' :func:`member_outputs`."""
    members = []
    for label, (p, y, _f) in outputs:
        members.append({"method": method, "member": len(members), "label": label,
                        "test_acc": float((p.argmax(1) == y).double().mean()), "test_nll": _nll(p, y), "status": "ok"})
    p_mean = torch.stack([o[1][0] for o in outputs]).mean(0)
    y = outputs[0][1][1]
    pairs = list(itertools.combinations(range(len(outputs)), 2))
    preds = [o[1][0].argmax(1) for o in outputs]
    dis = [float((preds[i] != preds[j]).double().mean()) for i, j in pairs]
    cka = [linear_cka(outputs[i][1][2], outputs[j][1][2]) for i, j in pairs]
    nan = float("nan")
    row = {"method": method, "members": len(outputs), "snapshots": snapshots or len(outputs), "budget_epochs": budget,
           "test_acc": float((p_mean.argmax(1) == y).double().mean()), "test_nll": _nll(p_mean, y),
           "member_acc_mean": float(np.mean([m["test_acc"] for m in members])),
           "member_acc_min": float(np.min([m["test_acc"] for m in members])),
           "member_nll_mean": float(np.mean([m["test_nll"] for m in members])),
           "disagreement": float(np.mean(dis)) if dis else nan, "cka": float(np.mean(cka)) if cka else nan,
           "status": "ok"}
    return row, members


def diverged_rows(method: str, members: int, budget: float, snapshots: int | None = None) -> tuple[dict, list[dict]]:
    nan = float("nan")
    row = {c: nan for c in ENSEMBLE_COLUMNS}
    row.update(method=method, members=members, snapshots=snapshots or members, budget_epochs=budget, status="diverged")
    return row, [{"method": method, "member": k, "label": "", "test_acc": nan, "test_nll": nan, "status": "diverged"}
                 for k in range(members)]


def evaluate_ensembles(module: nn.Module, members: Mapping[str, Sequence[tuple[str, Mapping | None]]],
                       budgets: Mapping[str, float], test_loader: Any, bn_loader: Any,
                       settings: Mapping | None = None, device: Any = None, snapshots: Mapping[str, int] | None = None,
                       log: Callable[[str], Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ensemble table and the member table (:data:`~closerlook.tables.ENSEMBLE_COLUMNS`, ``MEMBER_COLUMNS``).

    ``members``: method -> [(label, state dict or None when that member's run diverged)];
    ``snapshots``: method -> networks behind it when not its member count (SWA: the averaged snapshots)."""
    s = EnsembleSettings.of(settings)
    snapshots = snapshots or {}
    rows, mrows = [], []
    for method, mem in members.items():
        budget, snaps = budgets.get(method, float("nan")), snapshots.get(method)
        if any(st is None for _l, st in mem):
            row, mr = diverged_rows(method, len(mem), budget, snaps)
        else:
            outs = [(label, member_outputs(module, st, test_loader, bn_loader, s["cka_images"], device))
                    for label, st in mem]
            row, mr = summarise(method, outs, budget, snaps)
        rows.append(row)
        mrows += mr
        if log:
            log(f"{method}: {row['members']} members, test acc {row['test_acc']:.4f}, nll {row['test_nll']:.4f}, "
                f"disagreement {row['disagreement']:.3f}, cka {row['cka']:.3f}")
    return pd.DataFrame(rows, columns=ENSEMBLE_COLUMNS), pd.DataFrame(mrows, columns=MEMBER_COLUMNS)


def curve_ts(members: int, ts: Sequence[float] | None = None) -> list[float]:
    """The curve ensemble's points: ``ts`` as given, else ``members`` values evenly spaced in [0, 1]."""
    if ts is not None:
        if len(ts) != members:
            raise ConfigError(f"ensembles.curve_ts: {len(ts)} points for {members} members")
        return [float(t) for t in ts]
    return [float(t) for t in np.linspace(0.0, 1.0, members)]


# --------------------------------------------------------------------------- "Beyond the paper" entries

# The verdicts contract (closerlook.verdicts): its premises, spread and checks; the one new threshold,
# ``ensemble_acc_tol``, has its default in verdicts.DEFAULT_RULES like every other.
CLAIMS = {
    "snapshot": "Snapshot ensembles (Huang et al. 2017): the cycle-end snapshots of one SGDR run, ensembled, come "
                "within {tol:g} of the test accuracy of as many independently trained networks, for less training.",
    "fge": "Fast geometric ensembling (Garipov et al. 2018): members collected along a short cyclic-lr run from one "
           "trained network come within {tol:g} of the test accuracy of as many independent networks, for less training.",
    "curve": "Curve ensembles (Garipov et al. 2018): points along one low-loss curve between two networks come within "
             "{tol:g} of the test accuracy of as many independent networks.",
    "swa": "SWA (Izmailov et al. 2018): one network whose weights average the same number of snapshots comes within "
           "{tol:g} of the test accuracy of an ensemble of as many independent networks, for less training.",
}
# effects: (column, name); each is the method's value minus the independent seeds' over instances
_EFFECTS = (("test_acc", "test accuracy minus the independent seeds'"),
            ("test_nll", "test NLL (nats) minus the independent seeds'"),
            ("disagreement", "pairwise member disagreement minus the independent seeds'"),
            ("cka", "pairwise penultimate-layer linear CKA minus the independent seeds'"))
_MEASURED = ("test_acc", "test_nll", "member_acc_min", "disagreement", "cka", "snapshots", "budget_epochs")


def _instances(layout: Mapping) -> dict[str, tuple[pd.DataFrame | None, str]]:
    """Per instance: its ensembles table indexed by method (diverged rows kept, marked by status), or None
    and the problem."""
    out = {}
    for inst, path in sorted((layout.get("ensembles") or {}).items()):
        df, prob = read_table(path)
        ok = df is not None and not df.empty and "method" in df.columns
        out[inst] = (df.set_index("method"), "") if ok else (None, prob or "no method column")
    return out


def _usable(t: pd.DataFrame | None, method: str) -> bool:
    return t is not None and all(m in t.index and str(t.loc[m, "status"]) == "ok" for m in (method, "independent"))


def _instance_ok(v: V.Verdict, method: str, inst: str, table: tuple, num_classes: int | None) -> bool:
    """An instance's own premises (left out when one fails): both rows present and not diverged, and the
    weakest member of each above chance (:func:`closerlook.verdicts.trained`)."""
    t, prob = table
    if not _usable(t, method):
        return v.premise(f"{inst}: {method} and independent rows", False, prob or "missing or diverged",
                         "ensembles.csv readable, both rows status ok", blocking=False)
    ok = True
    for m in (method, "independent"):
        name = f"{inst}: {m} members trained above chance (weakest member)"
        ok &= v.add(V.trained(float(t.loc[m, "member_acc_min"]), num_classes, float(v.rules["min_acc_above_chance"]),
                              name), blocking=False)
    return ok


def _design(v: V.Verdict, method: str, kept: Mapping[str, pd.DataFrame]) -> None:
    """The comparison's fairness: as many networks as the reference's members, no more training."""
    snaps = [(int(t.loc[method, "snapshots"]), int(t.loc["independent", "members"])) for t in kept.values()]
    budgets = [(float(t.loc[method, "budget_epochs"]), float(t.loc["independent", "budget_epochs"]))
               for t in kept.values()]
    v.premise("same number of members", bool(snaps) and all(a == b for a, b in snaps), snaps[0][0] if snaps else None,
              "networks behind it = independent-seed members" + (f" ({snaps[0][1]})" if snaps else ""))
    v.premise("no more training than the reference", bool(budgets) and all(a <= b for a, b in budgets),
              budgets[0][0] if budgets else None,
              "training epochs <= the independent seeds'" + (f" ({budgets[0][1]:g})" if budgets else ""))


def _entry(method: str, tables: Mapping[str, tuple], num_classes: int | None, rules: Mapping,
           test_images: int | None = None) -> dict:
    tol = float(rules["ensemble_acc_tol"])
    v = V.Verdict(f"beyond-{method}", CLAIMS[method].format(tol=tol), rules)
    kept = {i: tab[0] for i, tab in tables.items() if _instance_ok(v, method, i, tab, num_classes)}
    v.enough(list(kept), list(tables) or ["(no ensembles table)"], "instances")
    _design(v, method, kept)
    for inst in kept:
        v.seed(inst)
    effects = [v.effect(name, [float(t.loc[method, col]) - float(t.loc["independent", col]) for t in kept.values()])
               for col, name in _EFFECTS]
    # the accuracy difference's own sampling error (issue 29.8; closerlook.verdicts.acc_diff_se)
    se = [V.acc_diff_se(t.loc[method, "test_acc"], t.loc["independent", "test_acc"], test_images) for t in kept.values()]
    nz = float(rules.get("acc_noise_z", 1.96)) * max([x for x in se if np.isfinite(x)], default=float("nan"))
    v.check(effects[0], -tol, "above", noise=nz if np.isfinite(nz) else None, noise_basis=V.ACC_NOISE_BASIS)
    v.measured = {inst: {LABELS[m]: {c: V.num(t.loc[m, c]) for c in _MEASURED} for m in (method, "independent")}
                  for inst, t in kept.items()}
    if len(kept) == 1:
        v.measured["note"] = "one instance: its range is a single value, no spread measured"
    return v.entry(f"the test-accuracy difference from as many independent seeds, over instances (range for n <= 3, "
                   f"t-interval above), lies wholly above -{tol:g}; the other effects are reported, not judged")


def evaluate_beyond(layout: Mapping, rules: Mapping | None = None) -> list[dict]:
    """One entry per ensemble method compared with the independent seeds, in the verdicts contract
    (``result["beyond"]`` of claims.json, rendered by :func:`closerlook.verdicts.to_markdown`).

    ``layout``: the fig9_ensembles layout, ``{"ensembles": {inst: ensembles.csv}, "data_info": info.json}``
    (the number of classes: the trained premise); ``rules``: config ``claims:`` (defaults
    :data:`closerlook.verdicts.DEFAULT_RULES`)."""
    r = V.rules_with_defaults(rules)
    tables = _instances(layout)
    k = V.read_num_classes(layout.get("data_info"))
    read = [t for t, _p in tables.values() if t is not None]
    methods = [m for m in METHODS if m != "independent" and (not read or any(m in t.index for t in read))]
    return [_entry(m, tables, k, r, V.read_test_images(layout.get("data_info"))) for m in methods]
