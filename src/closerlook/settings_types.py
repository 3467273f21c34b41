"""Typed settings: each config block resolved once into a small object that checks its arguments on
construction (as netrep's metric classes do), so a library caller with a typo or a bad value gets a
:class:`~closerlook.io.ConfigError` naming ``block.key`` before any work starts, not a KeyError mid-run.

``CurveSettings.of({"epochs": 5})`` is the one merge: the block's defaults (:mod:`closerlook.defaults`,
their one owner) < the given layers; an object that is already resolved passes through unchanged, so a
stage can take either. Fields read as attributes (``s.epochs``) or keys (``s["epochs"]``).

Why a read-only ``dict`` subclass and not a dataclass: the rules hand these to the jobs as Snakemake
``params``, and Snakemake records a param for its rerun-on-change check only when it is a builtin
container (``dict``: by ``repr``, which a subclass keeps); any other object is recorded as
unrepresentable, so a changed setting would silently stop re-running its job. Torch-free (planning
builds these): imports the standard library, :mod:`closerlook.io` and :mod:`closerlook.defaults`.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, ClassVar, Mapping

from . import defaults as D
from .io import ConfigError

Check = Callable[[Any], "str | None"]  # None when the value is right, else what it must be
_NOTHING = object()  # fails every check: asking a check for its description


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int) -> Check:
    return lambda v: None if _is_int(v) and v >= lo else f"an integer >= {lo}"


def number(lo: float, hi: float | None = None, strict: bool = False) -> Check:
    """A finite number in [lo, hi] (hi None: no upper bound); ``strict``: both ends excluded."""
    def check(v):
        ok = _is_num(v) and (lo < v if strict else lo <= v) and (hi is None or (v < hi if strict else v <= hi))
        op = ">" if strict else ">="
        return None if ok else f"a number {op} {lo}" + ("" if hi is None else f" and {'<' if strict else '<='} {hi}")
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*options: str) -> Check:
    return lambda v: None if v in options else f"one of {', '.join(options)}"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else (None if check(v) is None else f"null or {check(v)}")


def list_of(check: Check, length: int | None = None, min_len: int = 0) -> Check:
    def run(v):
        ok = isinstance(v, (list, tuple)) and (length is None or len(v) == length) and len(v) >= min_len \
            and all(check(x) is None for x in v)
        size = f"{length} " if length else (f"{min_len}+ " if min_len else "")
        return None if ok else f"a list of {size}items, each {check(_NOTHING)}"
    return run


def mapping(v) -> str | None:
    return None if isinstance(v, Mapping) else "a mapping"


def merge(layers: tuple, nested: tuple = ()) -> dict:
    """Left to right, keys replaced wholesale (deep copies), except the ``nested`` sub-blocks, which merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            out[k] = {**out.get(k, {}), **copy.deepcopy(v or {})} if k in nested else copy.deepcopy(v)
    return out


class Settings(dict):
    """A block's resolved, checked, read-only settings. Subclasses declare ``BLOCK`` (its config key),
    ``DEFAULTS`` (the default layers, merged left to right), ``CHECKS`` ({key: check}: every key a
    resolved block has), ``REFS`` (keys naming other config entries, which :mod:`closerlook.config`
    cross-checks) and ``NESTED`` (sub-blocks merged key by key)."""
    BLOCK: ClassVar[str] = ""
    DEFAULTS: ClassVar[tuple[Mapping, ...]] = ()
    CHECKS: ClassVar[dict[str, Check]] = {}
    REFS: ClassVar[frozenset[str]] = frozenset()
    NESTED: ClassVar[tuple[str, ...]] = ()

    def __init__(self, values: Mapping = (), key: str | None = None):
        super().__init__(values)
        where = key or self.BLOCK
        unknown = sorted(set(self) - set(self.CHECKS) - self.REFS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(self.CHECKS)})")
        missing = [f"{where}.{k}" for k in self.CHECKS if k not in self]
        if missing:
            raise ConfigError(f"{', '.join(missing)}: missing (no default; or build it with {type(self).__name__}.of(...), "
                              "which fills the defaults)")
        for k, check in self.CHECKS.items():
            why = check(self[k])
            if why:
                raise ConfigError(f"{where}.{k}: must be {why}, got {self[k]!r}")

    @classmethod
    def of(cls, *layers: Mapping | None, key: str | None = None):
        """The defaults < ``layers`` (None skipped), checked; a single layer already of this type is returned as is."""
        if len(layers) == 1 and isinstance(layers[0], cls):
            return layers[0]
        return cls(merge((*cls.DEFAULTS, *layers), cls.NESTED), key)

    def replace(self, **changes):
        """A new object of this type with ``changes`` (checked again)."""
        return type(self)({**self, **changes})

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}") from None

    def __reduce__(self):      # pickle / copy rebuild through __init__ (checked), not item by item
        return type(self), (dict(self),)

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only: use .replace(key=value) for a changed copy")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = clear = setdefault = _read_only


_pos, _nonneg = integer(1), integer(0)
_opt_pos = optional(_pos)
_grid = list_of(integer(2), length=2)
_eval = {"eval_train_images": _opt_pos, "bn_batches": _opt_pos, "eval_batch_size": _pos}


class StopRule(Settings):
    """Curve fitting's stopping rule (:data:`closerlook.defaults.STOP_DEFAULTS`; ``min_delta`` has no
    default: it is the tolerance, and the rule is on only when it is given)."""
    BLOCK = "stop"
    DEFAULTS = (D.STOP_DEFAULTS,)
    CHECKS = {"ts": list_of(number(0.0, 1.0), min_len=1), "images": _pos, "patience": _pos, "every": _pos,
              "min_delta": number(0.0)}


class CurveSettings(Settings):
    """A curve's fitting (FIT_DEFAULTS) and evaluation (PATH_DEFAULTS) settings; ``stop`` is kept as given
    (its completed form is :meth:`stop_rule`), so the recorded settings read as configured."""
    BLOCK = "curves"
    DEFAULTS = (D.FIT_DEFAULTS, D.PATH_DEFAULTS)
    CHECKS = {"kind": one_of(*(k for k in D.CURVE_KINDS if k != "line")), "num_bends": integer(3), "epochs": _pos, "lr": number(0, strict=True),
              "weight_decay": number(0), "momentum": number(0, 1), "batch_size": _pos, "t_per_batch": _pos,
              "t_sampling": one_of(*D.T_SAMPLINGS), "t_split": boolean, "augment": boolean,
              "schedule": one_of(*D.FIT_SCHEDULES), "plateau_patience": _pos, "resume": boolean,
              "checkpoint_epochs": list_of(_nonneg), "resume_every": _pos, "stop": optional(mapping), "points": integer(2),
              **_eval}
    REFS = frozenset({"start", "end", "align"})

    def __init__(self, values: Mapping = (), key: str | None = None):
        super().__init__(values, key)
        self.stop_rule(key)     # checked now, not when the fit reaches it

    def stop_rule(self, key: str | None = None) -> StopRule | None:
        """The stopping rule completed with its defaults, or None when off."""
        return None if self["stop"] is None else StopRule.of(self["stop"], key=f"{key or self.BLOCK}.stop")


def _margin(v) -> str | None:
    one = number(0)
    ok = one(v) is None or list_of(one, length=4)(v) is None
    return None if ok else "a number >= 0, or four (left, right, bottom, top)"


class PlaneSettings(Settings):
    BLOCK = "planes"
    DEFAULTS = (D.PLANE_DEFAULTS,)
    CHECKS = {"grid": _grid, "margin": _margin, **_eval}
    REFS = frozenset({"curve", "project"})


class CaptureSettings(Settings):
    BLOCK = "activations"
    DEFAULTS = (D.CAPTURE_DEFAULTS,)
    CHECKS = {"mode": one_of(*D.CAPTURE_MODES), "subsample": _pos, "batch_size": _pos,
              "dtype": one_of("float32", "float16")}


class LensSettings(Settings):
    BLOCK = "lenses"
    DEFAULTS = (D.LENS_DEFAULTS,)
    CHECKS = {"seed": _nonneg, "points": integer(2), "grid": _grid, "span": number(0, strict=True), "pca_grid": _grid,
              "margin": number(0), "center": one_of(*D.LENS_CENTERS), "perplexity": number(0, strict=True),
              "tsne_seed": _nonneg, "memory_mb": number(0, strict=True), **_eval}
    REFS = frozenset({"plane", "trajectory"})


class SharpnessSettings(Settings):
    BLOCK = "sharpness"
    DEFAULTS = (D.SHARPNESS_DEFAULTS, {"checkpoints": {}})
    CHECKS = {"images": _pos, "batch_size": _pos, "lanczos_steps": _pos, "probes": integer(100), "seed": _nonneg,
              "points": integer(2), "checkpoints": optional(mapping), **_eval}
    REFS = frozenset({"curve"})


_MEASURES = D.SIMILARITY_MEASURES


def _subsamples(v) -> str | None:
    ok = isinstance(v, Mapping) and set(v) <= {"count", "size"} and _nonneg(v.get("count", 0)) is None \
        and optional(integer(2))(v.get("size")) is None
    return None if ok else "{count: integer >= 0, size: null or integer >= 2}"


class SimilaritySettings(Settings):
    BLOCK = "similarity"
    DEFAULTS = (D.COMPARISON_DEFAULTS, {"comparisons": {}})
    CHECKS = {"measures": list_of(one_of(*_MEASURES), min_len=1), "chance": boolean, "chance_shuffles": _pos,
              "subsamples": _subsamples, "images_per_dim": optional(number(1)), "comparisons": mapping}


class AlignSettings(Settings):
    BLOCK = "align"
    DEFAULTS = (D.ALIGN_DEFAULTS,)
    CHECKS = {"method": one_of(*D.ALIGN_METHODS), "max_iter": _pos, "seed": _nonneg, "repair": boolean,
              "repair_images": _pos}


class AutonebSettings(Settings):
    """AutoNEB (:data:`closerlook.defaults.AUTONEB_DEFAULTS`); the config block's ``curves`` list is not a setting."""
    BLOCK = "autoneb"
    DEFAULTS = (D.AUTONEB_DEFAULTS,)
    CHECKS = {"cycles": _pos, "steps": _pos, "lr": number(0, strict=True), "lr_decay": number(0, strict=True),
              "momentum": number(0, 1), "spring": number(0), "init_pivots": _nonneg, "insert_points": _pos,
              "insert_per_cycle": _nonneg, "insert_tol": number(0), "batch_size": _pos, "eval_batches": _pos,
              "weight_decay": number(0), "seed": _nonneg}


def _lrs(*keys: str) -> Check:
    def check(v):
        ok = isinstance(v, Mapping) and set(v) <= set(keys) and all(optional(number(0, strict=True))(v.get(k)) is None
                                                                    for k in keys)
        return None if ok else "{" + ", ".join(f"{k}: null or a number > 0" for k in keys) + "}"
    return check


class EnsembleSettings(Settings):
    BLOCK = "ensembles"
    DEFAULTS = (D.ENSEMBLE_DEFAULTS,)
    NESTED = ("fge", "swa")
    CHECKS = {"members": integer(2), "budget_epochs": _pos, "fge": _lrs("lr_max", "lr_min"), "swa": _lrs("lr"),
              "curve_ts": optional(list_of(number(0.0, 1.0), min_len=2)), "cka_images": _pos, "eval_batch_size": _pos}
    REFS = frozenset({"base", "independent", "snapshot", "curve"})


class FidelitySettings(Settings):
    """The students' fidelity (:data:`closerlook.defaults.FIDELITY_DEFAULTS`)."""
    BLOCK = "fidelity"
    DEFAULTS = (D.FIDELITY_DEFAULTS,)
    CHECKS = {"train_images": _opt_pos, "batch_size": _pos, "temperature": number(0, strict=True)}


class ControlSettings(Settings):
    """The similarity measures' positive controls (:data:`closerlook.defaults.CONTROL_DEFAULTS`)."""
    BLOCK = "controls"
    DEFAULTS = (D.CONTROL_DEFAULTS, {"images_per_dim": None})
    CHECKS = {"measures": optional(list_of(one_of(*_MEASURES), min_len=1)), "identification": optional(mapping),
              "change_detection": optional(mapping), "level": number(0, 1, strict=True), "min_before": number(0, 1),
              "max_target": number(0, 1), "seed": _nonneg, "images_per_dim": optional(number(1))}
