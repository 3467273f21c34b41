"""A block's settings: its defaults (:mod:`closerlook.defaults`) < the config's block, by one merge, into the
block's typed settings object (:mod:`closerlook.settings_types`: checked on construction, read-only).

:data:`BLOCKS` is the table ``{block: (defaults, ...)}``, read from the typed classes; :func:`merged`
layers plain dicts over it (keys replace keys, a copy is returned; the sub-blocks in :data:`NESTED` merge
key by key). Each ``<block>_settings`` below resolves one block. Torch-free: planning calls these.
"""
from __future__ import annotations

from typing import Mapping

from ..io import ConfigError
from ..settings_types import (AlignSettings, AutonebSettings, CaptureSettings, ControlSettings, CurveSettings,
                              EnsembleSettings, LensSettings, PlaneSettings, SharpnessSettings, SimilaritySettings,
                              merge)

TYPES = {cls.BLOCK: cls for cls in (CurveSettings, PlaneSettings, CaptureSettings, LensSettings, SharpnessSettings,
                                    SimilaritySettings, AlignSettings, EnsembleSettings)}
# block -> its defaults, merged left to right (the objects themselves: a changed default is seen here)
BLOCKS: dict[str, tuple[Mapping, ...]] = {block: cls.DEFAULTS for block, cls in TYPES.items()}
NESTED = {block: cls.NESTED for block, cls in TYPES.items() if cls.NESTED}  # sub-blocks merged key by key


def merged(block: str, *layers: Mapping | None) -> dict:
    """``BLOCKS[block]`` < ``layers`` (None skipped) as a plain dict: a deep copy, keys replaced wholesale
    except :data:`NESTED` sub-blocks, which merge key by key."""
    return merge((*BLOCKS[block], *layers), NESTED.get(block, ()))


def curve_settings(cfg: dict, name: str) -> CurveSettings:
    """A curve's fitting and evaluation settings: built-in < ``curve_defaults`` < the curve's own keys."""
    return CurveSettings.of(cfg.get("curve_defaults"), cfg.get("curves", {})[name], key=f"curves.{name}")


def plane_settings(cfg: dict, name: str) -> PlaneSettings:
    return PlaneSettings.of(cfg["planes"][name], key=f"planes.{name}")


def activation_settings(cfg: dict) -> CaptureSettings:
    return CaptureSettings.of(cfg.get("activations"))


def lens_settings(cfg: dict) -> LensSettings:
    """The ``lenses`` block over LENS_DEFAULTS (``plane`` and ``trajectory`` kept)."""
    return LensSettings.of(cfg.get("lenses"))


def sharpness_settings(cfg: dict) -> SharpnessSettings:
    return SharpnessSettings.of(cfg.get("sharpness"))


def similarity_settings(cfg: dict) -> SimilaritySettings:
    return SimilaritySettings.of(cfg.get("similarity"))


def align_settings(cfg: dict) -> AlignSettings:
    return AlignSettings.of(cfg.get("align"))


def autoneb_settings(cfg: dict) -> AutonebSettings:
    """AutoNEB settings: AUTONEB_DEFAULTS < the ``autoneb`` block (its ``curves`` list aside)."""
    return AutonebSettings.of({k: v for k, v in (cfg.get("autoneb") or {}).items() if k != "curves"})


def ensemble_settings(cfg: dict) -> EnsembleSettings:
    """ENSEMBLE_DEFAULTS < the ``ensembles`` block (``fge`` and ``swa`` merged key by key)."""
    return EnsembleSettings.of(cfg.get("ensembles"))


def claim_rules(cfg: dict) -> dict:
    """The config's claim thresholds; closerlook.verdicts.DEFAULT_RULES fills the rest."""
    return dict(cfg.get("claims") or {})


def control_settings(cfg: dict) -> ControlSettings | dict:
    """The `controls:` block over CONTROL_DEFAULTS; `measures` defaults to the similarity block's measures and
    `images_per_dim` is always the similarity block's (the controls compute each measure as the similarity table
    does). The DFT measure reads full conv maps, so it is left out unless `activations.mode` is `full` (the
    stores then hold them, and change detection captures them too). {} when no control is configured."""
    block = cfg.get("controls") or {}
    if not (block.get("identification") or block.get("change_detection")):
        return {}
    sim = similarity_settings(cfg)
    derived = {"images_per_dim": sim["images_per_dim"]}
    full_maps = activation_settings(cfg)["mode"] == "full"
    if not block.get("measures"):
        derived["measures"] = [m for m in sim["measures"] if full_maps or m != "dft_cca_mean98"]
    elif "dft_cca_mean98" in block["measures"] and not full_maps:
        raise ConfigError("controls.measures: dft_cca_mean98 reads full conv maps; set activations.mode: full "
                          f"(it is {activation_settings(cfg)['mode']!r}) or leave the measure out")
    return ControlSettings.of(block, derived)
