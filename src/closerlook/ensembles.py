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
unaugmented training data. :func:`evaluate_beyond` turns the tables into "Beyond the paper"
entries (premises, effects with their range or interval, verdict).
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

from .data import batches_of
from .io import ConfigError
from .landscape import recompute_bn
from .similarity import linear_cka
from .tables import ENSEMBLE_COLUMNS, MEMBER_COLUMNS, read_table

METHODS = ("independent", "snapshot", "fge", "curve", "swa")
LABELS = {"independent": "independent seeds", "snapshot": "SGDR snapshots", "fge": "FGE",
          "curve": "curve ensemble", "swa": "SWA (one network)"}
# The one owner of the ensemble defaults (config `ensembles:`). FGE: Garipov et al. use lr 0.05 -> 0.0005
# for VGG-16 (a factor 100); null = the base run's lr and 1 % of it. SWA: Izmailov et al. use
# swa_lr 0.01 after lr 0.05 for VGG-16 (0.2 x); null = 0.2 x the base run's lr. Both: assumptions.
ENSEMBLE_DEFAULTS: dict[str, Any] = {
    "members": 4, "budget_epochs": 4, "fge": {"lr_max": None, "lr_min": None}, "swa": {"lr": None},
    "curve_ts": None, "cka_images": 500, "eval_batch_size": 500,
}
FGE_LR_MIN_RATIO, SWA_LR_RATIO = 0.01, 0.2


def resolve_lrs(settings: Mapping, base_lr: float) -> dict[str, float]:
    """FGE's lr_max / lr_min and SWA's lr: the configured values, else the ratios above of the base run's lr."""
    lr_max = float(settings["fge"].get("lr_max") or base_lr)
    return {"lr_max": lr_max, "lr_min": float(settings["fge"].get("lr_min") or lr_max * FGE_LR_MIN_RATIO),
            "swa_lr": float(settings["swa"].get("lr") or base_lr * SWA_LR_RATIO)}


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
    s = {**ENSEMBLE_DEFAULTS, **(settings or {})}
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

# thresholds of the ensemble comparison (config `claims:` may override): "about as accurate" = within
# 1 percentage point of the independent-seed ensemble; a member "trained" = 5 points above chance (10 classes).
# Fixed before any run was measured.
BEYOND_RULES: dict[str, float] = {"ensemble_acc_tol": 0.01, "chance_acc": 0.1, "chance_margin": 0.05}
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
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
_EFFECTS = (("test_acc", "ensemble test accuracy minus the independent-seed ensemble's"),
            ("test_nll", "ensemble test NLL (nats) minus the independent-seed ensemble's"),
            ("disagreement", "mean pairwise member disagreement minus the independent seeds'"),
            ("cka", "mean pairwise penultimate-layer linear CKA minus the independent seeds'"))


def effect(name: str, values: Sequence[float]) -> dict:
    """An effect over instances: mean with (min, max) for n <= 3 (``range``), a 95 % t-interval above (``interval``)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    n, nan = int(v.size), float("nan")
    if n == 0:
        return {"name": name, "estimate": nan, "low": nan, "high": nan, "n": 0, "kind": "range"}
    est = float(v.mean())
    if n <= 3:
        return {"name": name, "estimate": est, "low": float(v.min()), "high": float(v.max()), "n": n, "kind": "range"}
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"name": name, "estimate": est, "low": est - half, "high": est + half, "n": n, "kind": "interval"}


def _instances(layout: Mapping) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per instance: its ensembles table indexed by method (diverged rows kept, marked by status)."""
    tables, problems = {}, []
    for inst, path in sorted((layout.get("ensembles") or {}).items()):
        df, prob = read_table(path)
        if df is None or df.empty or "method" not in df.columns:
            problems.append(f"{inst}: {prob or 'no method column'}")
            continue
        tables[inst] = df.set_index("method")
    return tables, problems


def _usable(t: pd.DataFrame, method: str) -> bool:
    return all(m in t.index and str(t.loc[m, "status"]) == "ok" for m in (method, "independent"))


def _premises(method: str, tables: Mapping[str, pd.DataFrame], problems: list[str], r: Mapping) -> list[dict]:
    present = [t for t in tables.values() if _usable(t, method)]
    missing = problems + [f"{i}: {method} or independent missing or diverged" for i, t in tables.items()
                          if not _usable(t, method)]
    floor = r["chance_acc"] + r["chance_margin"]
    worst = min((float(t.loc[m, "member_acc_min"]) for t in present for m in (method, "independent")), default=float("nan"))
    snaps = [(int(t.loc[method, "snapshots"]), int(t.loc["independent", "members"])) for t in present]
    budgets = [(float(t.loc[method, "budget_epochs"]), float(t.loc["independent", "budget_epochs"])) for t in present]
    return [
        {"name": "tables present and not diverged", "holds": bool(present) and not missing,
         "value": "; ".join(missing) or f"{len(present)} instance(s)", "rule": "every ensembles.csv readable, both rows status ok"},
        {"name": "every member trained above chance", "holds": bool(np.isfinite(worst) and worst > floor),
         "value": worst, "rule": f"lowest member test accuracy > {floor:g} (chance {r['chance_acc']:g} + {r['chance_margin']:g})"},
        {"name": "same number of members", "holds": bool(snaps) and all(a == b for a, b in snaps),
         "value": snaps[0][0] if snaps else float("nan"), "rule": "networks behind it = independent-seed members"},
        {"name": "no more training than the reference", "holds": bool(budgets) and all(a <= b for a, b in budgets),
         "value": budgets[0][0] if budgets else float("nan"),
         "rule": "training epochs <= the independent seeds'" + (f" ({budgets[0][1]:g})" if budgets else "")},
    ]


def _entry(method: str, tables: Mapping[str, pd.DataFrame], problems: list[str], r: Mapping) -> dict:
    tol = r["ensemble_acc_tol"]
    premises = _premises(method, tables, problems, r)
    present = {i: t for i, t in tables.items() if _usable(t, method)}
    effects = [dict(effect(col, [float(t.loc[method, col]) - float(t.loc["independent", col]) for t in present.values()]),
                    meaning=text) for col, text in _EFFECTS]
    acc = effects[0]
    rule = f"reproduced if the accuracy difference's low end >= -{tol:g}; not reproduced if its high end < -{tol:g}"
    failed = [p["name"] for p in premises if not p["holds"]]
    single = " (one instance: no spread measured)" if acc["n"] == 1 else ""
    if failed:
        verdict, reason = INCONCLUSIVE, f"premise absent: {', '.join(failed)}"
    elif acc["low"] >= -tol:
        verdict, reason = REPRODUCED, f"accuracy difference {acc['estimate']:+.4f} (low {acc['low']:+.4f}) >= -{tol:g}{single}"
    elif acc["high"] < -tol:
        verdict, reason = NOT_REPRODUCED, f"accuracy difference {acc['estimate']:+.4f} (high {acc['high']:+.4f}) < -{tol:g}{single}"
    else:
        verdict, reason = INCONCLUSIVE, f"the accuracy difference's {acc['kind']} [{acc['low']:+.4f}, {acc['high']:+.4f}] straddles -{tol:g}"
    rows = [(i, t.loc[method], t.loc["independent"]) for i, t in present.items()]
    measured = "; ".join(f"{i}: {LABELS[method]} acc {m['test_acc']:.4f} nll {m['test_nll']:.4f} vs independent acc "
                         f"{ref['test_acc']:.4f} nll {ref['test_nll']:.4f}; disagreement {m['disagreement']:.3f} vs "
                         f"{ref['disagreement']:.3f}, CKA {m['cka']:.3f} vs {ref['cka']:.3f}; training {m['budget_epochs']:g} "
                         f"vs {ref['budget_epochs']:g} epochs" for i, m, ref in rows) or "no tables"
    return {"id": f"beyond-{method}", "claim": CLAIMS[method].format(tol=tol), "verdict": verdict, "premises": premises,
            "effects": effects, "rule": rule, "reason": reason, "measured": measured}


def evaluate_beyond(layout: Mapping, rules: Mapping | None = None) -> list[dict]:
    """One entry per ensemble method compared with the independent seeds, following the verdicts contract.

    ``layout``: ``{"ensembles": {inst: ensembles.csv}}``; ``rules``: :data:`BEYOND_RULES` keys."""
    r = {**BEYOND_RULES, **{k: v for k, v in (rules or {}).items() if k in BEYOND_RULES}}
    tables, problems = _instances(layout)
    methods = [m for m in METHODS if m != "independent"
               and (not tables or any(m in t.index for t in tables.values()))]
    return [_entry(m, tables, problems, r) for m in methods]


def _num(x: Any) -> str:
    return "nan" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.4g}"


def render_beyond(entries: Sequence[Mapping]) -> str:
    """The "Beyond the paper" section of claims.md (markdown)."""
    lines = ["## Beyond the paper: what SGDR's snapshots buy, beside FGE, curve points, SWA and seeds", "",
             "A comparison, not a test of \"distinct minima\": connected solutions can still be diverse.", "",
             "| comparison | verdict | accuracy difference vs independent seeds |", "|---|---|---|"]
    for e in entries:
        a = e["effects"][0]
        lines.append(f"| {e['id']} | **{e['verdict']}** | {_num(a['estimate'])} ({a['kind']} {_num(a['low'])}..{_num(a['high'])}, n={a['n']}) |")
    for e in entries:
        lines += ["", f"### {e['id']}: {e['verdict']}", "", f"**Claim.** {e['claim']}", "", "**Premises.**", ""]
        lines += [f"- {p['name']}: {'holds' if p['holds'] else 'ABSENT'} ({_num(p['value']) if not isinstance(p['value'], str) else p['value']}; {p['rule']})"
                  for p in e["premises"]]
        lines += ["", "**Effects** (estimate, low..high, kind, n).", ""]
        lines += [f"- {f['name']}: {_num(f['estimate'])} ({_num(f['low'])}..{_num(f['high'])}, {f['kind']}, n={f['n']})"
                  + (f" - {f['meaning']}" if f.get("meaning") else "") for f in e["effects"]]
        lines += ["", f"**Measured.** {e['measured']}", "", f"**Rule.** {e['rule']}", "", f"**Verdict.** {e['verdict']}: {e['reason']}"]
    return "\n".join(lines) + "\n"
