"""Bad configurations are rejected before any job starts, with the key and the problem named.

Level (a): ``closerlook.config.validate_config`` / ``load_yaml`` raise ConfigError.
Level (b): the real ``snakemake -n`` exits non-zero, names the key, and runs nothing.
"""
import copy
import textwrap

import pytest

from closerlook import config as C
from closerlook.io import ConfigError

from reliability_helpers import REPO, run_snakemake, write_yaml


def _set(path, value):
    """A mutation that sets cfg[path...] = value (creating nothing: the path must exist up to its parent)."""
    def f(cfg):
        cur = cfg
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    return f


def _teacher_cycle(cfg):
    # sgd (seeds 0, 1) learns from distilled seed 1, which learns from sgd seed 0: a cycle.
    cfg["runs"]["sgd"]["distill"] = {"teacher": {"run": "distilled", "seed": 1, "final": True}}


def _cca_other_arch(cfg):
    # the student of distill-distilled gets a wider network: diagonal per-layer CCA is meaningless
    cfg["runs"]["distilled"]["model"] = {"name": "small_cnn", "batch_norm": False, "init": "paper", "width": 0.5}


def _skip_vs_plain(cfg):
    # G-A from a ResNet-18 to the plain net (skip: false): the shortcut convs exist on one side only
    cfg["defaults"]["model"] = {"name": "resnet18", "width": 0.125}
    cfg["runs"]["lb_warmup"]["model"] = {"name": "resnet18", "width": 0.125, "skip": False}


# id -> (mutation, text the message must contain (the key), text describing the problem)
CASES = {
    "unknown_model": (_set(["defaults", "model", "name"], "vgg99"), "model.name", "unknown model"),
    "unknown_dataset": (_set(["data", "name"], "mnist3"), "data.name", "mnist3"),
    "unknown_schedule": (_set(["runs", "sgdr", "schedule", "name"], "cosine"), "runs.sgdr.schedule.name", "cosine"),
    "negative_lr": (_set(["defaults", "optimizer", "lr"], -0.1), "defaults.optimizer.lr", "minimum"),
    "zero_lr": (_set(["runs", "sgd", "optimizer"], {"name": "sgd", "lr": 0}), "runs.sgd.optimizer.lr", "minimum"),
    "checkpoint_epoch_beyond_run": (_set(["runs", "sgd", "checkpoints", "epochs"], [1, 5]),
                                    "runs.sgd.checkpoints.epochs", "beyond"),
    "checkpoint_iteration_beyond_run": (_set(["runs", "sgd", "checkpoints", "iterations"], [0, 1000]),
                                        "checkpoints.iterations", "beyond the run's 18 iterations"),
    "curve_names_unsaved_checkpoint": (_set(["curves", "sgdr-w1-w3", "end", "epoch"], 4),
                                       "curves.sgdr-w1-w3.end", "saves no checkpoint at epoch 4"),
    "curve_names_unknown_run": (_set(["curves", "G-A", "start", "run"], "ghost"), "curves.G-A.start.run", "ghost"),
    "curve_names_missing_seed": (_set(["curves", "G-A", "start", "seed"], 7), "curves.G-A.start.seed", "no seed 7"),
    "cca_between_architectures": (_cca_other_arch, "similarity.comparisons.distill-distilled", "different architectures"),
    "epochs_is_a_string": (_set(["defaults", "epochs"], "three"), "defaults.epochs", "not of type 'integer'"),
    "lr_is_a_list": (_set(["defaults", "optimizer", "lr"], [0.1]), "defaults.optimizer.lr", "not of type 'number'"),
    "unknown_top_level_key": (_set(["learning_rate"], 0.1), "<top level>", "'learning_rate'"),
    "unknown_run_key": (_set(["runs", "sgd", "lrate"], 0.1), "runs.sgd", "'lrate'"),
    "unknown_curve_key": (_set(["curves", "G-A", "bends"], 3), "curves.G-A", "'bends'"),
    "empty_seed_list": (_set(["runs", "sgd", "seeds"], []), "runs.sgd.seeds", "non-empty"),
    "run_name_with_space": (_set(["runs", "my run"], {}), "runs", "'my run'"),
    "run_name_with_quote": (_set(["runs", "x'y"], {}), "runs", "x'y"),
    "run_name_with_semicolon": (_set(["runs", "x;rm -rf ~"], {}), "runs", "x;rm -rf ~"),
    "config_name_with_path": (_set(["name"], "../etc"), "config key name", "../etc"),
    "teacher_does_not_exist": (_set(["runs", "distilled", "distill", "teacher", "run"], "nope"),
                               "runs.distilled.distill.teacher.run", "no run named 'nope'"),
    "teacher_is_itself": (_set(["runs", "distilled", "distill", "teacher"], {"run": "distilled", "seed": 1, "final": True}),
                          "runs.distilled.distill.teacher", "own teacher"),
    "teacher_cycle": (_teacher_cycle, "distill.teacher", "cycle"),
    "alpha_above_one": (_set(["runs", "distilled", "distill", "alpha"], 1.5), "runs.distilled.distill.alpha", "maximum"),
    "alpha_negative": (_set(["runs", "distilled", "distill", "alpha"], -0.1), "runs.distilled.distill.alpha", "minimum"),
    "temperature_zero": (_set(["runs", "distilled", "distill", "temperature"], 0), "runs.distilled.distill.temperature",
                         "minimum"),
    "temperature_negative": (_set(["runs", "distilled", "distill", "temperature"], -2.0),
                             "runs.distilled.distill.temperature", "minimum"),
    "batch_not_divisible_by_micro_batch": (_set(["runs", "sgd", "micro_batch_size"], 7), "micro_batch_size",
                                           "not divisible"),
    "batch_larger_than_data": (_set(["runs", "sgd", "batch_size"], 100000), "batch_size", "larger than the training set"),
    "warmup_negative": (_set(["runs", "lb_warmup", "warmup", "iterations"], -1), "runs.lb_warmup.warmup.iterations",
                        "minimum"),
    "freeze_unknown_group": (_set(["runs", "lb_freeze", "freeze", "groups"], ["nonexistent"]), "freeze.groups",
                             "nonexistent"),
    "figure_names_unknown_curve": (_set(["figures", "fig1_robustness", "curves"], ["nope"]),
                                   "figures.fig1_robustness.curves", "no curve named 'nope'"),
    "figure_names_unknown_comparison": (_set(["figures", "fig6_distill", "comparisons", "x"], "nope"),
                                        "figures.fig6_distill.comparisons", "no similarity comparison named 'nope'"),
    "figure_names_unknown_plane": (_set(["figures", "fig3_plane", "plane"], "nope"), "figures.fig3_plane.plane",
                                   "no plane named 'nope'"),
    "plane_names_unknown_curve": (_set(["planes", "sgdr", "curve"], "nope"), "planes.sgdr.curve", "no curve named 'nope'"),
    "plane_projects_unsaved_checkpoint": (_set(["planes", "sgdr", "project", "epochs"], [7]), "planes.sgdr.project",
                                          "saves no checkpoint at epoch 7"),
    "similarity_measure_unknown": (_set(["similarity", "measures"], ["cca_mean", "bogus"]), "similarity.measures[1]",
                                   "bogus"),
    "figure_measure_not_computed": (_set(["figures", "fig4_warmup", "measure"], "svcca"), "figures.fig4_warmup.measure",
                                    "not computed"),
    "comparison_unsaved_checkpoint": (_set(["similarity", "comparisons", "warmup-lb_warmup", "b", "iteration"], 5),
                                      "similarity.comparisons.warmup-lb_warmup.b", "saves no checkpoint at iteration 5"),
    "endpoint_two_kinds": (_set(["curves", "G-A", "start", "epoch"], 1), "curves.G-A.start", "exactly one of"),
    "curve_start_equals_end": (_set(["curves", "G-A", "end"], {"run": "sgd", "final": True}), "curves.G-A",
                               "same checkpoint"),
    "device_unknown": (_set(["defaults", "device"], "tpu"), "defaults.device", "tpu"),
    # models and data from outside (closerlook.factories): checked by importing / building on the meta device
    "factory_unimportable": (_set(["defaults", "model"], {"name": "no_such_package_xyz:make"}),
                             "runs.sgd: model.name", "cannot import module 'no_such_package_xyz'"),
    "factory_returns_no_module": (_set(["defaults", "model"], {"name": "os:getcwd"}), "runs.sgd: model.name",
                                  "returned a str, not a torch.nn.Module"),
    "factory_bad_layer_name": (_set(["defaults", "model"], {"name": "torchvision:resnet18", "adapt": "io",
                                                            "analysis_layers": ["layer9"]}),
                               "model.analysis_layers", "'layer9' matches no module of this model; its modules: conv1"),
    "factory_bad_group_name": (_set(["defaults", "model"], {"name": "torchvision:resnet18", "adapt": "io",
                                                            "groups": {"classifier": ["head"]}}),
                               "model.groups.classifier", "'head' matches no module"),
    "factory_builtin_only_key": (_set(["defaults", "model"], {"name": "torchvision:resnet18", "adapt": "io",
                                                              "width": 0.5}), "model.width", "built-in-only key"),
    "factory_wrong_logits": (_set(["defaults", "model"], {"name": "torchvision:resnet18", "adapt": "none",
                                                          "kwargs": {"num_classes": 10}}), "runs.sgd: model",
                             "forward pass on one 1x28x28 image failed"),
    "builtin_bad_layer_name": (_set(["defaults", "model", "analysis_layers"], ["features.99"]),
                               "model.analysis_layers", "'features.99' matches no module"),
    "skip_on_a_vgg": (_set(["defaults", "model", "skip"], False), "model.skip", "only resnet18"),
    "dataset_unknown_torchvision_class": (_set(["data", "name"], "torchvision:NoSuchSet"), "data.name",
                                          "torchvision.datasets has no class 'NoSuchSet'"),
    "dataset_torchvision_without_root_convention": (_set(["data", "name"], "torchvision:FakeData"), "data.name",
                                                    "does not follow the (root, train"),
    "dataset_name_malformed": (_set(["data", "name"], "torchvision:../x"), "data.name", "torchvision:../x"),
    "curve_between_skip_and_plain": (_skip_vs_plain, "curves.G-A",
                                     "(sgd: resnet18 width 0.125, lb_warmup: resnet18 width 0.125 without skip connections)"),
    "data_root_not_a_string": (_set(["data", "root"], 5), "data.root", "not of type"),
    "claims_fraction_above_one": (_set(["claims", "curve_excess_frac"], 1.5), "claims.curve_excess_frac",
                                  "greater than the maximum"),
    "claims_old_rule_name": (_set(["claims", "plane_high_loss_factor"], 2.0), "claims", "plane_high_loss_factor"),
    "claims_min_pairs_zero": (_set(["claims", "min_pairs"], 0), "claims.min_pairs", "less than the minimum"),
    "chance_shuffles_zero": (_set(["similarity", "chance_shuffles"], 0), "similarity.chance_shuffles",
                             "less than the minimum"),
    "subsample_size_one": (_set(["similarity", "subsamples", "size"], 1), "similarity.subsamples.size", "minimum"),
    "figure_baseline_unknown": (_set(["figures", "fig4_warmup", "baseline"], "nope"), "figures.fig4_warmup.baseline",
                                "no similarity comparison named 'nope'"),
}


def test_the_base_config_is_valid(tiny_cfg):
    C.validate_config(copy.deepcopy(tiny_cfg))


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_config_rejects(case, tiny_cfg):
    mutate, key, problem = CASES[case]
    cfg = copy.deepcopy(tiny_cfg)
    mutate(cfg)
    with pytest.raises(ConfigError) as ei:
        C.validate_config(cfg)
    msg = str(ei.value)
    assert key in msg, f"key {key!r} not named in: {msg}"
    assert problem in msg, f"problem {problem!r} not stated in: {msg}"


DUPLICATE_RUN = textwrap.dedent("""\
    name: dup
    data: {name: fashion_mnist}
    runs:
      sgd: {epochs: 1, batch_size: 50}
      sgdr: {epochs: 2, batch_size: 50}
      sgd: {epochs: 3, batch_size: 50}
    """)


def test_load_yaml_refuses_duplicate_keys_naming_key_and_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(DUPLICATE_RUN)
    with pytest.raises(ConfigError) as ei:
        C.load_config(p)
    msg = str(ei.value)
    assert str(p) in msg and "duplicate key 'sgd'" in msg and "line 6" in msg and "line 4" in msg


def test_load_yaml_duplicate_keys_nested_and_merge_keys(tmp_path):
    p = tmp_path / "nested.yaml"
    p.write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(ConfigError, match="duplicate key 'b'"):
        C.load_yaml(p)
    # YAML merge keys (<<) override on purpose: not a duplicate
    ok = tmp_path / "merge.yaml"
    ok.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert C.load_yaml(ok)["other"] == {"x": 1, "y": 3}
    # the project's own configs have no duplicate keys
    for f in (REPO / "config").glob("*.yaml"):
        C.load_yaml(f)


def test_python_object_tag_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\ndata: {{name: fashion_mnist}}\nruns: {{a: {{}}}}\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(p)
    assert str(p) in str(ei.value) and "python/object/apply" in str(ei.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- through the real snakemake

# a handful of dry runs, covering the schema and the cross-references (closerlook.config.validate_config);
# a model that only building it shows to be bad is refused by the first job, check_models (below)
SNAKEMAKE_CASES = ["checkpoint_iteration_beyond_run", "teacher_cycle", "run_name_with_semicolon",
                   "epochs_is_a_string"]


def _no_job_ran(wd):
    assert not (wd / "results").exists(), "a job ran (results/ exists)"
    assert not (wd / "resources").exists(), "a job ran (resources/ exists)"


@pytest.mark.parametrize("case", SNAKEMAKE_CASES)
def test_snakemake_dry_run_rejects(case, tiny_cfg, tmp_path):
    mutate, key, problem = CASES[case]
    cfg = copy.deepcopy(tiny_cfg)
    mutate(cfg)
    cf = write_yaml(tmp_path / "bad.yaml", cfg)
    r = run_snakemake(tmp_path, cf, "-n", "--cores", "1", timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    # snakemake's own schema check (first) prints the key as instance['defaults']['epochs']
    snake_key = "".join(f"['{k}']" for k in key.split("."))
    assert key in out or snake_key in out, out[-3000:]
    assert "invalid configuration" in out or "Error validating config file" in out, out[-3000:]
    _no_job_ran(tmp_path)


def test_check_models_job_refuses_a_bad_model_before_training(tiny_cfg, tmp_path):
    """Planning builds no model (it imports no torch, issue 26.1): a layer name matching no module plans, and the
    first job, check_models, refuses it naming the key, before any training job (they all wait for it)."""
    mutate, key, problem = CASES["factory_bad_layer_name"]
    cfg = copy.deepcopy(tiny_cfg)
    mutate(cfg)
    cf = write_yaml(tmp_path / "bad.yaml", cfg)
    plan = run_snakemake(tmp_path, cf, "-n", "--cores", "1", timeout=180)
    assert plan.returncode == 0 and "check_models" in plan.stdout + plan.stderr, (plan.stdout + plan.stderr)[-3000:]
    r = run_snakemake(tmp_path, cf, "--cores", "1", "check_models", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "config key runs." in out and key in out and problem in out, out[-3000:]
    assert not list(tmp_path.glob("results/*/runs")), "a training job ran"


def test_snakemake_rejects_duplicate_run_names(tiny_cfg, tmp_path):
    text = (REPO / "config" / "tiny.yaml").read_text()
    assert text.index("\n  sgdr:\n") < text.index("\nplanes:")
    cf = tmp_path / "dup.yaml"
    cf.write_text(text.replace("\n  sgdr:\n", "\n  sgd:\n", 1))   # two runs named sgd
    r = run_snakemake(tmp_path, cf, "-n", "--cores", "1", timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "duplicate key 'sgd'" in out and str(cf) in out, out[-3000:]
    _no_job_ran(tmp_path)
