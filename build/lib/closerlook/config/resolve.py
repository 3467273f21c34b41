"""What a config's names resolve to: runs into run specs, endpoints into checkpoints, the instances
of curves, planes, comparisons, lenses and ensembles, and which path tables a curve has. Torch-free."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .. import catalog, paths
from ..defaults import CURVE_ALIGN_DEFAULT, DEFAULTS, DISTILL_DEFAULTS, resolve_lrs
from ..io import ConfigError
from .settings import align_settings, curve_settings, ensemble_settings, sharpness_settings, similarity_settings

# a run's settings when neither it nor `defaults` gives them: the engine's own (closerlook.spec.DEFAULTS),
# except what every run must state, plus `seeds`
_REQUIRED = ("model", "optimizer", "schedule", "epochs", "batch_size")


def _run_defaults() -> dict[str, Any]:
    """Keys of a run replace the default wholesale (no deep merge: an Adam run must not inherit SGD's momentum)."""
    out = {k: copy.deepcopy(v) for k, v in DEFAULTS.items() if k not in ("name", "seed", "data", *_REQUIRED)}
    out["seeds"] = [0]
    return out


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
    """The run's settings: built-in defaults < config ``defaults`` < the run's own keys (a copy of its own)."""
    return copy.deepcopy(_resolved(cfg, name))


_RESOLVED: dict[tuple[str, str, str], dict] = {}


def _resolved(cfg: dict, name: str) -> dict:
    """:func:`resolve_run` shared, for reading only: planning resolves each run some 400 times (seeds, tags,
    models of every endpoint), and the deep copies were a sixth of the DAG's cost. Keyed by the contents
    (``repr``) of what it is built from, so a changed config resolves afresh."""
    if name not in cfg["runs"]:
        raise ConfigError(f"config key runs: no run named {name!r} (runs: {', '.join(cfg['runs'])})")
    key = (name, repr(cfg.get("defaults")), repr(cfg["runs"][name]))
    if key not in _RESOLVED:
        if len(_RESOLVED) > 4096:  # many configs in one process (the tests): start again
            _RESOLVED.clear()
        _RESOLVED[key] = _resolve(cfg, name)
    return _RESOLVED[key]


def _resolve(cfg: dict, name: str) -> dict:
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
    src = {k: cfg["data"].get(k) for k in ("name", "root", "download")}
    order = catalog.stored_order(src["name"])
    return src if order == catalog.SOURCE_ORDER else {**src, "order": order}


def probe_size(cfg: dict) -> int:
    return int(cfg["data"].get("probe_size", catalog.PROBE_SIZE))


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
    run = _resolved(cfg, run_name)
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


def model_factories(cfg: dict) -> list[str]:
    """The external model factories (``module:callable``) the config's runs name: the only ones a
    checkpoint may make a job import (:func:`closerlook.models.model_from_checkpoint`). The scripts read it
    from the config, not from a rule param: it changes no result, so it must not make Snakemake rerun jobs."""
    names = {(_resolved(cfg, r).get("model") or {}).get("name") for r in cfg["runs"]}
    return sorted(n for n in names if catalog.is_external(n))


def model_check_params(cfg: dict, name: str) -> dict:
    """What the ``check_models`` job checks of one run (its params: a change re-runs the check): the model
    block, the freeze block and the data set (the model is built for the data's shape)."""
    run = _resolved(cfg, name)
    return copy.deepcopy({"model": run["model"], "freeze": run.get("freeze"), "data": cfg["data"]["name"]})


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
        seeds_a = _resolved(cfg, a["run"])["seeds"]
        seeds_b = _resolved(cfg, b["run"])["seeds"]
        common = [s for s in seeds_a if s in seeds_b]
        if not common:
            raise ConfigError(f"config key {key}: runs {a['run']!r} and {b['run']!r} share no seed; give seeds explicitly")
        return {f"seed{s}": (Endpoint(a["run"], s, ta), Endpoint(b["run"], s, tb)) for s in common}
    sa = sb if sa is None else sa
    sb = sa if sb is None else sb
    inst = f"seed{sa}" if sa == sb else f"s{sa}-s{sb}"
    return {inst: (Endpoint(a["run"], int(sa), ta), Endpoint(b["run"], int(sb), tb))}


def curve_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = cfg["curves"][name]
    return pair_instances(cfg, c["start"], c["end"], f"curves.{name}")


def plane_projection(cfg: dict, name: str, inst: str) -> list[Endpoint]:
    """Checkpoints projected onto the plane of ``name`` for curve instance ``inst``."""
    p = cfg["planes"][name]
    if not p.get("project"):
        return []
    start, _ = curve_instances(cfg, p["curve"])[inst]
    proj = p["project"]
    seed = int(proj.get("seed", start.seed))
    return [Endpoint(proj["run"], seed, f"epoch{e}") for e in proj["epochs"]]


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
    tags = [tag for tag in checkpoint_tags(_resolved(cfg, run)) if tag != "final"] + ["final"]
    return [Endpoint(run, seed, tag) for tag in tags]


def sharpness_checkpoints(cfg: dict) -> dict[str, Endpoint]:
    """``label -> Endpoint`` of the ``sharpness.checkpoints`` (seed: given, else the run's first)."""
    out = {}
    for label, ep in (sharpness_settings(cfg)["checkpoints"] or {}).items():
        key = f"sharpness.checkpoints.{label}"
        if ep["run"] not in cfg["runs"]:
            raise ConfigError(f"config key {key}.run: no run named {ep['run']!r} (runs: {', '.join(cfg['runs'])})")
        seed = int(ep.get("seed", _resolved(cfg, ep["run"])["seeds"][0]))
        out[label] = Endpoint(ep["run"], seed, endpoint_tag(ep, key))
    return out


def comparison_instances(cfg: dict, name: str) -> dict[str, tuple[Endpoint, Endpoint]]:
    c = similarity_settings(cfg)["comparisons"][name]
    return pair_instances(cfg, c["a"], c["b"], f"similarity.comparisons.{name}", ("a", "b"))


def curve_aligns(cfg: dict, name: str) -> bool:
    return curve_settings(cfg, name).get("align", CURVE_ALIGN_DEFAULT) == "weights"


def curve_end(cfg: dict, name: str, inst: str) -> str:
    """The end a curve (its fit, its plane, AutoNEB) connects to: the end checkpoint, or it aligned to the start."""
    _, b = curve_instances(cfg, name)[inst]
    return paths.aligned_end(results_dir(cfg), name, inst) if curve_aligns(cfg, name) else ckpt_path(cfg, b)


def _has_bn(cfg: dict, run: str) -> bool:
    return catalog.normalise_spec(_resolved(cfg, run)["model"])["batch_norm"]


def autoneb_curves(cfg: dict) -> list[str]:
    return list((cfg.get("autoneb") or {}).get("curves") or [])


def path_kinds(cfg: dict, name: str) -> list[str]:
    """The path tables of a curve: curve and line; aligned (+ repaired without BN) when it aligns; autoneb if listed."""
    kinds = ["curve", "line"]
    if curve_aligns(cfg, name):
        a, _ = next(iter(curve_instances(cfg, name).values()))
        kinds += ["aligned"] + (["repaired"] if align_settings(cfg)["repair"] and not _has_bn(cfg, a.run) else [])
    return kinds + (["autoneb"] if name in autoneb_curves(cfg) else [])


def _endpoint_epochs(cfg: dict, ep: Endpoint, key: str) -> float:
    if ep.tag == "final":
        return float(_resolved(cfg, ep.run)["epochs"])
    if ep.tag.startswith("epoch"):
        return float(ep.tag[len("epoch"):])
    raise ConfigError(f"config key {key}: give an epoch or final: true (an iteration has no epoch count)")


def ensemble_base(cfg: dict) -> Endpoint:
    b = cfg["ensembles"]["base"]
    seed = int(b.get("seed", _resolved(cfg, b["run"])["seeds"][0]))
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
    seeds = _resolved(cfg, ind["run"])["seeds"][:k]
    snap = e["snapshot"]
    sseed = int(snap.get("seed", _resolved(cfg, snap["run"])["seeds"][0]))
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
    s, base = ensemble_settings(cfg), ensemble_base(cfg)
    run = resolve_run(cfg, base.run)
    return {"batch_size": run["batch_size"], "augment": run["augment"], "optimizer": dict(run["optimizer"]),
            "seed": base.seed, "members": s["members"], "budget_epochs": s["budget_epochs"],
            **resolve_lrs(s, float(run["optimizer"]["lr"]))}
