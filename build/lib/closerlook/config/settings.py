"""A block's settings: its defaults (:mod:`closerlook.defaults`) < the config's block, by one merge.

:data:`BLOCKS` is the table ``{block: (defaults, ...)}``; :func:`merged` layers the config's blocks
over them (keys replace keys, a copy is returned; the sub-blocks in :data:`NESTED` merge key by
key). Each ``<block>_settings`` below is that merge for one block, with what it adds (a curve's
``curve_defaults`` layer, AutoNEB's check). Torch-free: planning calls these.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from ..defaults import (CONTROL_DEFAULTS, ALIGN_DEFAULTS, CAPTURE_DEFAULTS, COMPARISON_DEFAULTS, ENSEMBLE_DEFAULTS, FIT_DEFAULTS,
                        LENS_DEFAULTS, PATH_DEFAULTS, PLANE_DEFAULTS, SHARPNESS_DEFAULTS, check_autoneb_settings)

# block -> its defaults, merged left to right (the objects themselves: a changed default is seen here)
BLOCKS: dict[str, tuple[Mapping, ...]] = {
    "curves": (FIT_DEFAULTS, PATH_DEFAULTS),          # fitting (closerlook.curves) + evaluation (landscape)
    "planes": (PLANE_DEFAULTS,),
    "activations": (CAPTURE_DEFAULTS,),
    "lenses": (LENS_DEFAULTS,),                        # `plane` and `trajectory` kept from the block
    "sharpness": (SHARPNESS_DEFAULTS, {"checkpoints": {}}),
    "similarity": (COMPARISON_DEFAULTS, {"comparisons": {}}),
    "align": (ALIGN_DEFAULTS,),
    "ensembles": (ENSEMBLE_DEFAULTS,),
}
NESTED = {"ensembles": ("fge", "swa")}  # sub-blocks merged key by key


def merged(block: str, *layers: Mapping | None) -> dict:
    """``BLOCKS[block]`` < ``layers`` (None skipped): a deep copy, keys replaced wholesale except
    :data:`NESTED` sub-blocks, which merge key by key."""
    out: dict[str, Any] = {}
    for layer in (*BLOCKS[block], *layers):
        for k, v in (layer or {}).items():
            if k in NESTED.get(block, ()):
                out[k] = {**out.get(k, {}), **copy.deepcopy(v or {})}
            else:
                out[k] = copy.deepcopy(v)
    return out


def curve_settings(cfg: dict, name: str) -> dict:
    """Fitting (closerlook.curves.FIT_DEFAULTS) and evaluation (closerlook.landscape.PATH_DEFAULTS)
    settings of a curve: built-in < ``curve_defaults`` < the curve's own keys."""
    return merged("curves", cfg.get("curve_defaults"), cfg.get("curves", {})[name])


def plane_settings(cfg: dict, name: str) -> dict:
    return merged("planes", cfg["planes"][name])


def activation_settings(cfg: dict) -> dict:
    return merged("activations", cfg.get("activations"))


def lens_settings(cfg: dict) -> dict:
    """The ``lenses`` block over :data:`closerlook.lenses.LENS_DEFAULTS` (``plane`` and ``trajectory`` kept)."""
    return merged("lenses", cfg.get("lenses"))


def sharpness_settings(cfg: dict) -> dict:
    """The ``sharpness`` block over :data:`closerlook.sharpness.SHARPNESS_DEFAULTS`."""
    return merged("sharpness", cfg.get("sharpness"))


def similarity_settings(cfg: dict) -> dict:
    return merged("similarity", cfg.get("similarity"))


def align_settings(cfg: dict) -> dict:
    """Weight-matching settings: closerlook.align.ALIGN_DEFAULTS < the config's ``align`` block."""
    return merged("align", cfg.get("align"))


def autoneb_settings(cfg: dict) -> dict:
    """AutoNEB settings: closerlook.autoneb.AUTONEB_DEFAULTS < the ``autoneb`` block (its ``curves`` list aside)."""
    return check_autoneb_settings({k: v for k, v in (cfg.get("autoneb") or {}).items() if k != "curves"})


def ensemble_settings(cfg: dict) -> dict:
    """closerlook.ensembles.ENSEMBLE_DEFAULTS < the ``ensembles`` block (``fge`` and ``swa`` merged key by key)."""
    return merged("ensembles", cfg.get("ensembles"))


def claim_rules(cfg: dict) -> dict:
    """The config's claim thresholds; closerlook.verdicts.DEFAULT_RULES fills the rest."""
    return dict(cfg.get("claims") or {})


def control_settings(cfg: dict) -> dict:
    """The `controls:` block over closerlook.controls.CONTROL_DEFAULTS; `measures` defaults to the similarity
    block's measures (the DFT measure, which needs full conv maps, is left out) and `images_per_dim` is always the
    similarity block's. {} when no control is configured."""
    block = cfg.get("controls") or {}
    if not (block.get("identification") or block.get("change_detection")):
        return {}
    s = copy.deepcopy({**CONTROL_DEFAULTS, **block})
    if not s.get("measures"):
        s["measures"] = [m for m in similarity_settings(cfg)["measures"] if m != "dft_cca_mean98"]
    # the controls compute each measure as the similarity table does (wide layers reduced alike)
    s["images_per_dim"] = similarity_settings(cfg).get("images_per_dim")
    return s
