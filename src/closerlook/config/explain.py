"""Inputs of issue 27's competing explanations (added by explain): the students' fidelity (fig6_distill)
and the in-training sharpness trajectories (fig10_warmup_sharpness)."""
from __future__ import annotations

from .. import paths
from ..io import ConfigError
from ..settings_types import FidelitySettings
from .resolve import comparison_instances, resolve_run


def fidelity_settings(cfg: dict) -> FidelitySettings | None:
    """The students' fidelity (closerlook.fidelity) is measured where fig6_distill is configured: its
    ``FIDELITY_DEFAULTS`` < the config's optional ``fidelity:`` block (None: not measured)."""
    if "fig6_distill" not in (cfg.get("figures") or {}):
        return None
    return FidelitySettings.of(cfg.get("fidelity"))


def fidelity_pairs(cfg: dict) -> list[dict]:
    """fig6_distill's students against their teacher: ``[{"student", "seed", "teacher": Endpoint, "ckpt":
    Endpoint}]``, one per instance of each comparison (the label naming "distil" is the distilled student,
    the other the independent one, as claim 7 reads them; side a is the teacher, side b the student)."""
    if fidelity_settings(cfg) is None:
        return []
    comps = cfg["figures"]["fig6_distill"]["comparisons"]
    labels = list(comps)
    dist = next((lab for lab in labels if "distil" in lab.lower()), None)
    out = []
    for lab in labels:
        role = "distilled" if lab == dist else "independent"
        for _inst, (a, b) in comparison_instances(cfg, comps[lab]).items():
            out.append({"student": role, "seed": int(b.seed), "teacher": a, "ckpt": b})
    return out


def explain_layout(cfg: dict, fig: str, inp) -> dict:
    """Extra inputs of a figure layout: ``fidelity`` (fig6_distill, also claim 7's premise)."""
    if fig == "fig6_distill" and fidelity_settings(cfg) is not None:
        return {"fidelity": inp.file(paths.fidelity_table(inp.R))}
    if fig == "fig10_warmup_sharpness":
        runs = cfg["figures"][fig]["runs"]
        return {"trajectories": {lab: {f"seed{s}": inp.file(paths.sharpness_trajectory(inp.R, run, s))
                                       for s in resolve_run(cfg, run)["seeds"]} for lab, run in runs.items()},
                "metrics": {lab: inp.metrics(run) for lab, run in runs.items()},
                "specs": {lab: inp.spec(run) for lab, run in runs.items()}}
    return {}


def check_explain_figures(cfg: dict) -> None:
    """fig10_warmup_sharpness: every labelled run exists and measures its sharpness trace."""
    f = (cfg.get("figures") or {}).get("fig10_warmup_sharpness")
    if not f:
        return
    for lab, run in f["runs"].items():
        if run not in cfg["runs"]:
            raise ConfigError(f"config key figures.fig10_warmup_sharpness.runs.{lab}: no run named {run!r}")
        if not resolve_run(cfg, run).get("sharpness_trace"):
            raise ConfigError(f"config key figures.fig10_warmup_sharpness.runs.{lab}: run {run!r} has no sharpness_trace")
