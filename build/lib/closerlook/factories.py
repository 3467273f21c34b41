"""Models from outside: ``torchvision:<name>`` or any importable ``package.module:factory``.

A model spec names an external factory by a colon (``{"name": "torchvision:resnet18",
"kwargs": {...}}``; ``torchvision:`` is short for ``torchvision.models:``). This module

* imports it (:func:`import_factory`) - only when the caller allows that name: a config names
  its factories itself, a checkpoint never decides what code runs (:func:`check_allowed`);
* calls it with the spec's ``kwargs`` plus ``in_channels`` / ``num_classes`` / ``image_size``
  for each of those its signature names as a parameter (``**kwargs`` does not count: torchvision's
  constructors take ``**kwargs`` and fail on unknown keys);
* adapts it to the data (``adapt``, :data:`ADAPTERS`):

  - ``none`` (default): as built;
  - ``io`` (or ``true``): the first registered ``nn.Conv2d`` is replaced when its
    ``in_channels`` differ from the data's (same out channels, kernel, stride, padding, bias),
    the last registered ``nn.Linear`` when its ``out_features`` differ from the classes;
  - ``small_input``: ``io``, and the first conv becomes a 3x3 stride-1 conv and a
    ``nn.MaxPool2d`` registered between the first and the second conv becomes an identity: the
    CIFAR-style stem (an ImageNet ResNet's 7x7/2 conv + 3x3/2 pool shrink a 32x32 input to 8x8
    before the first block, a 28x28 one to 7x7);

* finds its analysis layers and parameter groups by one forward pass on a zero image
  (:func:`trace`, :func:`layers_from_patterns`, :func:`default_layers`, :func:`default_groups`).

Module-name patterns are globs matched segment by segment (``*`` does not cross a dot):
``layer*`` matches ``layer1`` .. ``layer4``, ``layer*.*`` their blocks, ``fc`` itself.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .io import CheckpointError, ConfigError
from .catalog import ADAPTERS, _NAME_RE, is_external, normalise_adapt, split_name  # noqa: F401 (torch-free, in catalog: planning imports no torch)

DIM_ARGS = ("in_channels", "num_classes", "image_size")
# modules whose eval-mode output is their input: no representation of their own
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def check_allowed(name: str, allow: Iterable[str], path: str) -> None:
    """Refuse (CheckpointError naming ``path``) an external factory that ``allow`` does not list."""
    allow = set(allow)
    if is_external(name) and name not in allow:
        named = ", ".join(sorted(allow)) or "none"
        raise CheckpointError(
            f"{path}: the checkpoint names the model factory {name!r}, which the current config does not name "
            f"(its external factories: {named}); refusing to import it - a checkpoint never decides what code "
            "runs. If you trust it, name it in a run's model block of the config")


def import_factory(name: str, key: str = "model.name", default_module: str = "torchvision.models") -> Callable:
    """The callable ``name`` refers to; ConfigError naming ``key`` when it cannot be imported or called."""
    mod_name, attr = split_name(name, key, default_module)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module {mod_name!r} of {name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {mod_name!r} has no attribute {attr!r} (from {name!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {name!r} is a {type(obj).__name__}, not a callable")
    return obj


def named_params(fn: Callable) -> set[str]:
    """Parameters a callable names explicitly (``*args`` / ``**kwargs`` excluded)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    return {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def call_factory(name: str, kwargs: Mapping, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    fn = import_factory(name)
    dims = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    named = named_params(fn)
    args = {k: v for k, v in dims.items() if k in named}
    args.update(kwargs)
    try:
        model = fn(**args)
    except Exception as exc:  # the factory's own error, whatever its type: name the spec that caused it
        raise ConfigError(f"model.kwargs: {name}({', '.join(f'{k}={v!r}' for k, v in args.items())}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# ----------------------------------------------------------------------------- adapters


def _set_module(model: nn.Module, qual: str, new: nn.Module) -> None:
    parent, _, child = qual.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def adapt(model: nn.Module, how: str, in_channels: int, num_classes: int) -> nn.Module:
    """Fit ``model``'s first conv / last Linear (and stem, ``small_input``) to the data; see the module doc."""
    if how == "none":
        return model
    named = list(model.named_modules())
    convs = [(n, m) for n, m in named if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
    if not convs and not linears:
        raise ConfigError(f"model.adapt: {how!r} found neither an nn.Conv2d nor an nn.Linear to adapt")
    if convs:
        n, c = convs[0]
        small = how == "small_input"
        if small or c.in_channels != in_channels:
            k, s, p = ((3, 3), (1, 1), (1, 1)) if small else (c.kernel_size, c.stride, c.padding)
            _set_module(model, n, nn.Conv2d(in_channels, c.out_channels, k, stride=s, padding=p,
                                            bias=c.bias is not None, device=c.weight.device))
        if small:
            order = [q for q, _ in named]
            stop = order.index(convs[1][0]) if len(convs) > 1 else len(order)
            pools = [q for q, m in named[order.index(n):stop] if isinstance(m, nn.MaxPool2d)]
            if pools:
                _set_module(model, pools[0], nn.Identity())
    if linears:
        n, lin = linears[-1]
        if lin.out_features != num_classes:
            _set_module(model, n, nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None,
                                            device=lin.weight.device))
    return model


# ----------------------------------------------------------------------------- tracing, layers, groups

def trace(model: nn.Module, in_channels: int, image_size: int) -> tuple[list[str], dict[str, int], Any]:
    """One eval-mode forward pass on a zero image: (module names in first-call order, calls per name, output)."""
    order: list[str] = []
    calls: dict[str, int] = {}

    def hook_for(name):
        def hook(_m, _i, _o):
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    p = next(model.parameters(), None)
    x = torch.zeros((1, in_channels, image_size, image_size), device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the model's own error on an input of the data's shape
        raise ConfigError(f"model: a forward pass on one {in_channels}x{image_size}x{image_size} image failed: "
                          f"{type(exc).__name__}: {exc} (adapt: io or small_input fits a torchvision model's "
                          "first conv and classifier to the data)") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order, calls, out


def check_output(out: Any, num_classes: int, adapted: str | None = None) -> None:
    """Logits of shape (1, num_classes); ``adapted``: the spec's ``adapt`` (the advice differs once it was given)."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if adapted in ("io", "small_input"):  # adapt replaces only the last nn.Linear: squeezenet's classifier is a conv
            advice = (f"adapt: {adapted} was given, but it replaces only the last nn.Linear and this network's "
                      f"classifier is not one (e.g. squeezenet's final 1x1 conv); pass kwargs: "
                      f"{{num_classes: {num_classes}}} so the factory builds the classifier for the data")
        else:
            advice = f"pass kwargs: {{num_classes: {num_classes}}} or adapt: io"
        raise ConfigError(f"model: the network's output on one image is {shape}, expected logits of shape "
                          f"(1, {num_classes}) for the data's {num_classes} classes; {advice}")


def match(model: nn.Module, patterns: Iterable[str], key: str) -> list[str]:
    """Module names matching any pattern (registration order); ConfigError naming ``key`` listing the modules
    that exist when a pattern matches nothing."""
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{key}: {pat!r} must be a non-empty module name or glob pattern")
        segs = pat.split(".")
        hits = [n for n in names if len(n.split(".")) == len(segs)
                and all(fnmatch.fnmatchcase(a, b) for a, b in zip(n.split("."), segs))]
        if not hits:
            shown = ", ".join(names[:80]) + (f", ... ({len(names) - 80} more)" if len(names) > 80 else "")
            raise ConfigError(f"{key}: {pat!r} matches no module of this model; its modules: {shown}")
        out += [h for h in hits if h not in out]
    return out


def layers_from_patterns(model: nn.Module, patterns: Iterable[str], order: list[str], calls: Mapping[str, int],
                         key: str = "model.analysis_layers") -> dict[str, str]:
    """``{name: name}`` of the matched modules in forward order; each must run exactly once per forward pass."""
    hits = match(model, patterns, key)
    for h in hits:
        if calls.get(h, 0) != 1:
            raise ConfigError(f"{key}: module {h!r} runs {calls.get(h, 0)} times in a forward pass; name a module "
                              "that runs once (its output is the layer's representation)")
    return {h: h for h in sorted(hits, key=order.index)}


def _blocks(module: nn.Module, prefix: str = "") -> list[str]:
    out = []
    for n, m in module.named_children():
        q = f"{prefix}{n}"
        out += _blocks(m, q + ".") if isinstance(m, _CONTAINERS) else [q]
    return out


def default_layers(model: nn.Module, order: list[str], calls: Mapping[str, int]) -> dict[str, str]:
    """The top-level blocks (containers such as ``nn.Sequential`` opened) in forward order, each run once,
    pass-through modules (identity, dropout) left out: for a ResNet the stem's modules, every residual
    block's output and the head; nothing inside a block."""
    mods = dict(model.named_modules())
    keep = [b for b in _blocks(model) if calls.get(b, 0) == 1 and not isinstance(mods[b], _PASS_THROUGH)]
    if not keep:
        raise ConfigError("model: no top-level block runs once in a forward pass; name the layers in "
                          "model.analysis_layers")
    return {b: b for b in sorted(keep, key=order.index)}


def _owners(model: nn.Module, order: list[str]) -> list[str]:
    """Modules that own parameters directly, in forward order (never-called ones last)."""
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    rank = {n: i for i, n in enumerate(order)}
    return sorted(owners, key=lambda n: rank.get(n, len(rank)))


def default_groups(model: nn.Module, order: list[str]) -> dict[str, list[str]]:
    """``classifier`` = the trailing ``nn.Linear`` modules in forward order, ``features`` = every other
    parameter-owning module (as name prefixes, :func:`closerlook.models.resolve_freeze`)."""
    owners = _owners(model, order)
    mods = dict(model.named_modules())
    k = len(owners)
    while k > 0 and isinstance(mods[owners[k - 1]], nn.Linear):
        k -= 1
    pref = lambda n: f"{n}." if n else ""  # noqa: E731
    return {"classifier": [pref(n) for n in owners[k:]], "features": [pref(n) for n in owners[:k]]}


def groups_from_patterns(model: nn.Module, groups: Mapping, order: list[str]) -> dict[str, list[str]]:
    """Configured groups (``{group: [patterns]}``) as name prefixes; ``features`` defaults to every
    parameter-owning module outside ``classifier``."""
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"model.groups: must be a mapping {{group: [module patterns]}}, got {groups!r}")
    out: dict[str, list[str]] = {}
    for g, pats in groups.items():
        pats = [pats] if isinstance(pats, str) else pats
        if not isinstance(pats, (list, tuple)) or not pats:
            raise ConfigError(f"model.groups.{g}: must be a non-empty list of module names or patterns")
        out[str(g)] = [f"{n}." for n in match(model, pats, f"model.groups.{g}")]
    if "features" not in out and "classifier" in out:
        cls = tuple(out["classifier"])
        out["features"] = [f"{n}." if n else "" for n in _owners(model, order) if not f"{n}.".startswith(cls)]
    return out
