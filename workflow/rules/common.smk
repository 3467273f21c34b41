# Shared helpers: config validation, paths, resources. What a config means lives in
# closerlook.config, where every results path comes from lives in closerlook.paths
# (both importable without Snakemake; the package is installed in the rule env).
import functools
import os
from pathlib import Path

try:
    from closerlook import config as C
    from closerlook import paths as P
    from closerlook.io import ConfigError
except ImportError as _exc:
    raise ImportError(
        f"{_exc}: the closerlook package is not installed in the Python that runs snakemake; "
        "run `make venv` (or `pip install -e .` in this checkout) and use .venv/bin/snakemake"
    ) from None

# Snakemake's own YAML loading keeps the last of two equal keys (e.g. two runs
# with one name) silently: re-read every config file with the strict loader.
for _cf in workflow.configfiles:
    try:
        C.load_yaml(_cf)
    except ConfigError as _exc:
        raise ValueError(f"invalid configuration: {_exc}") from None

# nested `--config` values arrive as strings (BaseLoader): read them as YAML before validating
C.retype_cli_values(config, workflow.config_settings.config)
# the schema (workflow/schemas/config.schema.yaml) and the cross-references in one pass, errors naming
# the key; no torch: the model builds run in the first job, check_models (train.smk)
try:
    C.validate_config(config, models=False)
except ConfigError as _exc:
    raise ValueError(f"invalid configuration: {_exc}") from None

R = C.results_dir(config)
ENV = "../envs/closerlook.yaml"
# the conda env's post-deploy script installs this checkout into the env (editable)
os.environ.update(CLOSERLOOK_REPO=str(Path(workflow.basedir).resolve()))
SIM = C.similarity_settings(config)
CTRL = C.control_settings(config)  # the similarity measures' positive controls ({} when none configured)
ACT = C.activation_settings(config)
LENS = C.lens_settings(config)
SHARP = C.sharpness_settings(config)


wildcard_constraints:
    seed=r"\d+",
    tag=r"(epoch\d+|iter\d+|final)",
    inst=r"(seed\d+|s\d+-s\d+)",
    path=r"(curve|line)",


# The config is fixed for the whole run, and planning calls the input and params functions for every
# job: what they resolve is computed once per name.
figure_layout = functools.cache(lambda fig: C.figure_layout(config, fig))  # (layout, files)
curve_instances = functools.cache(lambda curve: C.curve_instances(config, curve))
comparison_instances = functools.cache(lambda comp: C.comparison_instances(config, comp))
curve_end = functools.cache(lambda curve, inst: C.curve_end(config, curve, inst))


def res(stage, key, default):
    return ((config.get("resources") or {}).get(stage) or {}).get(key, default)


GPU = (config.get("resources") or {}).get("gpus_per_job", 1)

# One default for every rule's resources: a rule names its stage (its key in the config's
# `resources:` block, whose values win) and states only what differs from these.
RESOURCE_DEFAULTS = {"mem_mb": 8000, "runtime": 240}  # runtime in minutes


def stage_resources(stage, gpu=True, **differs):
    """A rule's `resources:`: RESOURCE_DEFAULTS, then what the rule states, then the config's
    `resources.<stage>` values; `gpu` (gpus_per_job) unless the rule needs no GPU."""
    out = {k: res(stage, k, v) for k, v in {**RESOURCE_DEFAULTS, **differs}.items()}
    return {"gpu": GPU, **out} if gpu else out


def stage_threads(stage):
    """A rule's `threads:` (1 unless the config's `resources.<stage>.threads` says otherwise)."""
    return res(stage, "threads", 1)


def ckpt(ep):
    return C.ckpt_path(config, ep)


def all_targets():
    out = [P.data_info(R)]
    for fig in C.figure_names(config):
        out += C.figure_files(config, fig)
    if C.claim_figures(config):
        out += [P.claims_file(R, "json"), P.claims_file(R, "md")]
    for curve in config.get("curves") or {}:  # a curve aligned or with AutoNEB: every path beside the others
        kinds = C.path_kinds(config, curve)
        if len(kinds) > 2:
            out += [P.path_table(R, curve, inst, k) for inst in curve_instances(curve) for k in kinds]
    if config.get("ensembles"):
        out += [P.ensemble_table(R, C.ensemble_inst(config), k) for k in ("ensembles", "members")]
    return out


# ---- input functions of the stage rules
def _train_outputs(run):
    tags = C.checkpoint_tags(C.resolve_run(config, run))
    return [P.checkpoint(R, run, "{seed}", t) for t in tags] + [
        f"{P.run_dir(R, run, '{seed}')}/{name}" for name in P.RUN_TABLES
    ] + ([P.sharpness_trajectory(R, run, "{seed}")] if C.resolve_run(config, run).get("sharpness_trace") else [])


def _teacher_input(wildcards, run):
    t = C.teacher_endpoint(config, run, int(wildcards.seed))
    return [ckpt(t)] if t else []


def _curve_ends(curve, inst, raw=False):
    """The checkpoints a curve joins: its end aligned to its start when the curve aligns (unless ``raw``)."""
    a, b = curve_instances(curve)[inst]
    return {"start": ckpt(a), "end": ckpt(b) if raw else curve_end(curve, inst)}


def _path_inputs(wc):
    """One path of a curve instance (``wc.path``: curve or line; the line joins the raw end)."""
    d = _curve_ends(wc.curve, wc.inst, raw=wc.path == "line")
    if wc.path == "curve":
        d["curve"] = P.curve_file(R, wc.curve, wc.inst, "curve.pt")
    return d


def _paths_inputs(wc):
    """Curve and line of one instance: the curve's end may be aligned, the line joins the raw end."""
    d = _curve_ends(wc.curve, wc.inst)
    d["line_end"] = _curve_ends(wc.curve, wc.inst, raw=True)["end"]
    d["curve"] = P.curve_file(R, wc.curve, wc.inst, "curve.pt")
    return d


def _plane_inputs(wc):
    curve = config["planes"][wc.plane]["curve"]
    d = _curve_ends(curve, wc.inst)
    d["curve"] = P.curve_file(R, curve, wc.inst, "curve.pt")
    d["project"] = [ckpt(ep) for ep in C.plane_projection(config, wc.plane, wc.inst)]
    return d


def _ensemble_inputs(wc):
    """Every member checkpoint of every ensemble, and the curve with its ends."""
    mem = C.ensemble_members(config)
    name, inst = C.ensemble_curve(config)
    k = C.ensemble_settings(config)["members"]
    d = {m: [ckpt(ep) for ep in eps] for m, eps in mem.items()}
    d["fge"] = [P.fge_member(R, wc.inst, i) for i in range(k)]
    d["swa"] = [P.swa_weights(R, wc.inst)]
    d.update({f"curve_{key}": p for key, p in _curve_ends(name, inst).items()})
    d["curve"] = P.curve_file(R, name, inst, "curve.pt")
    return d
def _lens_trajectory_inputs(wc):
    ends = C.lens_instances(config)[wc.inst]
    curve = config["planes"][wc.plane]["curve"]
    return {"trajectory": [ckpt(ep) for ep in C.lens_trajectory(config, wc.inst)], "w1": ckpt(ends["w1"]),
            "w2": ckpt(ends["w2"]), "curve": P.curve_file(R, curve, wc.inst, "curve.pt")}


def _comparison_inputs(wc):
    a, b = comparison_instances(wc.comparison)[wc.inst]
    return {"a": C.activation_dir(config, a), "b": C.activation_dir(config, b)}


def _controls_inputs(wc):
    """The positive controls' inputs: the two seeds' activation stores, the checkpoint to re-initialise."""
    eps = C.control_endpoints(config)
    d = {side: C.activation_dir(config, eps[side]) for side in ("a", "b") if side in eps}
    if "checkpoint" in eps:
        d["ckpt"] = ckpt(eps["checkpoint"])
        d["data"] = DATA_CACHE
    return d


def _figure_inputs(wc):
    return figure_layout(wc.figure)[1]


def _claims_inputs(wc):
    files = []
    for fig in C.claim_figures(config):
        files += figure_layout(fig)[1]
    files += C.claims_input_files(config)  # similarity controls, fidelity, every plane of claim 3 (when configured)
    return sorted(set(files))
