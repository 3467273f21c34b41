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
from typing import Any, Iterable, Mapping

import yaml

from . import paths
from .io import ConfigError
from .spec import DISTILL_DEFAULTS

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# a run's settings when neither it nor `defaults` gives them: the engine's own (closerlook.spec.DEFAULTS),
# except what every run must state, plus `seeds`
_REQUIRED = ("model", "optimizer", "schedule", "epochs", "batch_size")


def _run_defaults() -> dict[str, Any]:
    """Keys of a run replace the default wholesale (no deep merge: an Adam run must not inherit SGD's momentum)."""
    from .spec import DEFAULTS

    out = {k: copy.deepcopy(v) for k, v in DEFAULTS.items() if k not in ("name", "seed", "data", *_REQUIRED)}
    out["seeds"] = [0]
    return out


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


def retype_cli_values(config: dict, overrides: Any) -> None:
    """Read the values given with ``snakemake --config`` as YAML, as if they came from a config file.

    Snakemake types a top-level ``--config key=value`` (int, float, bool) but reads a nested one
    (``--config 'data={train_per_class: 5}'``) with YAML's BaseLoader, which keeps every scalar a
    string: the schema would then refuse ``'5'`` for an integer. Each string that ``overrides``
    (Snakemake's ``workflow.config_settings.config``) put into ``config`` is re-read with
    ``yaml.safe_load`` in place ("5" -> 5, "null" -> None, "[1, 2]" -> a list); other values are
    left alone. A value meant as a string that reads as another type can be quoted twice.
    """
    if not isinstance(overrides, Mapping) or not isinstance(config, dict):
        return
    for key, given in overrides.items():
        if key not in config:
            continue
        if isinstance(given, Mapping):
            retype_cli_values(config[key], given)
        elif isinstance(given, (str, list)) and config[key] == given:
            config[key] = _safe_scalar(given)


def _safe_scalar(v: Any) -> Any:
    if isinstance(v, list):
        return [_safe_scalar(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _safe_scalar(x) for k, x in v.items()}
    try:
        return yaml.safe_load(v) if isinstance(v, str) else v
    except yaml.YAMLError:
        return v


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
    for req in _REQUIRED:
        if req not in run:
            raise ConfigError(f"config key runs.{name}.{req}: missing (set it in the run or in defaults)")
    run["checkpoints"] = {"epochs": list(run["checkpoints"].get("epochs") or []),
                          "iterations": list(run["checkpoints"].get("iterations") or [])}
    return run


def data_spec(cfg: dict) -> dict:
    d = dict(cfg["data"])
    d.pop("probe_size", None)
    d.pop("download", None)  # only the data-preparation job downloads
    d.setdefault("cache_dir", paths.DATA_CACHE_DIR)
    return d


def data_source(cfg: dict) -> dict:
    """The data-preparation job's params: ``{name, root, download}``, plus ``order`` for data sets
    stored re-ordered (:func:`closerlook.data.stored_order`; the folder sets). A cache decoded in
    another order then counts as changed params, so Snakemake re-runs the job and every job after it;
    the other sets' params (and so their caches and results) are as before."""
    from .data import SOURCE_ORDER, stored_order

    src = {k: cfg["data"].get(k) for k in ("name", "root", "download")}
    order = stored_order(src["name"])
    return src if order == SOURCE_ORDER else {**src, "order": order}


def probe_size(cfg: dict) -> int:
    from .data import PROBE_SIZE

    return int(cfg["data"].get("probe_size", PROBE_SIZE))


def checkpoint_tags(run: dict) -> list[str]:
    tags = [f"epoch{e}" for e in run["checkpoints"]["epochs"]]
    tags += [f"iter{i}" for i in run["checkpoints"]["iterations"]]
    return tags + ["final"]


def results_dir(cfg: dict) -> str:
    return paths.results_dir(cfg["name"])


def ckpt_path(cfg: dict, ep: Endpoint) -> str:
    return paths.checkpoint(results_dir(cfg), ep.run, ep.seed, ep.tag)


def activation_dir(cfg: dict, ep: Endpoint) -> str:
    return paths.activation_dir(results_dir(cfg), ep.run, ep.seed, ep.tag)


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
        spec["distill"] = {**DISTILL_DEFAULTS, **d}
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
    """Fitting (closerlook.curves.FIT_DEFAULTS) and evaluation (closerlook.landscape.PATH_DEFAULTS)
    settings of a curve: built-in < ``curve_defaults`` < the curve's own keys."""
    from .curves import FIT_DEFAULTS
    from .landscape import PATH_DEFAULTS

    c = copy.deepcopy({**FIT_DEFAULTS, **PATH_DEFAULTS})
    c.update(copy.deepcopy(cfg.get("curve_defaults") or {}))
    c.update(copy.deepcopy(cfg.get("curves", {})[name]))
    return c


def curve_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = cfg["curves"][name]
    return pair_instances(cfg, c["start"], c["end"], f"curves.{name}")


def plane_settings(cfg: dict, name: str) -> dict:
    from .landscape import PLANE_DEFAULTS

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
    from .activations import CAPTURE_DEFAULTS

    a = copy.deepcopy(CAPTURE_DEFAULTS)
    a.update(copy.deepcopy(cfg.get("activations") or {}))
    return a


def lens_settings(cfg: dict) -> dict:
    """The ``lenses`` block over :data:`closerlook.lenses.LENS_DEFAULTS` (``plane`` and ``trajectory`` kept)."""
    from .lenses import LENS_DEFAULTS

    s = copy.deepcopy(LENS_DEFAULTS)
    s.update(copy.deepcopy(cfg.get("lenses") or {}))
    return s


def lens_instances(cfg: dict) -> dict[str, dict[str, Endpoint]]:
    """Per instance of the lens plane's curve: its endpoints ``{"w1": ..., "w2": ...}``."""
    curve = cfg["planes"][cfg["lenses"]["plane"]]["curve"]
    return {inst: dict(zip(paths.LENS_ENDS, eps)) for inst, eps in curve_instances(cfg, curve).items()}


def lens_trajectory(cfg: dict, inst: str) -> list[Endpoint]:
    """The checkpoints of the lens trajectory for instance ``inst``: every checkpoint the run saves (final last).

    ``lenses.trajectory.run`` (default: the run of the plane's first endpoint), seed
    ``lenses.trajectory.seed`` (default: that endpoint's seed)."""
    w1 = lens_instances(cfg)[inst]["w1"]
    t = (cfg["lenses"].get("trajectory") or {})
    run = t.get("run", w1.run)
    seed = int(t.get("seed", w1.seed))
    tags = [tag for tag in checkpoint_tags(resolve_run(cfg, run)) if tag != "final"] + ["final"]
    return [Endpoint(run, seed, tag) for tag in tags]


def sharpness_settings(cfg: dict) -> dict:
    """The ``sharpness`` block over :data:`closerlook.sharpness.SHARPNESS_DEFAULTS`."""
    from .sharpness import SHARPNESS_DEFAULTS

    s = copy.deepcopy({**SHARPNESS_DEFAULTS, "checkpoints": {}})
    s.update(copy.deepcopy(cfg.get("sharpness") or {}))
    return s


def sharpness_checkpoints(cfg: dict) -> dict[str, Endpoint]:
    """``label -> Endpoint`` of the ``sharpness.checkpoints`` (seed: given, else the run's first)."""
    out = {}
    for label, ep in (sharpness_settings(cfg)["checkpoints"] or {}).items():
        key = f"sharpness.checkpoints.{label}"
        if ep["run"] not in cfg["runs"]:
            raise ConfigError(f"config key {key}.run: no run named {ep['run']!r} (runs: {', '.join(cfg['runs'])})")
        seed = int(ep.get("seed", resolve_run(cfg, ep["run"])["seeds"][0]))
        out[label] = Endpoint(ep["run"], seed, endpoint_tag(ep, key))
    return out


def similarity_settings(cfg: dict) -> dict:
    from .similarity import COMPARISON_DEFAULTS

    s = copy.deepcopy({**COMPARISON_DEFAULTS, "comparisons": {}})
    s.update(copy.deepcopy(cfg.get("similarity") or {}))
    return s


def comparison_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = similarity_settings(cfg)["comparisons"][name]
    return pair_instances(cfg, c["a"], c["b"], f"similarity.comparisons.{name}", ("a", "b"))


def claim_rules(cfg: dict) -> dict:
    """The config's claim thresholds; closerlook.verdicts.DEFAULT_RULES fills the rest."""
    return dict(cfg.get("claims") or {})


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


# --------------------------------------------------------------------------- alignment, AutoNEB, ensembles
def align_settings(cfg: dict) -> dict:
    """Weight-matching settings: closerlook.align.ALIGN_DEFAULTS < the config's ``align`` block."""
    from .align import ALIGN_DEFAULTS

    return {**ALIGN_DEFAULTS, **copy.deepcopy(cfg.get("align") or {})}


def curve_aligns(cfg: dict, name: str) -> bool:
    from .align import CURVE_ALIGN_DEFAULT

    return curve_settings(cfg, name).get("align", CURVE_ALIGN_DEFAULT) == "weights"


def curve_end(cfg: dict, name: str, inst: str) -> str:
    """The end a curve (its fit, its plane, AutoNEB) connects to: the end checkpoint, or it aligned to the start."""
    _, b = curve_instances(cfg, name)[inst]
    return paths.aligned_end(results_dir(cfg), name, inst) if curve_aligns(cfg, name) else ckpt_path(cfg, b)


def _has_bn(cfg: dict, run: str) -> bool:
    from .models import normalise_spec

    return normalise_spec(resolve_run(cfg, run)["model"])["batch_norm"]


def autoneb_curves(cfg: dict) -> list[str]:
    return list((cfg.get("autoneb") or {}).get("curves") or [])


def autoneb_settings(cfg: dict) -> dict:
    """AutoNEB settings: closerlook.autoneb.AUTONEB_DEFAULTS < the ``autoneb`` block (its ``curves`` list aside)."""
    from .autoneb import check_settings

    return check_settings({k: v for k, v in (cfg.get("autoneb") or {}).items() if k != "curves"})


def path_kinds(cfg: dict, name: str) -> list[str]:
    """The path tables of a curve: curve and line; aligned (+ repaired without BN) when it aligns; autoneb if listed."""
    kinds = ["curve", "line"]
    if curve_aligns(cfg, name):
        a, _ = next(iter(curve_instances(cfg, name).values()))
        kinds += ["aligned"] + (["repaired"] if align_settings(cfg)["repair"] and not _has_bn(cfg, a.run) else [])
    return kinds + (["autoneb"] if name in autoneb_curves(cfg) else [])


def ensemble_settings(cfg: dict) -> dict:
    """closerlook.ensembles.ENSEMBLE_DEFAULTS < the ``ensembles`` block (``fge`` and ``swa`` merged key by key)."""
    from .ensembles import ENSEMBLE_DEFAULTS

    e = copy.deepcopy(cfg.get("ensembles") or {})
    out = {**copy.deepcopy(ENSEMBLE_DEFAULTS), **e}
    for sub in ("fge", "swa"):
        out[sub] = {**ENSEMBLE_DEFAULTS[sub], **(e.get(sub) or {})}
    return out


def _endpoint_epochs(cfg: dict, ep: Endpoint, key: str) -> float:
    if ep.tag == "final":
        return float(resolve_run(cfg, ep.run)["epochs"])
    if ep.tag.startswith("epoch"):
        return float(ep.tag[len("epoch"):])
    raise ConfigError(f"config key {key}: give an epoch or final: true (an iteration has no epoch count)")


def ensemble_base(cfg: dict) -> Endpoint:
    b = cfg["ensembles"]["base"]
    seed = int(b.get("seed", resolve_run(cfg, b["run"])["seeds"][0]))
    return Endpoint(b["run"], seed, endpoint_tag(b, "ensembles.base"))


def ensemble_inst(cfg: dict) -> str:
    return f"seed{ensemble_base(cfg).seed}"


def ensemble_curve(cfg: dict) -> tuple[str, str]:
    c = cfg["ensembles"]["curve"]
    insts = list(curve_instances(cfg, c["name"]))
    return c["name"], c.get("inst", insts[0])


def ensemble_members(cfg: dict) -> dict[str, list[Endpoint]]:
    """The checkpoints of the independent-seed and the snapshot ensembles."""
    e, k = cfg["ensembles"], ensemble_settings(cfg)["members"]
    ind = e["independent"]
    tag = endpoint_tag({"final": True} if "epoch" not in ind and "final" not in ind else ind, "ensembles.independent")
    seeds = resolve_run(cfg, ind["run"])["seeds"][:k]
    snap = e["snapshot"]
    sseed = int(snap.get("seed", resolve_run(cfg, snap["run"])["seeds"][0]))
    return {"independent": [Endpoint(ind["run"], int(s), tag) for s in seeds],
            "snapshot": [Endpoint(snap["run"], sseed, f"epoch{x}") for x in snap["epochs"]]}


def ensemble_budgets(cfg: dict) -> dict[str, float]:
    """Training epochs behind each ensemble (the curve's: both ends and the curve's fitting)."""
    s, mem, base = ensemble_settings(cfg), ensemble_members(cfg), ensemble_base(cfg)
    name, inst = ensemble_curve(cfg)
    a, b = curve_instances(cfg, name)[inst]
    extra = float(s["budget_epochs"]) + _endpoint_epochs(cfg, base, "ensembles.base")
    return {"independent": sum(_endpoint_epochs(cfg, ep, "ensembles.independent") for ep in mem["independent"]),
            "snapshot": max(_endpoint_epochs(cfg, ep, "ensembles.snapshot") for ep in mem["snapshot"]),
            "fge": extra, "swa": extra,
            "curve": _endpoint_epochs(cfg, a, f"curves.{name}.start") + _endpoint_epochs(cfg, b, f"curves.{name}.end")
            + float(curve_settings(cfg, name)["epochs"])}


def ensemble_training(cfg: dict) -> dict:
    """What FGE and SWA train with: the base run's batch, augmentation and optimizer; lrs from the block or the run."""
    from .ensembles import resolve_lrs

    s, base = ensemble_settings(cfg), ensemble_base(cfg)
    run = resolve_run(cfg, base.run)
    return {"batch_size": run["batch_size"], "augment": run["augment"], "optimizer": dict(run["optimizer"]),
            "seed": base.seed, "members": s["members"], "budget_epochs": s["budget_epochs"],
            **resolve_lrs(s, float(run["optimizer"]["lr"]))}


def _check_extras(cfg: dict) -> None:
    curves = cfg.get("curves") or {}
    for i, name in enumerate(autoneb_curves(cfg)):
        if name not in curves:
            raise ConfigError(f"config key autoneb.curves[{i}]: no curve named {name!r}")
    if cfg.get("autoneb"):
        autoneb_settings(cfg)
    if cfg.get("ensembles"):
        _check_ensembles(cfg)
    if "fig9_ensembles" in (cfg.get("figures") or {}) and not cfg.get("ensembles"):
        raise ConfigError("config key figures.fig9_ensembles: needs an `ensembles` block (what to compare)")


def _check_ensembles(cfg: dict) -> None:
    from .schedules import sgdr_cycle_ends

    e, s = cfg["ensembles"], ensemble_settings(cfg)
    k, base = s["members"], ensemble_base(cfg)
    _check_endpoint(cfg, base, "ensembles.base")
    _endpoint_epochs(cfg, base, "ensembles.base")
    ind = e["independent"]
    if ind["run"] not in cfg["runs"]:
        raise ConfigError(f"config key ensembles.independent.run: no run named {ind['run']!r}")
    seeds = resolve_run(cfg, ind["run"])["seeds"]
    if len(seeds) < k:
        raise ConfigError(f"config key ensembles.independent.run: run {ind['run']!r} has {len(seeds)} seed(s), "
                          f"the comparison needs members = {k}")
    snap = e["snapshot"]
    if len(snap["epochs"]) != k:
        raise ConfigError(f"config key ensembles.snapshot.epochs: {len(snap['epochs'])} snapshots for members = {k}")
    srun = resolve_run(cfg, snap["run"]) if snap["run"] in cfg["runs"] else None
    ends = sgdr_cycle_ends(srun["schedule"], srun["epochs"]) if srun else []
    for x in snap["epochs"]:
        if not any(abs(x - c) < 1e-9 for c in ends):
            raise ConfigError(f"config key ensembles.snapshot.epochs: epoch {x} is not the end of an SGDR cycle of run "
                              f"{snap['run']!r} (its cycles end at epochs {', '.join(f'{c:g}' for c in ends) or 'none'})")
    mem = ensemble_members(cfg)
    for key, eps in (("independent", mem["independent"]), ("snapshot", mem["snapshot"])):
        for ep in eps:
            _check_endpoint(cfg, ep, f"ensembles.{key}")
            _same_arch(cfg, base, ep, f"ensembles.{key}")
    c = e["curve"]
    if c["name"] not in (cfg.get("curves") or {}):
        raise ConfigError(f"config key ensembles.curve.name: no curve named {c['name']!r}")
    insts = curve_instances(cfg, c["name"])
    if c.get("inst", next(iter(insts))) not in insts:
        raise ConfigError(f"config key ensembles.curve.inst: curve {c['name']!r} has no instance {c['inst']!r} "
                          f"(it has {', '.join(insts)})")
    if s["curve_ts"] is not None and len(s["curve_ts"]) != k:
        raise ConfigError(f"config key ensembles.curve_ts: {len(s['curve_ts'])} points for members = {k}")
    ensemble_budgets(cfg)


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


def model_factories(cfg: dict) -> list[str]:
    """The external model factories (``module:callable``) the config's runs name: the only ones a
    checkpoint may make a job import (:func:`closerlook.models.model_from_checkpoint`). The scripts read it
    from the config, not from a rule param: it changes no result, so it must not make Snakemake rerun jobs."""
    from .factories import is_external

    names = {(resolve_run(cfg, r).get("model") or {}).get("name") for r in cfg["runs"]}
    return sorted(n for n in names if is_external(n))


def _same_arch(cfg: dict, a: Endpoint, b: Endpoint, key: str) -> None:
    from .models import arch_key

    ma, mb = resolve_run(cfg, a.run)["model"], resolve_run(cfg, b.run)["model"]
    if arch_key(ma) != arch_key(mb):
        raise ConfigError(
            f"config key {key}: per-layer comparison between different architectures "
            f"({a.run}: {_arch_text(arch_key(ma))}, {b.run}: {_arch_text(arch_key(mb))}); "
            "layer-by-layer (diagonal) CCA needs the same layers on both sides"
        )


def _arch_text(key: tuple) -> str:
    name, width, skip, kwargs, adapt, layers = key
    text = f"{name} width {width}" + ("" if skip else " without skip connections")
    text += f" kwargs {kwargs}" if kwargs != "[]" else ""
    text += f" adapt {adapt}" if adapt != "none" else ""
    return text + (f" layers {list(layers)}" if layers else "")


def validate_config(cfg: dict) -> None:
    """Schema, then cross-references. Raises ConfigError naming the key."""
    from .spec import validate_run_spec

    validate_schema(cfg)

    for name in cfg["runs"]:
        run = resolve_run(cfg, name)
        key = f"runs.{name}"
        ck = run["checkpoints"]
        for e in ck["epochs"]:
            if e > run["epochs"]:
                raise ConfigError(f"config key {key}.checkpoints.epochs: epoch {e} is beyond the run's {run['epochs']} epochs")
        for seed in run["seeds"]:
            if run.get("distill"):
                t = teacher_endpoint(cfg, name, seed)
                _check_endpoint(cfg, t, f"{key}.distill.teacher")
                if t.run == name:
                    raise ConfigError(f"config key {key}.distill.teacher: a run cannot be its own teacher")
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
    _check_lenses(cfg)
    sim = similarity_settings(cfg)
    for name in sim["comparisons"]:
        for inst, (a, b) in comparison_instances(cfg, name).items():
            _check_endpoint(cfg, a, f"similarity.comparisons.{name}.a")
            _check_endpoint(cfg, b, f"similarity.comparisons.{name}.b")
            _same_arch(cfg, a, b, f"similarity.comparisons.{name}")
    _check_extras(cfg)
    _check_figures(cfg, sim)


def _check_lenses(cfg: dict) -> None:
    lens = cfg.get("lenses")
    if lens:
        if lens["plane"] not in (cfg.get("planes") or {}):
            raise ConfigError(f"config key lenses.plane: no plane named {lens['plane']!r}")
        t = lens.get("trajectory") or {}
        if "run" in t and t["run"] not in cfg["runs"]:
            raise ConfigError(f"config key lenses.trajectory.run: no run named {t['run']!r}")
        for inst in lens_instances(cfg):
            traj = lens_trajectory(cfg, inst)
            for ep in traj:
                _check_endpoint(cfg, ep, "lenses.trajectory")
            if len(traj) < 3:
                raise ConfigError(f"config key lenses.trajectory: run {traj[0].run!r} saves {len(traj)} checkpoints; "
                                  "a trajectory view needs at least 3 (add checkpoints.iterations or epochs)")
    sh = cfg.get("sharpness")
    if sh:
        if sh["curve"] not in (cfg.get("curves") or {}):
            raise ConfigError(f"config key sharpness.curve: no curve named {sh['curve']!r}")
        for label, ep in sharpness_checkpoints(cfg).items():
            _check_endpoint(cfg, ep, f"sharpness.checkpoints.{label}")


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
    check_explain_figures(cfg)  # fig10_warmup_sharpness (added by explain)
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
    for fig, block in (("fig7_lenses", "lenses"), ("fig8_sharpness", "sharpness")):
        if fig in figs and not cfg.get(block):
            raise ConfigError(f"config key figures.{fig}: needs a `{block}:` block (its inputs)")
    for fig in ("fig4_warmup", "fig5_freeze", "fig6_distill"):
        if fig in figs:
            f = figs[fig]
            need("run", (f.get("runs") or {}).values(), runs, f"{fig}.runs")
            need("similarity comparison", f["comparisons"].values(), sim["comparisons"], f"{fig}.comparisons")
            if f.get("baseline"):
                need("similarity comparison", [f["baseline"]], sim["comparisons"], f"{fig}.baseline")
            m = f.get("measure", "cca_mean")
            if m not in sim["measures"]:
                raise ConfigError(f"config key figures.{fig}.measure: {m!r} is not computed (similarity.measures: {sim['measures']})")


# --------------------------------------------------------------------------- figure inputs
class _Inputs:
    """Builds a figure's layout (nested dicts of paths) and records every file it names."""

    def __init__(self, cfg: dict) -> None:
        self.cfg, self.R, self.files = cfg, results_dir(cfg), set()

    def file(self, path: str) -> str:
        self.files.add(path)
        return path

    def metrics(self, run: str) -> dict[str, str]:
        return {f"seed{s}": self.file(paths.run_metrics(self.R, run, s)) for s in resolve_run(self.cfg, run)["seeds"]}

    def pairs(self, curves: Iterable[str]) -> dict:
        return {c: {inst: {k: self.file(paths.path_table(self.R, c, inst, k)) for k in path_kinds(self.cfg, c)}
                    for inst in curve_instances(self.cfg, c)}
                for c in curves}

    def spec(self, run: str) -> dict:
        return run_spec(self.cfg, run, resolve_run(self.cfg, run)["seeds"][0])


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


# --- added by explain
def fidelity_settings(cfg: dict) -> dict | None:
    """The students' fidelity (closerlook.fidelity) is measured where fig6_distill is configured: its
    ``FIDELITY_DEFAULTS`` < the config's optional ``fidelity:`` block (None: not measured)."""
    from .fidelity import FIDELITY_DEFAULTS

    if "fig6_distill" not in (cfg.get("figures") or {}):
        return None
    return {**FIDELITY_DEFAULTS, **copy.deepcopy(cfg.get("fidelity") or {})}


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


def explain_layout(cfg: dict, fig: str, inp: "_Inputs") -> dict:
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


# --- added by rules
def claims_inputs(cfg: dict) -> dict:
    """The claims' own inputs beside the figures' layouts (team interfaces A and B): ``controls`` and
    ``controls_md`` (similarity positive controls) when the config configures them (a ``similarity.controls``
    block) and paths.py names them; ``fidelity`` (distillation fidelity) when fig6_distill is configured and
    paths.py names it. Keys absent otherwise: claims 5b-7 then say "positive control not configured" and
    claim 7 "fidelity not measured"."""
    R, out = results_dir(cfg), {}
    if (cfg.get("similarity") or {}).get("controls") and hasattr(paths, "controls_table"):
        out["controls"] = paths.controls_table(R)
        if hasattr(paths, "controls_markdown"):
            out["controls_md"] = paths.controls_markdown(R)
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
