"""Planning without torch (issue 26.1): the Snakefile and what it imports stay torch-free; the model
checks that need torch run in the first job, ``check_models``, which every training job waits for."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest

from closerlook import config as C
from closerlook.io import ConfigError

REPO = Path(__file__).resolve().parents[1]
# torch (and torchvision) made unimportable: `import torch` raises ImportError in this process
NO_TORCH = "import sys; sys.modules.update(torch=None, torchvision=None); "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_settings_layer_imports_no_torch():
    """config, defaults, catalog and spec import neither torch nor scipy (planning imports them)."""
    r = _python("import sys; import closerlook.config, closerlook.defaults, closerlook.catalog, closerlook.spec; "
                "heavy = sorted(m for m in ('torch', 'torchvision', 'scipy', 'matplotlib', 'sklearn') if m in sys.modules); "
                "print(heavy); sys.exit(1 if heavy else 0)")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_dry_run_plans_with_torch_unimportable(name, tmp_path):
    """`snakemake -n` with torch made unimportable still plans the whole DAG, check_models first."""
    argv = ["snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"), "--configfile",
            str(REPO / "config" / name), "--directory", str(tmp_path)]
    r = _python(NO_TORCH + f"sys.argv = {argv!r}; from snakemake.cli import main; sys.exit(main())")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "check_models" in out and "train_" in out, out[-3000:]


def test_old_defaults_names_are_the_moved_objects():
    """The defaults moved to closerlook.defaults; the old names are the same objects (one owner each)."""
    from closerlook import activations, align, autoneb, curves, defaults, ensembles, landscape, lenses, sharpness, similarity, spec

    for mod, names in ((curves, ("FIT_DEFAULTS", "STOP_DEFAULTS")), (landscape, ("PATH_DEFAULTS", "PLANE_DEFAULTS")),
                       (similarity, ("COMPARISON_DEFAULTS",)), (sharpness, ("SHARPNESS_DEFAULTS",)),
                       (activations, ("CAPTURE_DEFAULTS",)), (lenses, ("LENS_DEFAULTS",)), (spec, ("DEFAULTS", "DISTILL_DEFAULTS")),
                       (align, ("ALIGN_DEFAULTS",)), (autoneb, ("AUTONEB_DEFAULTS",)), (ensembles, ("ENSEMBLE_DEFAULTS",))):
        for n in names:
            assert getattr(mod, n) is getattr(defaults, n), (mod.__name__, n)


def _demo_with_bad_freeze() -> dict:
    cfg = C.load_config(REPO / "config" / "demo.yaml")
    bad = copy.deepcopy(cfg)
    run = next(r for r, spec in bad["runs"].items() if (spec or {}).get("freeze"))
    bad["runs"][run]["freeze"]["groups"] = ["nonexistent"]
    return bad, run


def test_planning_leaves_the_model_build_to_check_models():
    """A freeze group matching no module is found only by building the model: planning (models=False) lets it
    through, check_models refuses it naming the run's key, as the full validation does."""
    bad, run = _demo_with_bad_freeze()
    C.validate_config(bad, models=False)
    with pytest.raises(ConfigError, match=rf"config key runs\.{run}: .*freeze\.groups"):
        C.check_models(bad)
    with pytest.raises(ConfigError, match=rf"config key runs\.{run}: .*freeze\.groups"):
        C.validate_config(bad)


def test_check_models_stage_writes_the_runs_checked(tmp_path):
    from closerlook import stages

    cfg = C.load_config(REPO / "config" / "demo.yaml")
    out = tmp_path / "checks" / "models.json"
    out.parent.mkdir()
    assert stages.check_models(cfg, str(out)) == list(cfg["runs"])
    assert out.exists()


def test_check_models_warns_of_layers_too_wide_for_their_images(tmp_path, capsys):
    """Issue 25.3: the model check names each layer the CCA family would see on < 5 images per compared
    dimension (cifar_lite's 256-wide FC layers: 1,000 / 256 = 3.9, 500 / 256 = 2.0), and stops once
    similarity.images_per_dim compares them in n // 5 directions or the probe set is wide enough."""
    import json

    from closerlook import stages

    cfg = C.load_config(REPO / "config" / "cifar_lite.yaml")
    cfg["similarity"]["images_per_dim"] = None
    out = tmp_path / "models.json"
    stages.check_models(cfg, str(out))
    warned = json.loads(out.read_text())["sample_size_warnings"]
    assert sorted(w.split(" of runs")[0] for w in warned) == ["layer fc1", "layer fc1", "layer fc2", "layer fc2"]
    assert any("1000 datapoints in the probe set give 3.9" in w for w in warned)
    assert any("500 datapoints in a subsample give 2.0" in w and "top 100 directions" in w for w in warned)
    assert "WARNING similarity sample size: layer fc1 of runs sgd, " in capsys.readouterr().err
    cfg["similarity"]["images_per_dim"] = 5
    assert C.sample_size_warnings(cfg) == []
    cfg["similarity"]["images_per_dim"] = None
    cfg["data"]["probe_size"], cfg["similarity"]["subsamples"] = 1280, {"count": 0}
    assert C.sample_size_warnings(cfg) == []        # 1,280 = 5 x 256: wide enough in full


def test_training_waits_for_check_models_without_retraining_on_a_recheck():
    """Every train rule takes the check's output as an ancient input: ordered after it, never rerun by it."""
    text = (REPO / "workflow" / "rules" / "train.smk").read_text()
    assert "rule check_models:" in text and "models=ancient(P.models_check(R))" in text


def test_plan_bench_reference_has_the_issues_shape():
    """The reference Snakefile: 12 rules (`all` among them) and exactly as many jobs as asked for."""
    import ast

    from bench.plan_bench import trivial_snakefile

    text = trivial_snakefile(92)
    counts = ast.literal_eval(text.splitlines()[0].split("=", 1)[1].strip())
    assert text.count("\nrule ") + text.startswith("rule ") == 12 and sum(counts) + 1 == 92
