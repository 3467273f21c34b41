# Shared helpers: config validation, paths, resources. All logic about what a
# config means lives in closerlook.config (importable without Snakemake).
import os
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from closerlook import config as C  # noqa: E402
from closerlook.io import ConfigError  # noqa: E402

# Snakemake's own YAML loading keeps the last of two equal keys (e.g. two runs
# with one name) silently: re-read every config file with the strict loader.
for _cf in workflow.configfiles:
    try:
        C.load_yaml(_cf)
    except ConfigError as _exc:
        raise ValueError(f"invalid configuration: {_exc}") from None

validate(config, schema="../schemas/config.schema.yaml", set_default=False)
try:
    C.validate_config(config)
except ConfigError as _exc:
    raise ValueError(f"invalid configuration: {_exc}") from None

R = C.results_dir(config)
ENV = "../envs/closerlook.yaml"
SIM = C.similarity_settings(config)
ACT = C.activation_settings(config)


wildcard_constraints:
    seed=r"\d+",
    tag=r"(epoch\d+|iter\d+|final)",
    inst=r"(seed\d+|s\d+-s\d+)",
    path=r"(curve|line)",


def res(stage, key, default):
    return ((config.get("resources") or {}).get(stage) or {}).get(key, default)


GPU = (config.get("resources") or {}).get("gpus_per_job", 1)


def ckpt(ep):
    return C.ckpt_path(config, ep)


def log_path(stage, *parts):
    return os.path.join(R, "logs", stage, *parts) + ".log"


def curve_dir(curve, inst):
    return f"{R}/curves/{curve}/{inst}"


def act_dir(ep):
    return f"{R}/activations/{ep.run}/seed{ep.seed}/{ep.tag}"


def figure_files(fig):
    fmts = (config.get("figures") or {}).get("format", ["pdf", "png"])
    return [f"{R}/figures/{fig}.{ext}" for ext in fmts]


def all_targets():
    out = [f"{R}/data/info.json"]
    for fig in C.figure_names(config):
        out += figure_files(fig)
    if C.figure_names(config):
        out += [f"{R}/claims.json", f"{R}/claims.md"]
    return out


# ---- input functions of the stage rules
def _train_outputs(run):
    tags = C.checkpoint_tags(C.resolve_run(config, run))
    base = f"{R}/runs/{run}/seed{{seed}}"
    return [f"{base}/{t}.pt" for t in tags] + [f"{base}/metrics.csv", f"{base}/status.json"]


def _teacher_input(wildcards, run):
    t = C.teacher_endpoint(config, run, int(wildcards.seed))
    return [ckpt(t)] if t else []


def _curve_ends(wc):
    a, b = C.curve_instances(config, wc.curve)[wc.inst]
    return {"start": ckpt(a), "end": ckpt(b)}


def _path_inputs(wc):
    d = _curve_ends(wc)
    if wc.path == "curve":
        d["curve"] = f"{curve_dir(wc.curve, wc.inst)}/curve.pt"
    return d


def _plane_inputs(wc):
    p = config["planes"][wc.plane]
    d = _curve_ends(type("W", (), {"curve": p["curve"], "inst": wc.inst})())
    d["curve"] = f"{curve_dir(p['curve'], wc.inst)}/curve.pt"
    d["project"] = [ckpt(ep) for ep in C.plane_projection(config, wc.plane, wc.inst)]
    return d


def _comparison_inputs(wc):
    a, b = C.comparison_instances(config, wc.comparison)[wc.inst]
    return {"a": act_dir(a), "b": act_dir(b)}


def _figure_inputs(wc):
    return C.figure_layout(config, wc.figure)[1]


def _claims_inputs(wc):
    files = []
    for fig in C.figure_names(config):
        files += C.figure_layout(config, fig)[1]
    return sorted(set(files))
