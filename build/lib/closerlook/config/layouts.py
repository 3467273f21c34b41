"""Figure layouts: the nested dict of input paths each figure (and the claims) reads, its flat file
list (the figure rule's inputs), and its options."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .. import paths
from .resolve import (_resolved, comparison_instances, curve_instances, ensemble_inst, lens_instances, path_kinds,
                      plane_projection, results_dir, run_spec, sharpness_checkpoints)
from .explain import explain_layout
from .settings import claim_rules, control_settings, lens_settings, sharpness_settings, similarity_settings

def figure_names(cfg: dict) -> list[str]:
    figs = cfg.get("figures") or {}
    return [f for f in paths.FIGURES if f in figs]


def claim_figures(cfg: dict) -> list[str]:
    """The configured figures the claims report reads: the paper's and fig9_ensembles ("Beyond the paper");
    the lens figures carry no claim."""
    return [f for f in figure_names(cfg) if f in paths.PAPER_FIGURES + paths.EXTRA_FIGURES]


def figure_formats(cfg: dict) -> list[str]:
    return list((cfg.get("figures") or {}).get("format", paths.FIGURE_FORMATS))


def figure_files(cfg: dict, fig: str) -> list[str]:
    """Every file of one figure, one per configured format."""
    return [paths.figure_file(results_dir(cfg), fig, ext) for ext in figure_formats(cfg)]


class _Inputs:
    """Builds a figure's layout (nested dicts of paths) and records every file it names."""

    def __init__(self, cfg: dict) -> None:
        self.cfg, self.R, self.files = cfg, results_dir(cfg), set()

    def file(self, path: str) -> str:
        self.files.add(path)
        return path

    def metrics(self, run: str) -> dict[str, str]:
        return {f"seed{s}": self.file(paths.run_metrics(self.R, run, s)) for s in _resolved(self.cfg, run)["seeds"]}

    def pairs(self, curves: Iterable[str]) -> dict:
        return {c: {inst: {k: self.file(paths.path_table(self.R, c, inst, k)) for k in path_kinds(self.cfg, c)}
                    for inst in curve_instances(self.cfg, c)}
                for c in curves}

    def spec(self, run: str) -> dict:
        return run_spec(self.cfg, run, _resolved(self.cfg, run)["seeds"][0])


def _plane_layout(cfg: dict, inp: _Inputs, plane: str) -> dict:
    """The plane's grid and points, the curve.csv of the curve it is built on, the projected run's metrics."""
    p = cfg["planes"][plane]
    inst = next(iter(curve_instances(cfg, p["curve"])))
    layout = {k: inp.file(paths.plane_file(inp.R, plane, inst, f"{k}.csv")) for k in ("grid", "points")}
    layout["curve"] = inp.file(paths.path_table(inp.R, p["curve"], inst, "curve"))
    proj = plane_projection(cfg, plane, inst)
    if proj:
        layout["metrics"] = {proj[0].run: {f"seed{proj[0].seed}": inp.file(paths.run_metrics(inp.R, proj[0].run, proj[0].seed))}}
    return layout


def _similarity_layout(cfg: dict, inp: _Inputs, f: dict) -> dict:
    def tables(comp: str) -> dict:
        return {inst: inp.file(paths.similarity_table(inp.R, comp, inst)) for inst in comparison_instances(cfg, comp)}

    runs = f.get("runs") or {
        label: similarity_settings(cfg)["comparisons"][comp]["b"]["run"] for label, comp in f["comparisons"].items()
    }
    layout = {
        "metrics": {label: inp.metrics(run) for label, run in runs.items()},
        "specs": {label: inp.spec(run) for label, run in runs.items()},
        "similarity": {label: tables(comp) for label, comp in f["comparisons"].items()},
        "measure": f.get("measure", "cca_mean"),
    }
    if f.get("baseline"):
        layout["baseline"] = tables(f["baseline"])
    return layout


def figure_layout(cfg: dict, fig: str) -> tuple[dict, list[str]]:
    """The nested dict of input paths a figure (and the claims) reads, and its flat file list.

    Every layout has ``data_info`` (the data set's number of classes: the trained-run premise)."""
    inp = _Inputs(cfg)
    f = (cfg.get("figures") or {})[fig]
    if fig == "fig1_robustness":
        layout = {"curves": inp.pairs(f["curves"])}
    elif fig == "fig2_sgdr":
        layout = {
            "metrics": {"SGDR": inp.metrics(f["sgdr_run"]), "SGD": inp.metrics(f["sgd_run"])},
            "specs": {"SGDR": inp.spec(f["sgdr_run"]), "SGD": inp.spec(f["sgd_run"])},
            "sgdr_pairs": inp.pairs(f["sgdr_curves"]),
            "sgd_pairs": inp.pairs(f["sgd_curves"]),
            "reference_pairs": inp.pairs(f.get("reference_curves", [])),
        }
    elif fig == "fig9_ensembles":
        inst = ensemble_inst(cfg)
        layout = {k: {inst: inp.file(paths.ensemble_table(inp.R, inst, k))} for k in ("ensembles", "members")}
    elif fig == "fig3_plane":
        layout = _plane_layout(cfg, inp, f["plane"])
    elif fig in paths.LENS_FIGURES:
        layout = _lens_layout(cfg, fig, inp)
    elif fig == "fig10_warmup_sharpness":
        layout = {}  # (explain_layout below)
    else:
        layout = _similarity_layout(cfg, inp, f)
    layout.update(explain_layout(cfg, fig, inp))  # fidelity (fig6), sharpness trajectories (fig10)
    layout["data_info"] = inp.file(paths.data_info(inp.R))
    return layout, sorted(inp.files)


def _lens_layout(cfg: dict, fig: str, inp: _Inputs) -> dict:
    """fig7_lenses: the first instance of the lens plane (its curve's line and curve, the plane, slices,
    trajectory views); fig8_sharpness: sharpness along the curve and the line, and at the checkpoints."""
    R = inp.R
    if fig == "fig7_lenses":
        plane = cfg["lenses"]["plane"]
        curve = cfg["planes"][plane]["curve"]
        inst = next(iter(lens_instances(cfg)))
        lf = lambda name: inp.file(paths.lens_file(R, plane, inst, name))  # noqa: E731
        return {
            "paths": {k: inp.file(paths.path_table(R, curve, inst, k)) for k in ("curve", "line")},
            "plane": {k: inp.file(paths.plane_file(R, plane, inst, f"{k}.csv")) for k in ("grid", "points")},
            "slices": {end: {kind: inp.file(paths.lens_slice(R, plane, inst, kind, end)) for kind in paths.LENS_SLICE_KINDS}
                       for end in paths.LENS_ENDS},
            **{name: lf(f"{name}.csv") for name in ("pca", "trajectory", "views", "pca_grid")},
            "perplexity": float(lens_settings(cfg)["perplexity"]),
        }
    sh = sharpness_settings(cfg)
    inst = next(iter(curve_instances(cfg, sh["curve"])))
    return {
        "paths": {k: inp.file(paths.sharpness_path(R, sh["curve"], inst, k)) for k in ("curve", "line")},
        "checkpoints": {label: inp.file(paths.sharpness_checkpoint(R, ep.run, ep.seed, ep.tag))
                        for label, ep in sharpness_checkpoints(cfg).items()},
    }


def figure_options(cfg: dict, fig: str) -> dict:
    """The figure's own block, plus the output formats and (if set) the dpi of the ``figures`` block."""
    figs = cfg.get("figures") or {}
    opts = dict(figs[fig])
    opts["format"] = figure_formats(cfg)
    opts["claims"] = claim_rules(cfg)  # the trained-run premise marks runs in the figures as in claims.md
    if "dpi" in figs:
        opts["dpi"] = figs["dpi"]
    return opts


# --------------------------------------------------------------------------- the claims' own inputs (ported from rules' addition)
def claims_inputs(cfg: dict) -> dict:
    """The claims' own inputs beside the figures' layouts (team interfaces A and B): ``controls`` and
    ``controls_md`` (similarity positive controls) when the config configures them (a ``controls:``
    block, :func:`control_layout`); ``fidelity`` (distillation fidelity) when fig6_distill is configured and
    paths.py names it. Keys absent otherwise: claims 5b-7 then say "positive control not configured" and
    claim 7 "fidelity not measured"."""
    R, out = results_dir(cfg), {}
    out.update(control_layout(cfg))  # the top-level `controls:` block (closerlook.controls)
    if "fig6_distill" in (cfg.get("figures") or {}) and hasattr(paths, "fidelity_table"):
        out["fidelity"] = paths.fidelity_table(R)
    figs = cfg.get("figures") or {}
    if "fig3_plane" in figs and claim_rules(cfg).get("plane_instances") == "all":
        plane = figs["fig3_plane"]["plane"]
        curve = cfg["planes"][plane]["curve"]
        planes = {}
        for inst in curve_instances(cfg, curve):
            lay = {k: paths.plane_file(R, plane, inst, f"{k}.csv") for k in ("grid", "points")}
            lay["curve"] = paths.path_table(R, curve, inst, "curve")
            proj = plane_projection(cfg, plane, inst)
            if proj:
                lay["metrics"] = {proj[0].run: {f"seed{proj[0].seed}": paths.run_metrics(R, proj[0].run, proj[0].seed)}}
            lay["data_info"] = paths.data_info(R)
            planes[inst] = lay
        out["fig3_planes"] = planes  # claim 3 judged over every instance's plane (config claims.plane_instances)
    return out


def claims_input_files(cfg: dict) -> list[str]:
    """Every file of :func:`claims_inputs` (nested layouts flattened): the claims rule's extra inputs."""
    def walk(x: Any) -> list[str]:
        if isinstance(x, Mapping):
            return [f for y in x.values() for f in walk(y)]
        return [x] if isinstance(x, str) else []
    return sorted(set(walk(claims_inputs(cfg))))


def control_layout(cfg: dict) -> dict[str, str]:
    """The claims layout's keys for the controls (interface A): ``{"controls", "controls_md"}``; {} when none."""
    if not control_settings(cfg):
        return {}
    R = results_dir(cfg)
    return {"controls": paths.controls_table(R), "controls_md": paths.controls_markdown(R)}
