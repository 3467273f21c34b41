"""Permutation alignment of two networks by weight matching, and REPAIR for interpolation without BN.

Two networks trained from different seeds compute the same function up to a
permutation of their hidden units; the straight line between them crosses a
barrier that may be that permutation alone. Weight matching (Ainsworth et al.,
"Git Re-Basin", 2023, algorithm 1) finds, for every group of tied units, the
permutation of network B that maximises the inner product of its weights with
A's, one group at a time (a linear assignment, ``scipy.optimize.linear_sum_assignment``)
until no group improves.

A :class:`PermSpec` says which axis of which state-dict entry each permutation
acts on. Specs come from

* :func:`builtin_spec`: the built-in families of :mod:`closerlook.models`
  (VGG-11/16 +-BN, ``small_cnn``, the CIFAR ResNet-18 with each residual
  stream one tied group), written out from the module structure;
* :func:`fx_spec`: derived from a ``torch.fx`` trace (:mod:`closerlook.align_fx`): convs (depthwise and
  grouped too), Linear, norm layers, elementwise activations (module and function forms), dropout, pooling,
  residual additions and multiplicative gates (tied), concatenations and chunks, flatten and channel shuffles
  (e.g. torchvision's ResNets, MobileNets, ShuffleNet, SqueezeNet, EfficientNet); an operation it cannot
  follow raises :class:`AlignError` naming the enclosing module and the operation. docs/alignment.md lists
  what aligns automatically and how to write a spec by hand.

Permuting copies values, so :func:`apply_permutation` of a network is bitwise
the same function up to float reassociation (the sums inside a layer run in
another order).

REPAIR (Jordan et al., 2023): an interpolated network without BN loses the
variance of its hidden units ("variance collapse"). :func:`repair` re-estimates,
layer by layer from the input, each Conv2d/Linear output channel's mean and
standard deviation on data and rescales the channel to the interpolation of
the endpoints' statistics.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from .align_fx import derive
from .align_spec import AlignError, Axis, Mixed, PermSpec, _names  # noqa: F401 - re-exported: the public names
from .data import batches_of
from .io import ConfigError
from .defaults import ALIGN_DEFAULTS, CURVE_ALIGN_DEFAULT  # noqa: F401 (torch-free: planning imports no torch)
from .landscape import evaluate_point
from .models import VGG, ResNet18
from .settings_types import AlignSettings
from .tables import PATH_COLUMNS
from .defaults import ALIGN_METHODS as METHODS  # noqa: F401 (torch-free owner; re-exported)



# --------------------------------------------------------------------------- built-in families


class _Builder:
    """Accumulates a spec: each layer's parameters get (out perm, in perm) axes."""

    def __init__(self, module: nn.Module) -> None:
        self.spec, self.sd = PermSpec(), module.state_dict()

    def new(self, name: str, size: int) -> str:
        self.spec.sizes[name] = size
        return name

    def layer(self, prefix: str, out: str | None, inp: Axis) -> None:
        """A Conv2d/Linear (weight: out, in, kernel...) or a norm layer (every vector: out)."""
        o = (out, 1) if out else None
        for key in [k for k in self.sd if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1:]]:
            name, t = key[len(prefix) + 1:], self.sd[key]
            if name == "weight" and t.dim() >= 2:
                self.spec.axes[key] = (o, inp) + (None,) * (t.dim() - 2)
            elif t.dim() == 1:
                self.spec.axes[key] = (o,)
            else:  # num_batches_tracked
                self.spec.axes[key] = (None,) * t.dim()


def _vgg_spec(model: nn.Module) -> PermSpec:
    b, cur = _Builder(model), None
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            p = b.new(f"features.{i}", m.out_channels)
            b.layer(f"features.{i}", p, (cur, 1) if cur else None)
            cur = p
        elif isinstance(m, nn.BatchNorm2d):
            b.layer(f"features.{i}", cur, None)
    linears = [(i, m) for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for k, (i, m) in enumerate(linears):
        if k == 0:  # flattened conv output: each channel is a block of H*W consecutive features
            inp = (cur, m.in_features // b.spec.sizes[cur]) if cur else None
        else:
            inp = (cur, 1)
        cur = b.new(f"classifier.{i}", m.out_features) if k < len(linears) - 1 else None
        b.layer(f"classifier.{i}", cur, inp)
    return b.spec


def _resnet_spec(model: nn.Module) -> PermSpec:
    b = _Builder(model)
    stream = b.new("stream0", model.stem[0].out_channels)
    b.layer("stem.0", stream, None)
    b.layer("stem.1", stream, None)
    for s in range(1, 5):
        for j, block in enumerate(getattr(model, f"layer{s}")):
            pre, inp = f"layer{s}.{j}", (stream, 1)
            inner = b.new(f"{pre}.inner", block.conv1.out_channels)
            if len(block.shortcut):  # a projection shortcut starts a new residual stream
                stream = b.new(f"stream{s}", block.conv2.out_channels)
                b.layer(f"{pre}.shortcut.0", stream, inp)
                b.layer(f"{pre}.shortcut.1", stream, None)
            b.layer(f"{pre}.conv1", inner, inp)
            b.layer(f"{pre}.bn1", inner, None)
            b.layer(f"{pre}.conv2", stream, (inner, 1))
            b.layer(f"{pre}.bn2", stream, None)
    b.layer("fc", None, (stream, 1))
    return b.spec


def builtin_spec(model: nn.Module) -> PermSpec:
    """The permutation spec of a network from :func:`closerlook.models.build_model`."""
    if isinstance(model, VGG):
        return _vgg_spec(model)
    if isinstance(model, ResNet18):
        return _resnet_spec(model)
    raise AlignError(f"builtin_spec: {type(model).__name__} is not a built-in family; use fx_spec")


def permutation_spec(model: nn.Module) -> PermSpec:
    """The model's own spec when it has one (a ``closerlook_permutation_spec`` attribute: a PermSpec or a method
    returning one, see docs/alignment.md), else the built-in spec, else the one derived from a torch.fx trace."""
    own = getattr(model, "closerlook_permutation_spec", None)
    if own is not None:
        spec = own() if callable(own) else own
        if not isinstance(spec, PermSpec):
            raise AlignError(f"{type(model).__name__}.closerlook_permutation_spec gave a {type(spec).__name__}, "
                             "not a closerlook.align.PermSpec")
        spec.check(model.state_dict())
        return spec
    try:
        return builtin_spec(model)
    except AlignError:
        return fx_spec(model)


# --------------------------------------------------------------------------- torch.fx derivation


def fx_spec(model: nn.Module, example: torch.Tensor | None = None) -> PermSpec:
    """A permutation spec derived from a ``torch.fx`` trace of ``model`` (:mod:`closerlook.align_fx`,
    docs/alignment.md); ``example``: an input batch for the shapes (default: 2 random images of the first size in 32, 28, 64, 96, 224 pixels the model accepts)."""
    return derive(model, example)


# --------------------------------------------------------------------------- permutations


def _take(t: torch.Tensor, axis: int, perm: torch.Tensor, block: int) -> torch.Tensor:
    idx = (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1) if block > 1 else perm
    return t.index_select(axis, idx.to(t.device))


def apply_permutation(spec: PermSpec, perms: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                      skip: tuple | None = None) -> dict[str, torch.Tensor]:
    """``state`` with every axis permuted (unit i of the result = unit ``perm[i]`` of ``state``).

    ``skip=(key, axis, name)`` leaves permutation ``name`` on that one axis as it is (weight matching's cost of
    one group); ``(key, axis)`` the whole axis."""
    out = {}
    for key, t in state.items():
        for i, ax in enumerate(spec.axes.get(key, ())):
            if skip is not None and (key, i) == tuple(skip[:2]):
                if len(skip) == 2 or not isinstance(ax, Mixed):
                    continue
                t = t.index_select(i, ax.index(perms, skip=skip[2]).to(t.device))
            elif isinstance(ax, Mixed):
                t = t.index_select(i, ax.index(perms).to(t.device))
            elif ax is not None:
                t = _take(t, i, perms[ax[0]], ax[1])
        out[key] = t
    return out


def random_permutation(spec: PermSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}


def _cost(spec: PermSpec, users, p: str, a: Mapping, b: Mapping, perms: Mapping) -> torch.Tensor:
    """sum over p's entries of A_w B_w^T, B's other axes permuted.

    In the weights' dtype (float32): only the argmax of the assignment is used, and 4096-wide layers
    would make float64 products the bulk of the time; a float64 sum across entries."""
    n = spec.sizes[p]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for key, axis, block in users[p]:
        wb = apply_permutation(spec, perms, {key: b[key]}, skip=(key, axis, p))[key].movedim(axis, 0)
        wa, ax = a[key].movedim(axis, 0), spec.axes[key][axis]
        if isinstance(ax, Mixed):  # p's positions, unit by unit
            rows = ax.rows(p).reshape(-1)
            wa, wb = wa[rows], wb[rows]
        wa = wa.reshape(n, -1)
        cost += (wa @ wb.reshape(n, -1).to(wa.dtype).T).double()
    return cost


def _assign(cost: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The maximising assignment and whether it beats ``current``."""
    _, col = linear_sum_assignment(cost.numpy(), maximize=True)
    rows = torch.arange(len(col))
    new, old = cost[rows, col].sum(), cost[rows, current].sum()
    return torch.as_tensor(col, dtype=torch.long), bool(new > old + 1e-12 * abs(float(old)))


def _known_users(spec: PermSpec, users, known: set) -> dict:
    """Each group's entries whose other permuted axes are already matched (the forward sweep)."""
    out = {}
    for p, us in users.items():
        out[p] = [(key, axis, blk) for key, axis, blk in us
                  if all(q in known or (j == axis and q == p) for j, ax in enumerate(spec.axes[key]) for q in _names(ax))]
    return out


def weight_matching(spec: PermSpec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *,
                    max_iter: int = ALIGN_DEFAULTS["max_iter"], seed: int = ALIGN_DEFAULTS["seed"],
                    keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Permutations that align ``b`` to ``a`` (Ainsworth et al., algorithm 1, after a forward sweep).

    The forward sweep matches the groups in the spec's order (input to output), each on the entries
    whose other axes are matched already (for a permuted copy this alone is exact: by Cauchy-Schwarz
    the true assignment is the unique maximum when no two units have equal weights). Then
    coordinate descent over all entries, groups in a seeded random order, until no group improves.
    Coordinate descent from the identity alone gets stuck when two wide layers each need the other
    (measured: VGG-11's 4096-wide FC pair). Matches the floating entries ``keys`` (default: all but BN
    running statistics). Returns permutation name -> index tensor for :func:`apply_permutation` on ``b``.
    """
    spec.check(a)
    spec.check(b)
    keys = set(keys) if keys is not None else {k for k in spec.axes if a[k].is_floating_point()
                                                 and not k.endswith(("running_mean", "running_var"))}
    users = {p: [u for u in us if u[0] in keys] for p, us in spec.users().items()}
    a = {k: a[k].detach().cpu() for k in keys}
    b = {k: b[k].detach().cpu() for k in keys}
    perms = {p: torch.arange(n) for p, n in spec.sizes.items()}
    known: set[str] = set()
    for p in spec.sizes:
        sweep = _known_users(spec, users, known)
        if sweep[p]:
            perms[p] = _assign(_cost(spec, sweep, p, a, b, perms), perms[p])[0]
        known.add(p)
    rng = np.random.default_rng(seed)
    names = list(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for i in rng.permutation(len(names)):
            perms[names[i]], better = _assign(_cost(spec, users, names[i], a, b, perms), perms[names[i]])
            improved |= better
        if not improved:
            break
    return perms


def align(module: nn.Module, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
          settings: Mapping | None = None) -> dict[str, torch.Tensor]:
    """``b`` permuted to match ``a`` (``settings``: :data:`ALIGN_DEFAULTS` keys); ``method: none`` returns b."""
    try:
        s = AlignSettings.of(settings)
    except ConfigError as e:   # the caller catches the alignment's own error
        raise AlignError(str(e)) from e
    if s["method"] == "none":
        return dict(b)
    spec = permutation_spec(module)
    perms = weight_matching(spec, a, b, max_iter=int(s["max_iter"]), seed=int(s["seed"]))
    return apply_permutation(spec, perms, b)


# --------------------------------------------------------------------------- REPAIR


def _channel_stats(module: nn.Module, state: Mapping, name: str, loader: Any, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of module ``name``'s output over ``loader`` (eval mode)."""
    sums: list[torch.Tensor] = []

    def hook(_m, _i, out):
        o = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
        sums.append(torch.stack([o.sum(1), (o * o).sum(1), torch.full_like(o[:, 0], o.shape[1])]))

    h = dict(module.named_modules())[name].register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x, _y in batches_of(loader):
                functional_call(module, dict(state), (x.to(device) if device is not None else x,))
    finally:
        h.remove()
    s, ss, n = torch.stack(sums).sum(0)
    mean = s / n
    return mean, (ss / n - mean * mean).clamp_min(0).sqrt()


def repair(module: nn.Module, state: Mapping[str, torch.Tensor], ends: Sequence[Mapping[str, torch.Tensor]],
           alpha: float, loader: Any, device: Any = None, cache: dict | None = None) -> dict[str, torch.Tensor]:
    """REPAIR the interpolated ``state`` = (1 - alpha) ends[0] + alpha ends[1] (a new state dict).

    Layer by layer from the input, each Conv2d/Linear output channel (except the
    logits) is rescaled so that its mean and std on ``loader`` equal the
    interpolation of the two endpoints' (their statistics measured on the same data;
    pass the same ``cache`` dict for every point of one line to measure them once).
    """
    cache = {} if cache is None else cache
    was = module.training
    module.eval()
    layers = [n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    out = {k: v.clone() for k, v in state.items()}
    try:
        for name in layers:
            for i, e in enumerate(ends):
                if (name, i) not in cache:
                    cache[(name, i)] = _channel_stats(module, e, name, loader, device)
            (ma, sa), (mb, sb) = cache[(name, 0)], cache[(name, 1)]
            goal_m, goal_s = (1 - alpha) * ma + alpha * mb, (1 - alpha) * sa + alpha * sb
            m, s = _channel_stats(module, out, name, loader, device)
            scale = goal_s / s.clamp_min(1e-12)
            w, bias = out[f"{name}.weight"], out.get(f"{name}.bias")
            if bias is None:
                raise AlignError(f"repair: layer {name!r} has no bias to carry the corrected mean (REPAIR is for "
                                 "networks without BN; with BN, recomputing its statistics does the same)")
            shape = (-1,) + (1,) * (w.dim() - 1)
            out[f"{name}.weight"] = w * scale.to(w).view(shape)
            out[f"{name}.bias"] = ((bias.double() - m) * scale + goal_m).to(bias)
    finally:
        module.train(was)
    return out


def interpolate(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for floating entries; other entries from ``a``."""
    return {k: (torch.lerp(v, b[k].to(v), alpha) if v.is_floating_point() else v.clone()) for k, v in a.items()}


def evaluate_line(module: nn.Module, a: Mapping, b: Mapping, train_loader: Any, test_loader: Any, ts: Sequence[float],
                  *, repair_loader: Any = None, label: str = "line", log: Callable[[str], Any] | None = None):
    """The path table of the straight line a -> b (BN recomputed at each t), REPAIRed when ``repair_loader``."""
    import pandas as pd


    device = next((v.device for v in module.state_dict().values()), None)
    rows, cache = [], {}
    for t in ts:
        state = interpolate(a, b, float(t))
        if repair_loader is not None and 0.0 < t < 1.0:
            state = repair(module, state, (a, b), float(t), repair_loader, device, cache)
        m = evaluate_point(module, state, train_loader, test_loader, device=device)
        rows.append({"t": float(t), **m, "path": label, "status": "ok" if np.isfinite(m["train_loss"]) else "diverged"})
        if log:
            log(f"{label} t={t:.3f} train_loss={m['train_loss']:.4f} test_acc={m['test_acc']:.4f}")
    return pd.DataFrame(rows, columns=PATH_COLUMNS)
