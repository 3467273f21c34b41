"""Checking a config: the JSON schema, then cross-references (a curve naming a checkpoint no run saves,
a per-layer comparison between different architectures, ...), each error a
:class:`~closerlook.io.ConfigError` naming the key. :func:`validate_config` needs no torch with
``models=False`` (planning); :func:`check_models` builds every run's model on the meta device (the
workflow's ``check_models`` job, before any training)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable

from ..catalog import arch_key
from ..io import ConfigError
from ..schedules import sgdr_cycle_ends
from ..spec import validate_run_spec
from .load import NAME_RE, SCHEMA_PATH, load_yaml
from .resolve import (_resolved, Endpoint, _endpoint_epochs, endpoint_tag, autoneb_curves, checkpoint_tags, comparison_instances,
                      curve_instances, ensemble_base, ensemble_budgets, ensemble_members, lens_instances,
                      lens_trajectory, plane_projection, run_spec, sharpness_checkpoints,
                      teacher_endpoint)
from .explain import check_explain_figures
from ..settings_types import StopRule
from .settings import autoneb_settings, control_settings, ensemble_settings, similarity_settings


def _key(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return load_yaml(SCHEMA_PATH)


def validate_schema(cfg: dict) -> None:
    """JSON-schema check; the error names the key path and the problem."""
    import jsonschema  # (0.1 s: imported when a config is checked, not by every importer of closerlook.config)

    validator = jsonschema.Draft202012Validator(_schema())
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


def load_config(path: str | Path) -> dict:
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(cfg).__name__}")
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict, models: bool = True, schema: bool = True) -> None:
    """Schema, then cross-references. Raises ConfigError naming the key.

    ``models=False`` (planning: the Snakefile) checks every run spec without torch: the model checks
    that build the network (:func:`check_models`) are left to the workflow's first job. ``schema=False``
    skips the JSON-schema pass (for a caller that has just run it)."""
    if schema:
        validate_schema(cfg)

    for name in cfg["runs"]:
        run = _resolved(cfg, name)
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
                validate_run_spec(run_spec(cfg, name, seed), build=models)
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
    check_curve_stop(cfg)  # added by curve (issue 24.2)
    for name, p in (cfg.get("planes") or {}).items():
        if p["curve"] not in (cfg.get("curves") or {}):
            raise ConfigError(f"config key planes.{name}.curve: no curve named {p['curve']!r}")
        for inst in curve_instances(cfg, p["curve"]):
            for ep in plane_projection(cfg, name, inst):
                _check_endpoint(cfg, ep, f"planes.{name}.project")
    _check_lenses(cfg)
    control_endpoints(cfg)  # the similarity controls' endpoints exist (closerlook.controls)
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
            d = _resolved(cfg, cur).get("distill")
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
    e, s = cfg["ensembles"], ensemble_settings(cfg)
    k, base = s["members"], ensemble_base(cfg)
    _check_endpoint(cfg, base, "ensembles.base")
    _endpoint_epochs(cfg, base, "ensembles.base")
    ind = e["independent"]
    if ind["run"] not in cfg["runs"]:
        raise ConfigError(f"config key ensembles.independent.run: no run named {ind['run']!r}")
    seeds = _resolved(cfg, ind["run"])["seeds"]
    if len(seeds) < k:
        raise ConfigError(f"config key ensembles.independent.run: run {ind['run']!r} has {len(seeds)} seed(s), "
                          f"the comparison needs members = {k}")
    snap = e["snapshot"]
    if len(snap["epochs"]) != k:
        raise ConfigError(f"config key ensembles.snapshot.epochs: {len(snap['epochs'])} snapshots for members = {k}")
    srun = _resolved(cfg, snap["run"]) if snap["run"] in cfg["runs"] else None
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


def _check_endpoint(cfg: dict, ep: Endpoint, key: str) -> None:
    if ep.run not in cfg["runs"]:
        raise ConfigError(f"config key {key}.run: no run named {ep.run!r} (runs: {', '.join(cfg['runs'])})")
    run = _resolved(cfg, ep.run)
    if ep.seed not in run["seeds"]:
        raise ConfigError(f"config key {key}.seed: run {ep.run!r} has no seed {ep.seed} (its seeds: {run['seeds']})")
    if ep.tag not in checkpoint_tags(run):
        what = ep.tag.replace("epoch", "epoch ").replace("iter", "iteration ")
        raise ConfigError(
            f"config key {key}: run {ep.run!r} saves no checkpoint at {what}; add it to "
            f"runs.{ep.run}.checkpoints (it saves: {', '.join(checkpoint_tags(run))})"
        )


def _same_arch(cfg: dict, a: Endpoint, b: Endpoint, key: str) -> None:
    ma, mb = _resolved(cfg, a.run)["model"], _resolved(cfg, b.run)["model"]
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


def check_models(cfg: dict) -> list[str]:
    """Build every run's model once on the meta device (and import its factory, resolve its freeze groups):
    the checks planning leaves out (``validate_config(cfg, models=False)``). The workflow runs this in its
    first job, ``check_models``, which every training job waits for; a ConfigError names the run's key.
    Returns the runs checked."""
    for name in cfg["runs"]:
        run = _resolved(cfg, name)
        try:
            validate_run_spec(run_spec(cfg, name, run["seeds"][0]), build=True)
        except ConfigError as exc:
            raise ConfigError(f"config key runs.{name}: {exc}") from exc
    return list(cfg["runs"])


def _compared_runs(cfg: dict) -> list[str]:
    """The runs whose layers a similarity comparison or a similarity control compares, in config order."""
    runs = {ep.run for name in similarity_settings(cfg)["comparisons"]
            for pair in comparison_instances(cfg, name).values() for ep in pair}
    runs |= {ep.run for ep in control_endpoints(cfg).values()}
    return [r for r in cfg["runs"] if r in runs]


def sample_size_warnings(cfg: dict) -> list[str]:
    """Issue 25.3: one line per compared run and layer that the CCA family would see with fewer than
    ``MIN_IMAGES_PER_DIM`` images per compared dimension (chance CCA then nears 1), at the probe set's
    size and at the subsamples' size, after the ``similarity.images_per_dim`` reduction if configured.
    Layer widths come from one forward pass on the meta device (:func:`closerlook.activations.layer_shapes`);
    a model that cannot run there is named instead. Needs torch (the ``check_models`` job)."""
    import torch

    from .. import catalog, models
    from ..activations import layer_shapes
    from ..defaults import MIN_IMAGES_PER_DIM
    from ..similarity_tables import reduced_dims
    from .resolve import probe_size
    from .settings import activation_settings

    sim, act, n = similarity_settings(cfg), activation_settings(cfg), probe_size(cfg)
    sub = sim.get("subsamples") or {}
    sizes = [("the probe set", n)] + ([("a subsample", int(sub.get("size") or n // 2))] if sub.get("count") else [])
    ipd, out, low = sim.get("images_per_dim"), [], {}
    for run in _compared_runs(cfg):
        spec = run_spec(cfg, run, _resolved(cfg, run)["seeds"][0])
        dims = catalog.known_dims(spec["data"]["name"])
        if dims is None:
            continue
        try:
            with torch.device("meta"):
                model = models.build_model(spec["model"], *dims)
            shapes = layer_shapes(model, act.get("layers"), (dims[0], dims[2], dims[2]))
        except Exception as exc:  # noqa: BLE001 - a model that cannot run on meta is named, not fatal
            out.append(f"runs.{run}: layer widths unknown (meta-device forward failed: {type(exc).__name__}: {exc})")
            continue
        for layer, shp in shapes.items():
            per_image = int(act["subsample"]) if len(shp) == 3 and act["mode"] == "subsample" else 1
            for what, size in sizes:
                rows = size * per_image
                k = reduced_dims(rows, shp[0], ipd) or shp[0]
                if rows < MIN_IMAGES_PER_DIM * k:
                    low.setdefault((layer, shp[0], what, rows, k), []).append(run)
    for (layer, width, what, rows, k), runs in low.items():  # one line per layer and size, its runs listed
        out.append(f"layer {layer} of runs {', '.join(runs)}: {width} wide, {rows} datapoints in {what} give "
                   f"{rows / k:.1f} per compared dimension (< {MIN_IMAGES_PER_DIM}: chance CCA nears 1); set "
                   f"similarity.images_per_dim: {MIN_IMAGES_PER_DIM} to compare the CCA family in its top "
                   f"{rows // MIN_IMAGES_PER_DIM} directions, or raise data.probe_size")
    return out


def _control_endpoint(cfg: dict, ep: dict, key: str) -> Endpoint:
    if ep["run"] not in cfg["runs"]:
        raise ConfigError(f"config key {key}.run: no run named {ep['run']!r} (runs: {', '.join(cfg['runs'])})")
    seed = int(ep.get("seed", _resolved(cfg, ep["run"])["seeds"][0]))
    out = Endpoint(ep["run"], seed, endpoint_tag(ep, key))
    _check_endpoint(cfg, out, key)
    return out


def control_endpoints(cfg: dict) -> dict[str, Endpoint]:
    """``{"a", "b"}`` (identification: two seeds of one recipe) and ``{"checkpoint"}`` (change detection),
    for the controls configured."""
    s = control_settings(cfg)
    out = {}
    if s.get("identification"):
        for side in ("a", "b"):
            out[side] = _control_endpoint(cfg, s["identification"][side], f"controls.identification.{side}")
        if out["a"].run != out["b"].run or out["a"].seed == out["b"].seed:
            raise ConfigError("config key controls.identification: a and b must be two seeds of one run "
                              f"(got {out['a'].label} and {out['b'].label})")
        _same_arch(cfg, out["a"], out["b"], "controls.identification")
    if s.get("change_detection"):
        out["checkpoint"] = _control_endpoint(cfg, s["change_detection"]["checkpoint"],
                                              "controls.change_detection.checkpoint")
    return out


# --- added by curve
def check_curve_stop(cfg: dict) -> None:
    """Issue 24.2: a curve fitted under the stopping rule is "converged" only by a rule that cannot be
    loosened into it: ``stop.min_delta`` at most a tenth of the claims' ``barrier_min_nats`` (0.01 nats at
    0.1) and ``stop.patience`` at least 2 checks; and its lr schedule must not scale with the cap
    (``epochs``): Garipov's schedule would stop at the peak lr under a large cap. Raises ConfigError
    naming the key (the curve's own, else ``curve_defaults``)."""
    from ..verdicts import DEFAULT_RULES
    from .settings import claim_rules, curve_settings

    bmin = float({**DEFAULT_RULES, **claim_rules(cfg)}["barrier_min_nats"])
    own_all = cfg.get("curves") or {}
    for name in own_all:
        s, own = curve_settings(cfg, name), own_all[name]
        stop = s.get("stop")

        def where(key: str, sub: str | None = None) -> str:
            if sub is None:
                return f"curves.{name}.{key}" if key in own else f"curve_defaults.{key}"
            inner = own.get("stop") if isinstance(own.get("stop"), dict) else {}
            return f"curves.{name}.stop.{sub}" if sub in inner else f"curve_defaults.stop.{sub}"
        if not stop:
            if s.get("schedule") == "plateau":
                raise ConfigError(f"config key {where('schedule')}: 'plateau' decays the lr at the stopping rule's "
                                  f"checks; set curve_defaults.stop")
            continue
        md = stop.get("min_delta")
        if isinstance(md, (int, float)) and md > bmin / 10 + 1e-12:
            raise ConfigError(f"config key {where('stop', 'min_delta')}: {md:g} nats is looser than a tenth of "
                              f"claims.barrier_min_nats ({bmin / 10:g}); a curve stopped by such a rule is not converged")
        pat = StopRule.of(stop, key=where("stop"))["patience"]
        if isinstance(pat, int) and pat < 2:
            raise ConfigError(f"config key {where('stop', 'patience')}: {pat} check(s); the stopping rule needs "
                              f"patience >= 2 (one flat check is noise)")
        if s.get("schedule") == "garipov":
            raise ConfigError(f"config key {where('schedule')}: 'garipov' scales with the cap (epochs), so under the "
                              f"stopping rule a large cap would stop at the peak lr; use 'plateau' or 'constant'")

