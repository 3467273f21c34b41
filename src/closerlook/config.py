"""Workflow configuration: loading, validation, and resolution into jobs.

A config (``config/*.yaml``) describes experiments as data: runs, the curve
pairs, planes and similarity comparisons that refer to runs by name, the
figures and the claims' thresholds. This module

* loads it with ``yaml.safe_load`` (a ``!!python/object`` tag is refused),
* checks it against ``workflow/schemas/config.schema.yaml`` and then for
  cross-references (a curve naming a checkpoint no run saves, a per-layer
  comparison between different architectures, ...), raising
  :class:`~closerlook.io.ConfigError` with the key path in the message,
* resolves runs into full run specs for :mod:`closerlook.train` and endpoints
  into checkpoint paths for the workflow.

It has no Snakemake import: the Snakefile, the CLI and the tests all use it.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from .io import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

def _run_defaults() -> dict[str, Any]:
    """Settings a run takes when neither it nor ``defaults`` gives them: the
    engine's own defaults (closerlook.train.DEFAULTS) plus ``seeds``. Keys of a
    run replace the default wholesale (no deep merge: an Adam run must not
    inherit SGD's momentum)."""
    from .train import DEFAULTS

    required = ("name", "seed", "data", "model", "optimizer", "schedule", "epochs", "batch_size")
    out = {k: copy.deepcopy(v) for k, v in DEFAULTS.items() if k not in required}
    out["seeds"] = [0]
    return out


CURVE_DEFAULTS: dict[str, Any] = {
    "kind": "bezier",
    "num_bends": 3,
    "epochs": 10,
    "lr": 0.015,
    "weight_decay": 5.0e-4,
    "batch_size": 128,
    "points": 61,
    "t_per_batch": 1,
    "eval_train_images": None,
    "bn_batches": None,
    "augment": False,
}
PLANE_DEFAULTS: dict[str, Any] = {"grid": [21, 21], "margin": 0.2, "eval_train_images": None, "bn_batches": None}
ACTIVATION_DEFAULTS: dict[str, Any] = {"mode": "pool", "subsample": 16, "batch_size": 500, "dtype": "float32"}
SIMILARITY_DEFAULTS: dict[str, Any] = {
    "measures": ["cca_mean", "cca_mean98", "svcca", "linear_cka"],
    "chance": True,
    "comparisons": {},
}
FIGURE_NAMES = ("fig1_robustness", "fig2_sgdr", "fig3_plane", "fig4_warmup", "fig5_freeze", "fig6_distill")
CLAIM_DEFAULTS: dict[str, Any] = {
    "barrier_min_nats": 0.1,
    "curve_close_nats": 0.1,
    "plane_high_loss_factor": 2.0,
    "robust_min_acc_ratio": 0.9,
    "deep_layers": 3,
    "shallow_max_spread": 0.05,
    "deep_min_gap": 0.05,
    "acc_min_gap": 0.005,
    "freeze_close_frac": 0.5,
}


# --------------------------------------------------------------------------- loading
def load_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` with errors that name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid (safe) YAML: {exc}") from exc


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys.

    Plain ``yaml.safe_load`` keeps the last of two equal keys silently, so a
    second run with the same name would replace the first without a word.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' overrides on purpose
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (line {key_node.start_mark.line + 1}; first given on line {first})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> dict:
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(cfg).__name__}")
    validate_config(cfg)
    return cfg


def _key(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def validate_schema(cfg: dict) -> None:
    """JSON-schema check; the error names the key path and the problem."""
    import jsonschema

    schema = load_yaml(SCHEMA_PATH)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = errors[0]
    # oneOf/anyOf failures: report the most specific sub-error.
    while err.context:
        err = sorted(err.context, key=lambda e: (-len(e.absolute_path), e.validator == "type"))[0]  # the branch of the right type
    msg = err.message
    if err.validator == "additionalProperties":
        msg = f"unknown key(s): {msg.split('(')[-1].rstrip(')')}"
    elif err.validator == "pattern" and err.validator_value == NAME_RE.pattern and "propertyNames" not in err.schema_path:
        msg = f"{err.instance!r} is not a valid name (letters, digits, '_' and '-'; no spaces, dots, quotes or ';')"
    if "propertyNames" in list(err.schema_path):
        msg = f"name {err.instance!r} is not allowed (use letters, digits, '_', '-', '.'; no spaces, quotes or ';')"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ConfigError(f"config key {_key(err.absolute_path)}: {msg}{more}")


# --------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Endpoint:
    """One checkpoint of one run and seed."""

    run: str
    seed: int
    tag: str  # epoch{E} | iter{I} | final

    @property
    def label(self) -> str:
        return f"{self.run}/seed{self.seed}/{self.tag}"


def endpoint_tag(ep: dict, key: str) -> str:
    kinds = [k for k in ("epoch", "iteration") if ep.get(k) is not None]
    kinds += ["final"] if ep.get("final") is True else []
    if len(kinds) != 1:
        raise ConfigError(f"config key {key}: give exactly one of epoch, iteration or final: true (got {kinds or 'none'})")
    if kinds[0] == "epoch":
        return f"epoch{ep['epoch']}"
    if kinds[0] == "iteration":
        return f"iter{ep['iteration']}"
    return "final"


def run_names(cfg: dict) -> list[str]:
    return list(cfg["runs"])


def resolve_run(cfg: dict, name: str) -> dict:
    """The run's settings: built-in defaults < config ``defaults`` < the run's own keys."""
    if name not in cfg["runs"]:
        raise ConfigError(f"config key runs: no run named {name!r} (runs: {', '.join(cfg['runs'])})")
    run = _run_defaults()
    run.update(copy.deepcopy(cfg.get("defaults") or {}))
    run.update(copy.deepcopy(cfg["runs"][name] or {}))
    for req in ("model", "optimizer", "schedule", "epochs", "batch_size"):
        if req not in run:
            raise ConfigError(f"config key runs.{name}.{req}: missing (set it in the run or in defaults)")
    run["checkpoints"] = {"epochs": list(run["checkpoints"].get("epochs") or []),
                          "iterations": list(run["checkpoints"].get("iterations") or [])}
    return run


def data_spec(cfg: dict) -> dict:
    d = dict(cfg["data"])
    d.pop("probe_size", None)
    d.pop("download", None)  # only the data-preparation job downloads
    d.setdefault("cache_dir", "resources/data")
    return d


def checkpoint_tags(run: dict) -> list[str]:
    tags = [f"epoch{e}" for e in run["checkpoints"]["epochs"]]
    tags += [f"iter{i}" for i in run["checkpoints"]["iterations"]]
    return tags + ["final"]


def results_dir(cfg: dict) -> str:
    return f"results/{cfg['name']}"


def run_dir(cfg: dict, run: str, seed: int | str) -> str:
    return f"{results_dir(cfg)}/runs/{run}/seed{seed}"


def ckpt_path(cfg: dict, ep: Endpoint) -> str:
    return f"{run_dir(cfg, ep.run, ep.seed)}/{ep.tag}.pt"


def teacher_endpoint(cfg: dict, run_name: str, seed: int) -> Endpoint | None:
    run = resolve_run(cfg, run_name)
    if not run.get("distill"):
        return None
    t = run["distill"]["teacher"]
    key = f"runs.{run_name}.distill.teacher"
    return Endpoint(t["run"], int(t.get("seed", seed)), endpoint_tag(t, key))


def run_spec(cfg: dict, name: str, seed: int) -> dict:
    """The full spec handed to ``closerlook.train.train_run`` for one run and seed."""
    run = resolve_run(cfg, name)
    spec = {k: v for k, v in run.items() if k != "seeds"}
    spec["name"] = name
    spec["seed"] = int(seed)
    spec["data"] = data_spec(cfg)
    if run.get("distill"):
        t = teacher_endpoint(cfg, name, seed)
        d = dict(run["distill"])
        d["teacher"] = ckpt_path(cfg, t)
        d.setdefault("temperature", 4.0)
        d.setdefault("alpha", 0.9)
        spec["distill"] = d
    return spec


def pair_instances(cfg: dict, a: dict, b: dict, key: str, sides: tuple[str, str] = ("start", "end")) -> dict[str, tuple[Endpoint, Endpoint]]:
    """Instances of a comparison between endpoints ``a`` and ``b``.

    No seed given: one instance per seed both runs have ("seed<S>").
    One seed given: the other side takes the same seed.
    Both given: one instance, "seed<S>" if equal, else "s<A>-s<B>".
    """
    for side, ep in zip(sides, (a, b)):
        if ep["run"] not in cfg["runs"]:
            raise ConfigError(f"config key {key}.{side}.run: no run named {ep['run']!r} (runs: {', '.join(cfg['runs'])})")
    ta, tb = endpoint_tag(a, f"{key}.{sides[0]}"), endpoint_tag(b, f"{key}.{sides[1]}")
    sa, sb = a.get("seed"), b.get("seed")
    if sa is None and sb is None:
        seeds_a = resolve_run(cfg, a["run"])["seeds"]
        seeds_b = resolve_run(cfg, b["run"])["seeds"]
        common = [s for s in seeds_a if s in seeds_b]
        if not common:
            raise ConfigError(f"config key {key}: runs {a['run']!r} and {b['run']!r} share no seed; give seeds explicitly")
        return {f"seed{s}": (Endpoint(a["run"], s, ta), Endpoint(b["run"], s, tb)) for s in common}
    sa = sb if sa is None else sa
    sb = sa if sb is None else sb
    inst = f"seed{sa}" if sa == sb else f"s{sa}-s{sb}"
    return {inst: (Endpoint(a["run"], int(sa), ta), Endpoint(b["run"], int(sb), tb))}


def curve_settings(cfg: dict, name: str) -> dict:
    c = copy.deepcopy(CURVE_DEFAULTS)
    c.update(copy.deepcopy(cfg.get("curve_defaults") or {}))
    c.update(copy.deepcopy(cfg.get("curves", {})[name]))
    return c


def curve_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = cfg["curves"][name]
    return pair_instances(cfg, c["start"], c["end"], f"curves.{name}")


def plane_settings(cfg: dict, name: str) -> dict:
    p = copy.deepcopy(PLANE_DEFAULTS)
    p.update(copy.deepcopy(cfg["planes"][name]))
    return p


def plane_projection(cfg: dict, name: str, inst: str) -> list[Endpoint]:
    """Checkpoints projected onto the plane of ``name`` for curve instance ``inst``."""
    p = cfg["planes"][name]
    if not p.get("project"):
        return []
    start, _ = curve_instances(cfg, p["curve"])[inst]
    proj = p["project"]
    seed = int(proj.get("seed", start.seed))
    return [Endpoint(proj["run"], seed, f"epoch{e}") for e in proj["epochs"]]


def activation_settings(cfg: dict) -> dict:
    a = copy.deepcopy(ACTIVATION_DEFAULTS)
    a.update(copy.deepcopy(cfg.get("activations") or {}))
    return a


def similarity_settings(cfg: dict) -> dict:
    s = copy.deepcopy(SIMILARITY_DEFAULTS)
    s.update(copy.deepcopy(cfg.get("similarity") or {}))
    return s


def comparison_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = similarity_settings(cfg)["comparisons"][name]
    return pair_instances(cfg, c["a"], c["b"], f"similarity.comparisons.{name}", ("a", "b"))


def claim_rules(cfg: dict) -> dict:
    r = dict(CLAIM_DEFAULTS)
    r.update(cfg.get("claims") or {})
    return r


def figure_names(cfg: dict) -> list[str]:
    figs = cfg.get("figures") or {}
    return [f for f in FIGURE_NAMES if f in figs]


# --------------------------------------------------------------------------- semantic checks
def _check_endpoint(cfg: dict, ep: Endpoint, key: str) -> None:
    if ep.run not in cfg["runs"]:
        raise ConfigError(f"config key {key}.run: no run named {ep.run!r} (runs: {', '.join(cfg['runs'])})")
    run = resolve_run(cfg, ep.run)
    if ep.seed not in run["seeds"]:
        raise ConfigError(f"config key {key}.seed: run {ep.run!r} has no seed {ep.seed} (its seeds: {run['seeds']})")
    if ep.tag not in checkpoint_tags(run):
        what = ep.tag.replace("epoch", "epoch ").replace("iter", "iteration ")
        raise ConfigError(
            f"config key {key}: run {ep.run!r} saves no checkpoint at {what}; add it to "
            f"runs.{ep.run}.checkpoints (it saves: {', '.join(checkpoint_tags(run))})"
        )


def _same_arch(cfg: dict, a: Endpoint, b: Endpoint, key: str) -> None:
    ma, mb = resolve_run(cfg, a.run)["model"], resolve_run(cfg, b.run)["model"]
    arch = lambda m: (m.get("name"), float(m.get("width", 1.0)))  # noqa: E731
    if arch(ma) != arch(mb):
        raise ConfigError(
            f"config key {key}: per-layer comparison between different architectures "
            f"({a.run}: {ma.get('name')} width {ma.get('width', 1.0)}, {b.run}: {mb.get('name')} width {mb.get('width', 1.0)}); "
            "layer-by-layer (diagonal) CCA needs the same layers on both sides"
        )


def validate_config(cfg: dict) -> None:
    """Schema, then cross-references. Raises ConfigError naming the key."""
    validate_schema(cfg)
    try:
        from .train import validate_run_spec
    except ImportError:  # engine not importable: schema checks only
        validate_run_spec = None

    for name in cfg["runs"]:
        run = resolve_run(cfg, name)
        key = f"runs.{name}"
        ck = run["checkpoints"]
        for e in ck["epochs"]:
            if e > run["epochs"]:
                raise ConfigError(f"config key {key}.checkpoints.epochs: epoch {e} is beyond the run's {run['epochs']} epochs")
        if run.get("freeze"):
            pass  # group names checked by the engine against the model
        for seed in run["seeds"]:
            if run.get("distill"):
                t = teacher_endpoint(cfg, name, seed)
                _check_endpoint(cfg, t, f"{key}.distill.teacher")
                if t.run == name:
                    raise ConfigError(f"config key {key}.distill.teacher: a run cannot be its own teacher")
            if validate_run_spec is not None:
                try:
                    validate_run_spec(run_spec(cfg, name, seed))
                except ConfigError as exc:
                    raise ConfigError(f"config key {key}: {exc}") from exc
    _check_teacher_cycles(cfg)

    for name in cfg.get("curves") or {}:
        for inst, (a, b) in curve_instances(cfg, name).items():
            _check_endpoint(cfg, a, f"curves.{name}.start")
            _check_endpoint(cfg, b, f"curves.{name}.end")
            if a == b:
                raise ConfigError(f"config key curves.{name}: start and end are the same checkpoint ({a.label})")
            _same_arch(cfg, a, b, f"curves.{name}")
    for name, p in (cfg.get("planes") or {}).items():
        if p["curve"] not in (cfg.get("curves") or {}):
            raise ConfigError(f"config key planes.{name}.curve: no curve named {p['curve']!r}")
        for inst in curve_instances(cfg, p["curve"]):
            for ep in plane_projection(cfg, name, inst):
                _check_endpoint(cfg, ep, f"planes.{name}.project")
    sim = similarity_settings(cfg)
    for name in sim["comparisons"]:
        for inst, (a, b) in comparison_instances(cfg, name).items():
            _check_endpoint(cfg, a, f"similarity.comparisons.{name}.a")
            _check_endpoint(cfg, b, f"similarity.comparisons.{name}.b")
            _same_arch(cfg, a, b, f"similarity.comparisons.{name}")
    _check_figures(cfg, sim)


def _check_teacher_cycles(cfg: dict) -> None:
    for start in cfg["runs"]:
        seen, cur = [start], start
        while True:
            d = resolve_run(cfg, cur).get("distill")
            if not d:
                break
            cur = d["teacher"]["run"]
            if cur in seen:
                raise ConfigError(f"config key runs.{start}.distill.teacher: teachers form a cycle ({' -> '.join(seen + [cur])})")
            seen.append(cur)


def _check_figures(cfg: dict, sim: dict) -> None:
    figs = cfg.get("figures") or {}
    curves = cfg.get("curves") or {}
    runs = cfg["runs"]

    def need(kind: str, names: Iterable[str], pool: dict, key: str) -> None:
        for n in names:
            if n not in pool:
                raise ConfigError(f"config key figures.{key}: no {kind} named {n!r}")

    if "fig1_robustness" in figs:
        need("curve", figs["fig1_robustness"]["curves"], curves, "fig1_robustness.curves")
    if "fig2_sgdr" in figs:
        f = figs["fig2_sgdr"]
        need("run", [f["sgdr_run"], f["sgd_run"]], runs, "fig2_sgdr")
        for k in ("sgdr_curves", "sgd_curves", "reference_curves"):
            need("curve", f.get(k, []), curves, f"fig2_sgdr.{k}")
    if "fig3_plane" in figs:
        need("plane", [figs["fig3_plane"]["plane"]], cfg.get("planes") or {}, "fig3_plane.plane")
    for fig in ("fig4_warmup", "fig5_freeze", "fig6_distill"):
        if fig in figs:
            f = figs[fig]
            need("run", (f.get("runs") or {}).values(), runs, f"{fig}.runs")
            need("similarity comparison", f["comparisons"].values(), sim["comparisons"], f"{fig}.comparisons")
            m = f.get("measure", "cca_mean")
            if m not in sim["measures"]:
                raise ConfigError(f"config key figures.{fig}.measure: {m!r} is not computed (similarity.measures: {sim['measures']})")


# --------------------------------------------------------------------------- figure inputs
def _flatten(tree: Any) -> list[str]:
    if isinstance(tree, dict):  # "specs" hold run settings, not input files
        return [p for k, v in tree.items() if k != "specs" for p in _flatten(v)]
    if isinstance(tree, (list, tuple)):
        return [p for v in tree for p in _flatten(v)]
    return [tree] if isinstance(tree, str) and tree.startswith(results_dir_prefix()) else []


def results_dir_prefix() -> str:
    return "results/"


def _run_metrics(cfg: dict, run: str) -> dict[str, str]:
    return {f"seed{s}": f"{run_dir(cfg, run, s)}/metrics.csv" for s in resolve_run(cfg, run)["seeds"]}


def _pairs(cfg: dict, curves: Iterable[str]) -> dict:
    R = results_dir(cfg)
    return {
        c: {inst: {"curve": f"{R}/curves/{c}/{inst}/curve.csv", "line": f"{R}/curves/{c}/{inst}/line.csv"}
            for inst in curve_instances(cfg, c)}
        for c in curves
    }


def _spec_for_figure(cfg: dict, run: str) -> dict:
    return run_spec(cfg, run, resolve_run(cfg, run)["seeds"][0])


def figure_layout(cfg: dict, fig: str) -> tuple[dict, list[str]]:
    """The nested dict of input paths a figure (and the claims) reads, and its flat file list."""
    R = results_dir(cfg)
    f = (cfg.get("figures") or {})[fig]
    if fig == "fig1_robustness":
        layout = {"curves": _pairs(cfg, f["curves"])}
    elif fig == "fig2_sgdr":
        layout = {
            "metrics": {"SGDR": _run_metrics(cfg, f["sgdr_run"]), "SGD": _run_metrics(cfg, f["sgd_run"])},
            "specs": {"SGDR": _spec_for_figure(cfg, f["sgdr_run"]), "SGD": _spec_for_figure(cfg, f["sgd_run"])},
            "sgdr_pairs": _pairs(cfg, f["sgdr_curves"]),
            "sgd_pairs": _pairs(cfg, f["sgd_curves"]),
            "reference_pairs": _pairs(cfg, f.get("reference_curves", [])),
        }
    elif fig == "fig3_plane":
        plane = f["plane"]
        inst = next(iter(curve_instances(cfg, cfg["planes"][plane]["curve"])))
        layout = {"grid": f"{R}/planes/{plane}/{inst}/grid.csv", "points": f"{R}/planes/{plane}/{inst}/points.csv"}
    else:
        sims = {label: {inst: f"{R}/similarity/{comp}/{inst}.csv" for inst in comparison_instances(cfg, comp)}
                for label, comp in f["comparisons"].items()}
        runs = f.get("runs") or {
            label: similarity_settings(cfg)["comparisons"][comp]["b"]["run"] for label, comp in f["comparisons"].items()
        }
        layout = {
            "metrics": {label: _run_metrics(cfg, run) for label, run in runs.items()},
            "specs": {label: _spec_for_figure(cfg, run) for label, run in runs.items()},
            "similarity": sims,
            "measure": f.get("measure", "cca_mean"),
        }
    return layout, sorted(set(_flatten(layout)))


def figure_options(cfg: dict, fig: str) -> dict:
    figs = cfg.get("figures") or {}
    opts = dict(figs[fig])
    opts["format"] = figs.get("format", ["pdf", "png"])
    opts["dpi"] = figs.get("dpi", 150)
    return opts
