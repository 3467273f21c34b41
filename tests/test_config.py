"""Config resolution (closerlook.config) and the shipped configs.

The catalogue of bad configs lives in tests/reliability/; here: the shipped
configs are valid and plan, and resolution does what docs/DESIGN.md says.
"""
import copy
import subprocess
import sys
from pathlib import Path

import pytest

from closerlook import config as C
from closerlook import paths as P
from closerlook.io import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return C.load_config(REPO / "config" / "demo.yaml")


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "tiny.yaml", "gpu_smoke.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = C.load_config(REPO / "config" / name)
    # every paper figure; beyond them the demo draws fig10_warmup_sharpness (issue 27)
    assert set(C.figure_names(cfg)) - {"fig10_warmup_sharpness"} == set(P.PAPER_FIGURES)


@pytest.fixture(scope="module")
def extra():
    return C.load_config(REPO / "config" / "demo_extra.yaml")


def test_demo_extra_resolves_paths_members_and_budgets(extra):
    assert "fig9_ensembles" in C.figure_names(extra)
    assert C.path_kinds(extra, "seeds") == ["curve", "line", "autoneb"]
    assert C.path_kinds(extra, "seeds-aligned") == ["curve", "line", "aligned", "repaired"]  # no BN: REPAIR too
    assert C.curve_end(extra, "seeds-aligned", "s0-s1").endswith("curves/seeds-aligned/s0-s1/aligned_end.pt")
    assert C.curve_end(extra, "seeds", "s0-s1").endswith("runs/sgd/seed1/final.pt")
    mem = C.ensemble_members(extra)
    assert [ep.seed for ep in mem["independent"]] == [0, 1, 2, 3]
    assert [ep.tag for ep in mem["snapshot"]] == ["epoch2", "epoch4", "epoch6", "epoch8"]
    # epochs of training: 4 seeds x 4; SGDR to its last snapshot; base 4 + 4 extra; two ends + the curve's 2
    assert C.ensemble_budgets(extra) == {"independent": 16.0, "snapshot": 8.0, "fge": 8.0, "swa": 8.0, "curve": 10.0}
    t = C.ensemble_training(extra)
    assert (t["lr_max"], t["lr_min"], t["swa_lr"]) == pytest.approx((0.02, 0.0002, 0.004))  # float products of 0.02
    layout, files = C.figure_layout(extra, "fig9_ensembles")
    assert files == ["results/demo_extra/data/info.json",  # every layout names it: the trained-run premise's chance level
                     "results/demo_extra/ensembles/seed0/ensembles.csv", "results/demo_extra/ensembles/seed0/members.csv"]


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["autoneb"].update(curves=["nope"]), r"autoneb.curves\[0\]"),
    (lambda c: c["autoneb"].update(cycles=0), r"autoneb.cycles"),
    (lambda c: c["curves"]["seeds"].update(align="activations"), r"curves.seeds.align"),
    (lambda c: c["align"].update(method="bogus"), r"align.method"),
    (lambda c: c["ensembles"]["snapshot"].update(epochs=[2, 3, 6, 8]), r"ensembles.snapshot.epochs: epoch 3 is not the end"),
    (lambda c: c["ensembles"]["snapshot"].update(epochs=[2, 4, 6]), r"ensembles.snapshot.epochs: 3 snapshots"),
    (lambda c: c["ensembles"].update(members=5), r"ensembles.independent.run: run 'sgd' has 4 seed"),
    (lambda c: c["ensembles"]["curve"].update(name="nope"), r"ensembles.curve.name"),
    (lambda c: c["ensembles"]["base"].update(epoch=9, final=None), r"ensembles.base"),
    (lambda c: c["ensembles"].update(curve_ts=[0.0, 1.0]), r"ensembles.curve_ts"),
    (lambda c: c.pop("ensembles"), r"figures.fig9_ensembles"),
    (lambda c: c["ensembles"].update(fge={"lr_max": -1}), r"ensembles.fge.lr_max"),
])
def test_extra_blocks_errors_name_the_key(extra, edit, key):
    cfg = copy.deepcopy(extra)
    edit(cfg)
    if cfg.get("ensembles", {}).get("base", {}).get("final", True) is None:
        del cfg["ensembles"]["base"]["final"]
    with pytest.raises(ConfigError, match=key):
        C.validate_config(cfg)
def test_demo_extra_draws_the_lens_figures_beside_fig3(extra):
    assert C.figure_names(extra) == ["fig3_plane", "fig7_lenses", "fig8_sharpness", "fig9_ensembles"]
    # the paper's figures and fig9 ("Beyond the paper"); the lens figures carry no claim
    assert C.claim_figures(extra) == ["fig3_plane", "fig9_ensembles"]
    claim_inputs = {f for fig in C.claim_figures(extra) for f in C.figure_layout(extra, fig)[1]}
    assert "results/demo_extra/ensembles/seed0/ensembles.csv" in claim_inputs  # the claims rule waits for it
    assert not any(f.startswith(("results/demo_extra/lenses/", "results/demo_extra/sharpness/")) for f in claim_inputs)
    for fig in ("fig7_lenses", "fig8_sharpness"):
        layout, files = C.figure_layout(extra, fig)
        assert files and all(f.startswith(("results/demo_extra/lenses/", "results/demo_extra/sharpness/",
                                           "results/demo_extra/curves/", "results/demo_extra/planes/",
                                           "results/demo_extra/data/info.json")) for f in files), files
    traj = C.lens_trajectory(extra, "seed0")
    assert traj[-1].tag == "final" and len(traj) >= 3 * 5 + 1  # t-SNE at perplexity 5 needs N > 15
    assert C.lens_settings(extra)["perplexity"] < (len(traj) - 1) / 3  # the final repeats epoch 7: N = len - 1
    assert set(C.sharpness_checkpoints(extra)) >= {"LB warmup", "LB no warmup"}


def test_lens_and_sharpness_defaults_have_one_owner(extra):
    from closerlook.lenses import LENS_DEFAULTS
    from closerlook.sharpness import SHARPNESS_DEFAULTS

    cfg = copy.deepcopy(extra)
    cfg["lenses"] = {"plane": "sgdr"}
    cfg["sharpness"] = {"curve": "sgdr-w3-w7"}
    assert {k: C.lens_settings(cfg)[k] for k in LENS_DEFAULTS} == LENS_DEFAULTS
    assert {k: C.sharpness_settings(cfg)[k] for k in SHARPNESS_DEFAULTS} == SHARPNESS_DEFAULTS
    assert C.lens_trajectory(cfg, "seed0")[0].run == "sgdr"  # default: the run of the plane's first endpoint


@pytest.mark.parametrize("mutate, key, problem", [
    (lambda c: c["lenses"].__setitem__("plane", "nope"), "lenses.plane", "no plane named 'nope'"),
    (lambda c: c["lenses"].__setitem__("center", "median"), "config key lenses.center", "median"),
    (lambda c: c["lenses"].__setitem__("pointz", 3), "config key lenses", "'pointz'"),
    (lambda c: c["lenses"].__setitem__("trajectory", {"run": "ghost"}), "lenses.trajectory.run", "ghost"),
    (lambda c: (c["lenses"].__setitem__("trajectory", {"run": "lb_warmup"}),
                c["runs"]["lb_warmup"].__setitem__("checkpoints", {"iterations": [24]})), "lenses.trajectory", "at least 3"),
    (lambda c: c["sharpness"].__setitem__("probes", 50), "config key sharpness.probes", "minimum"),
    (lambda c: c["sharpness"].__setitem__("curve", "nope"), "sharpness.curve", "no curve named 'nope'"),
    (lambda c: c["sharpness"]["checkpoints"].__setitem__("x", {"run": "lb_warmup", "iteration": 7}),
     "sharpness.checkpoints.x", "saves no checkpoint at iteration 7"),
    (lambda c: c.pop("sharpness"), "figures.fig8_sharpness", "sharpness"),
])
def test_lens_config_errors_name_the_key(extra, mutate, key, problem):
    cfg = copy.deepcopy(extra)
    mutate(cfg)
    with pytest.raises(ConfigError) as exc:
        C.validate_config(cfg)
    assert key in str(exc.value) and problem in str(exc.value), str(exc.value)


def test_demo_extra_plans_the_lens_rules(tmp_path):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"),
                        "-d", str(tmp_path), "--configfile", str(REPO / "config" / "demo_extra.yaml")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for rule in ("train_sgdr", "fit_curve", "plane", "lens_slices", "lens_trajectory", "lens_pca_grid",
                 "sharpness_path", "sharpness_checkpoint", "figure"):
        assert rule in out, (rule, out[-3000:])


def test_bn_fallback_config_covers_experiments_4_to_6_with_bn():
    cfg = C.load_config(REPO / "config" / "paper_bn.yaml")
    assert cfg["name"] != C.load_config(REPO / "config" / "config.yaml")["name"]   # its own results folder
    assert C.figure_names(cfg) == ["fig4_warmup", "fig5_freeze", "fig6_distill"]
    assert all(C.resolve_run(cfg, r)["model"]["batch_norm"] for r in C.run_names(cfg))


def test_data_source_names_the_folder_order_only_for_folder_sets(demo):
    # the prepare_data rule's params: unchanged for Fashion-MNIST (its caches and results are not re-run),
    # plus the stored order for folder sets (a class-sorted cache of an older closerlook re-runs the job)
    from closerlook import data

    assert C.data_source(demo) == {k: demo["data"].get(k) for k in ("name", "root", "download")}
    folder = copy.deepcopy(demo)
    folder["data"].update(name="cifar10_jpeg", root=None)
    assert C.data_source(folder) == {"name": "cifar10_jpeg", "root": None, "download": demo["data"].get("download"),
                                     "order": data.FOLDER_ORDER}


def test_run_spec_merges_defaults_shallowly(demo):
    adam = C.run_spec(demo, "adam", 0)
    assert adam["optimizer"] == {"name": "adam", "lr": 1.0e-3, "weight_decay": 0.0}  # no SGD momentum inherited
    assert adam["model"] == demo["defaults"]["model"]
    assert adam["seed"] == 0 and adam["name"] == "adam"
    assert "probe_size" not in adam["data"]


def test_distillation_teacher_resolves_to_its_checkpoint(demo):
    spec = C.run_spec(demo, "distilled", 1)
    assert spec["distill"]["teacher"] == "results/demo/runs/sgd/seed0/final.pt"
    assert spec["distill"]["temperature"] == demo["runs"]["distilled"]["distill"]["temperature"]
    cfg = copy.deepcopy(demo)
    del cfg["runs"]["distilled"]["distill"]["temperature"], cfg["runs"]["distilled"]["distill"]["alpha"]
    d = C.run_spec(cfg, "distilled", 1)["distill"]
    assert (d["temperature"], d["alpha"]) == (4.0, 0.9)  # PAPER.md's stated defaults


def test_pair_instances_seed_rules(demo):
    cfg = copy.deepcopy(demo)
    cfg["runs"]["sgdr"]["seeds"] = [0, 1]
    cfg["runs"]["sgd"]["seeds"] = [0, 1, 2]
    both = C.pair_instances(cfg, {"run": "sgd", "final": True}, {"run": "sgdr", "epoch": 3}, "k")
    assert sorted(both) == ["seed0", "seed1"]  # seeds the two runs share
    a, b = both["seed1"]
    assert (a.seed, a.tag, b.seed, b.tag) == (1, "final", 1, "epoch3")
    cross = C.pair_instances(cfg, {"run": "sgd", "final": True, "seed": 0}, {"run": "sgd", "final": True, "seed": 2}, "k")
    assert list(cross) == ["s0-s2"]
    one = C.pair_instances(cfg, {"run": "sgd", "final": True, "seed": 2}, {"run": "sgdr", "epoch": 1}, "k")
    assert list(one) == ["seed2"] and one["seed2"][1].seed == 2


def test_endpoint_needs_exactly_one_of_epoch_iteration_final():
    with pytest.raises(ConfigError, match="curves.x.start"):
        C.endpoint_tag({"run": "a", "epoch": 3, "final": True}, "curves.x.start")
    assert C.endpoint_tag({"run": "a", "iteration": 0}, "k") == "iter0"  # iteration 0 is valid


def test_figure_layouts_list_only_result_files(demo):
    for fig in C.figure_names(demo):
        layout, files = C.figure_layout(demo, fig)
        assert files and all(f.startswith("results/demo/") for f in files), (fig, files)
        assert not any(f.endswith(".pt") for f in files), (fig, files)  # specs are not inputs


def test_paper_config_plans_the_full_study():
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"),
                        "-d", str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for rule in ("train_sgdr", "train_lb_warmup", "train_distilled", "fit_curve", "plane", "extract_activations",
                 "similarity", "figure", "claims"):
        assert rule in out, (rule, out[-3000:])


def test_workflow_lint_is_clean():
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO),
                        "--configfile", str(REPO / "config" / "tiny.yaml")], capture_output=True, text=True, timeout=600)
    assert "Congratulations, your workflow is in a good condition" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_cli_values_are_read_as_yaml_like_a_config_file():
    """snakemake --config 'data={train_per_class: 5, root: null}' arrives as strings (BaseLoader)."""
    from closerlook.config import retype_cli_values

    cfg = {"name": "x", "data": {"name": "cifar10", "train_per_class": "5", "root": "null", "cache_dir": "a b"},
           "defaults": {"model": {"name": "small_cnn", "width": "0.25"}, "seeds": ["0", "1"]}, "keep": "7"}
    given = {"data": {"train_per_class": "5", "root": "null", "cache_dir": "a b"},
             "defaults": {"model": {"width": "0.25"}, "seeds": ["0", "1"]}}
    retype_cli_values(cfg, given)
    assert cfg["data"] == {"name": "cifar10", "train_per_class": 5, "root": None, "cache_dir": "a b"}
    assert cfg["defaults"] == {"model": {"name": "small_cnn", "width": 0.25}, "seeds": [0, 1]}
    assert cfg["keep"] == "7"  # not given on the command line: untouched


def test_paper_sgdr_consumers_name_a_cycle_end():
    """config.yaml trains SGDR for the paper's 200 epochs, which ends mid-cycle (cycles end at 10,
    30, 70, 150, 310): a curve or plane that took its `final` checkpoint would take a model at lr
    ~0.039, not a converged one. Every SGDR curve end is an explicit epoch at a cycle end."""
    from closerlook.schedules import sgdr_cycle_ends
    cfg = C.load_config(REPO / "config" / "config.yaml")
    sgdr = C.resolve_run(cfg, "sgdr")
    ends = sgdr_cycle_ends(sgdr["schedule"], sgdr["epochs"])
    assert ends == [10, 30, 70, 150] and sgdr["epochs"] not in ends
    for name, c in cfg["curves"].items():
        for side in ("start", "end"):
            ep = c[side]
            if ep["run"] == "sgdr":
                assert not ep.get("final") and ep.get("epoch") in ends, (name, side, ep)
    for plane in cfg["planes"].values():
        assert plane["project"]["epochs"][-1] in ends


# ---------------------------------------------------------------- issue 23.6: configs state what differs

def _restated_defaults(path: Path) -> list[str]:
    """Top-level keys of a config's default-carrying blocks whose value equals the library's default and whose
    line carries no reason: no comment on the line, none on the line above (a comment block introducing it)."""
    import yaml

    from closerlook import defaults as D
    from closerlook.config.settings import BLOCKS
    from closerlook.verdicts import DEFAULT_RULES

    from closerlook.config.resolve import _REQUIRED   # a run must state these: not defaults

    run_defaults = {k: v for k, v in D.DEFAULTS.items() if k not in _REQUIRED}
    owners = {"curve_defaults": BLOCKS["curves"], "defaults": [run_defaults], "controls": [D.CONTROL_DEFAULTS],
              "claims": [DEFAULT_RULES], **{b: BLOCKS[b] for b in ("activations", "lenses", "sharpness", "similarity",
                                                                  "align", "ensembles")}}
    text = path.read_text().splitlines()
    cfg = yaml.safe_load("\n".join(text))
    bad = []
    for block, layers in owners.items():
        own, base = cfg.get(block), {k: v for layer in layers for k, v in (layer or {}).items()}
        if not isinstance(own, dict):
            continue
        start = next(i for i, line in enumerate(text) if line.startswith(f"{block}:"))
        for key, value in own.items():
            if key not in base or base[key] != value:
                continue
            i = next(j for j in range(start + 1, len(text)) if text[j].startswith(f"  {key}:"))
            above = text[i - 1].strip()
            if "#" not in text[i] and not above.startswith("#"):
                bad.append(f"{path.name}: {block}.{key} restates the default {value!r} without a reason")
    return bad


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_configs_state_only_what_differs_from_the_defaults(name):
    """Issue 23.6: a config states only what differs from the library's defaults; a restated default carries its
    reason (a comment on its line or just above it), as the claims blocks' thresholds fixed in advance do."""
    assert _restated_defaults(REPO / "config" / name) == []


def test_a_restated_default_without_a_reason_is_found(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("similarity:\n  chance: true\n  chance_shuffles: 20   # K: p-values >= 1/21\n")
    assert _restated_defaults(p) == ["c.yaml: similarity.chance restates the default True without a reason"]
