# Shared helpers: config validation, paths, resources. All logic about what a
# config means lives in closerlook.config (importable without Snakemake).
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
    return f"{R}/logs/{stage}/" + "/".join(parts) + ".log"


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
