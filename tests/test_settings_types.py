"""Typed settings (closerlook.settings_types): one merge with the defaults, checked on construction,
read-only, and still recorded by Snakemake's rerun-on-params-change check."""
import copy
import pickle

import pytest

from closerlook import config as C
from closerlook import defaults as D
from closerlook.io import ConfigError
from closerlook.settings_types import (AutonebSettings, ControlSettings, CurveSettings, EnsembleSettings, PlaneSettings,
                                       SimilaritySettings, StopRule)


def test_of_is_the_one_merge_and_a_resolved_object_passes_through():
    s = CurveSettings.of({"epochs": 7}, key="curves.c")
    assert s.epochs == s["epochs"] == 7
    assert {k: s[k] for k in D.FIT_DEFAULTS if k != "epochs"} == {k: v for k, v in D.FIT_DEFAULTS.items() if k != "epochs"}
    assert s["points"] == D.PATH_DEFAULTS["points"]
    assert CurveSettings.of(s) is s
    assert s.stop_rule() == {**D.STOP_DEFAULTS, **D.FIT_DEFAULTS["stop"]}
    assert CurveSettings.of({"stop": None}).stop_rule() is None


@pytest.mark.parametrize("cls, bad, message", [
    (CurveSettings, {"epoch": 3}, r"curves\.c: unknown key\(s\) epoch"),
    (CurveSettings, {"lr": 0}, r"curves\.c\.lr: must be a number > 0, got 0"),
    (CurveSettings, {"t_sampling": "sobol"}, r"curves\.c\.t_sampling: must be one of uniform, stratified"),
    (CurveSettings, {"num_bends": True}, r"curves\.c\.num_bends: must be an integer >= 3"),
    (CurveSettings, {"stop": {"min_delta": -1}}, r"curves\.c\.stop\.min_delta: must be a number >= 0"),
    (CurveSettings, {"stop": {"patience": 2}}, r"curves\.c\.stop\.min_delta: missing"),
    (CurveSettings, {"checkpoint_epochs": [1, "2"]}, r"checkpoint_epochs: must be a list of items, each an integer >= 0"),
    (PlaneSettings, {"grid": [21]}, r"planes\.c\.grid: must be a list of 2 items"),
    (SimilaritySettings, {"measures": ["cka"]}, r"measures: must be a list of 1\+ items, each one of cca_mean"),
    (SimilaritySettings, {"images_per_dim": 0.5}, r"images_per_dim: must be null or a number >= 1"),
    (EnsembleSettings, {"fge": {"lr_max": -1}}, r"ensembles\.c\.fge: must be \{lr_max: null or a number > 0"),
    (ControlSettings, {"level": 1.0}, r"level: must be a number > 0 and < 1, got 1.0"),
    (AutonebSettings, {"insert_tol": float("nan")}, r"insert_tol: must be a number >= 0"),
])
def test_a_bad_value_is_refused_on_construction_naming_its_key(cls, bad, message):
    with pytest.raises(ConfigError, match=message):
        cls.of(bad, key=f"{cls.BLOCK}.c")


def test_missing_keys_mean_the_defaults_were_skipped():
    with pytest.raises(ConfigError, match=r"curves\.kind, curves\.num_bends, .*: missing .*CurveSettings\.of"):
        CurveSettings({"epochs": 3})


def test_read_only_and_replace_checks_again():
    s = StopRule.of({"min_delta": 0.01})
    for mutate in (lambda: s.__setitem__("patience", 1), lambda: s.update(patience=1), lambda: s.pop("ts"),
                   lambda: s.setdefault("x", 1), lambda: s.clear()):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert s.replace(patience=5)["patience"] == 5 and s["patience"] == D.STOP_DEFAULTS["patience"]
    with pytest.raises(ConfigError, match=r"stop\.patience"):
        s.replace(patience=0)
    with pytest.raises(AttributeError, match="no setting 'patiense'"):
        s.patiense


def test_pickle_and_copies_keep_the_type_and_the_values():
    s = EnsembleSettings.of({"fge": {"lr_max": 0.1}, "base": {"run": "r"}})
    assert s["fge"] == {"lr_max": 0.1, "lr_min": None}            # nested sub-block merged key by key
    for t in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert type(t) is EnsembleSettings and t == s


def test_snakemake_records_them_as_it_recorded_the_plain_dicts():
    # Snakemake's params check records builtin containers by repr and nothing else
    from snakemake.persistence import UNREPRESENTABLE, PersistenceBase
    s = SimilaritySettings.of({"chance": False})
    serialise = PersistenceBase._serialize_param_builtin
    assert serialise(None, s) == repr(C.merged("similarity", {"chance": False}))    # unchanged: no rerun
    assert serialise(None, object()) is UNREPRESENTABLE                               # what any other type gets


def test_the_config_functions_return_the_typed_objects(tmp_path):
    cfg = C.load_config("config/demo.yaml")
    name = next(iter(cfg["curves"]))
    assert isinstance(C.curve_settings(cfg, name), CurveSettings)
    assert C.curve_settings(cfg, name) == C.merged("curves", cfg.get("curve_defaults"), cfg["curves"][name])
    assert isinstance(C.similarity_settings(cfg), SimilaritySettings)
    ctl = C.control_settings(cfg)
    assert isinstance(ctl, ControlSettings) and ctl["images_per_dim"] == C.similarity_settings(cfg)["images_per_dim"]


def test_the_choice_lists_have_one_owner_the_library_and_schema_agree_with():
    import yaml

    from closerlook import similarity
    schema = yaml.safe_load((C.REPO_ROOT / "workflow/schemas/config.schema.yaml").read_text())
    curve, props = schema["$defs"]["curve"]["properties"], schema["properties"]
    assert set(D.SIMILARITY_MEASURES) == set(similarity.MEASURES) == set(props["similarity"]["properties"]["measures"]["items"]["enum"])
    assert set(curve["kind"]["enum"]) == set(D.CURVE_KINDS) - {"line"}
    assert curve["t_sampling"]["enum"] == list(D.T_SAMPLINGS) and curve["schedule"]["enum"] == list(D.FIT_SCHEDULES)
    assert props["activations"]["properties"]["mode"]["enum"] == list(D.CAPTURE_MODES)
    assert props["align"]["properties"]["method"]["enum"] == list(D.ALIGN_METHODS)
    assert props["lenses"]["properties"]["center"]["enum"] == list(D.LENS_CENTERS)
