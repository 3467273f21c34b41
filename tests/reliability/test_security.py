"""Security: no code runs from a file we load, no shell command is built from config values."""
import ast
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from closerlook import activations, io
from closerlook.train import train_run

from reliability_helpers import REPO, tiny_spec

SOURCE_DIRS = [REPO / "src", REPO / "scripts"]


def _py_files():
    files = [p for d in SOURCE_DIRS for p in d.rglob("*.py")]
    assert len(files) > 10
    return files


def _is_torch_load(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
            and f.value.id == "torch")


def test_every_torch_load_uses_weights_only_true():
    calls = []
    for path in _py_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_torch_load(node):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
    assert calls, "no torch.load call found: the check would be vacuous"
    assert all(ok for _, ok in calls), [c for c, ok in calls if not ok]
    # no other way in: no torch.load aliased, no pickle/np.load with pickles enabled
    for path in _py_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        assert not re.search(r"from\s+torch\s+import\s+[^\n]*\bload\b", text), rel
        assert not re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", text), rel
        assert "allow_pickle=True" not in text, rel
        assert "yaml.load(" not in text.replace("yaml.load(text, Loader=_UniqueKeySafeLoader)", ""), rel
        assert "yaml.unsafe_load" not in text and "FullLoader" not in text and "UnsafeLoader" not in text, rel


class _Evil:
    """Unpickling this creates the marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "final.pt"
    torch.save({"format": io.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(2)}, "meta": {"x": _Evil(marker)}}, p)
    with pytest.raises(io.CheckpointError) as ei:
        io.load_checkpoint(p)
    assert str(p) in str(ei.value) and "refused" in str(ei.value)
    assert not marker.exists()
    # control: the unsafe loader would indeed run it (so the test can fail)
    torch.load(p, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("factory, kwargs", [("os:system", {"command": "touch MARKER"}),
                                             ("subprocess:call", {"args": ["touch", "MARKER"]})])
def test_checkpoint_naming_a_factory_the_config_does_not_name_runs_nothing(tmp_path, factory, kwargs):
    from closerlook import models, stages
    from closerlook.activations import CAPTURE_DEFAULTS
    from closerlook.train import load_teacher

    marker = tmp_path / "pwned"
    spec = {"name": factory, "kwargs": json.loads(json.dumps(kwargs).replace("MARKER", str(marker)))}
    p = tmp_path / "final.pt"
    dims = {"in_channels": 1, "num_classes": 10, "image_size": 28}
    io.save_checkpoint(p, {"w": torch.zeros(1)}, {"model": spec, "data": dict(dims, name="fashion_mnist"), "status": "ok"})
    data = {"name": "fashion_mnist"}
    allow = ["torchvision:resnet18"]  # the config names another factory
    rebuilds = {  # every place a stage rebuilds a network from a checkpoint's spec
        "model_from_checkpoint": lambda: models.model_from_checkpoint(io.load_checkpoint(p), str(p), allow=allow),
        "activations": lambda: stages.extract_activations(str(p), str(tmp_path / "acts"), CAPTURE_DEFAULTS, data, 10,
                                                          device="cpu", factories=allow),
        "curve path": lambda: stages.evaluate_path(str(p), str(p), str(tmp_path / "line.csv"), {}, data, device="cpu",
                                                   factories=allow),
        "curve fit": lambda: stages.fit_curve(str(p), str(p), str(tmp_path / "curve"), {}, data, device="cpu",
                                              factories=allow),
        "plane": lambda: stages.plane(str(p), str(p), str(p), str(tmp_path / "plane"), {}, data, device="cpu",
                                      factories=allow),
        "teacher": lambda: load_teacher(p, torch.device("cpu"), dims, allow),
    }
    for what, rebuild in rebuilds.items():
        with pytest.raises(io.CheckpointError) as ei:
            rebuild()
        assert str(ei.value).startswith(f"{p}: the checkpoint names the model factory {factory!r}"), (what, ei.value)
        assert not marker.exists(), what
    # control: a config that names the factory is trusted and the call does run (so this test can fail)
    with pytest.raises(io.ConfigError, match="returned a int, not a torch.nn.Module"):
        models.build_model(spec, **dims)
    assert marker.exists()


def test_crafted_resume_state_is_not_executed(fmnist_dir, data_cache, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": "closerlook-resume/1", "evil": _Evil(marker)}, out / "resume.pt")
    msgs = []
    res = train_run(tiny_spec(fmnist_dir, data_cache, epochs=1), out, progress=msgs.append)
    assert res["status"] == "ok" and not marker.exists()
    assert any("ignoring unreadable" in m and str(out / "resume.pt") in m for m in msgs), msgs


def test_crafted_activation_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    store = activations.save_store(tmp_path / "s", {"fc": np.zeros((4, 3), np.float32)})
    evil = np.empty((4, 3), dtype=object)
    evil[0, 0] = _Evil(marker)
    with open(store / "fc.npy", "wb") as fh:
        np.save(fh, evil, allow_pickle=True)
    with pytest.raises(io.CheckpointError) as ei:
        activations.load_store(store)
    assert str(store / "fc.npy") in str(ei.value)
    assert not marker.exists()


def test_crafted_data_cache_is_refused_and_rebuilt(fmnist_dir, tmp_path):
    from closerlook import data

    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    cache.mkdir()
    f = cache / "fashion_mnist-test.pt"
    torch.save({"format": "evil", "x": _Evil(marker)}, f)
    with pytest.warns(UserWarning) as rec:
        x, y, info = data.load_split("fashion_mnist", "test", root=fmnist_dir, cache_dir=cache)
    assert any(str(f) in str(w.message) and "refused" in str(w.message) for w in rec), [str(w.message) for w in rec]
    assert not marker.exists()
    assert x.shape[0] == y.shape[0] == 10000
    # the cache was replaced by a good one: the next load reads it without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x2, _, _ = data.load_split("fashion_mnist", "test", root=fmnist_dir, cache_dir=cache)
    assert torch.equal(x, x2)  # exact: uint8 data rebuilt from the same files


def test_run_spec_yaml_with_python_tag_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    r = subprocess.run([sys.executable, "-m", "closerlook.train", "--spec", str(spec), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(spec) in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- no shell built from config

def _rule_files():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    assert len(files) >= 8
    return files


def test_no_rule_builds_a_shell_command():
    """Rules use `script:`; a `shell:` or `run:` directive (or shell() call) would paste config values into a shell."""
    n_script = 0
    for f in _rule_files():
        text = f.read_text()
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        assert not re.search(r"^\s*shell\s*:", code, re.M), f"{f}: shell: directive"
        assert not re.search(r"^\s*run\s*:", code, re.M), f"{f}: run: directive"
        assert not re.search(r"\bshell\s*\(|os\.system|subprocess|os\.popen", code), f"{f}: shell call"
        n_script += len(re.findall(r"^\s*script\s*:", code, re.M))
    assert n_script >= 9
    # the scripts and the library never hand a string to a shell
    for path in _py_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        assert "shell=True" not in text and "os.system(" not in text and "os.popen(" not in text, rel


HOSTILE = ["x; touch pwned", "a b", "it's", 'say"hi"', "$(touch pwned)", "`id`", "../up", "a|b", "a&b", "-rf"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_run_names_are_rejected_by_the_schema(name, tiny_cfg):
    import copy

    from closerlook import config as C

    cfg = copy.deepcopy(tiny_cfg)
    cfg["runs"][name] = {}
    with pytest.raises(io.ConfigError, match="config key runs: name"):
        C.validate_config(cfg)


def test_paths_with_spaces_and_quotes_are_data(fmnist_dir, tmp_path, capsys):
    """A cache_dir / data root full of shell metacharacters is used as a path, nothing else is created."""
    weird = tmp_path / "my data 'q\" ;$(touch pwned) `touch pwned2` & x"
    root = tmp_path / "fm root 'with' \"quotes\""
    root.mkdir(parents=True)
    for f in Path(fmnist_dir).glob("*-ubyte.gz"):
        os.symlink(f, root / f.name)
    spec = tiny_spec(fmnist_dir, weird, epochs=1)
    spec["data"]["root"] = str(root)
    out = tmp_path / "run 'out' dir"
    assert train_run(spec, out, progress=None)["status"] == "ok"
    assert sorted(p.name for p in weird.iterdir()) == ["fashion_mnist-test.pt", "fashion_mnist-train.pt"]
    # and through the curves CLI, driven with an argument list (no shell)
    from closerlook import cli

    d = spec["data"]
    argv = ["evaluate", "--start", str(out / "iter0.pt"), "--end", str(out / "final.pt"),
            "--out", str(tmp_path / "line 'a'.csv"), "--points", "2", "--device", "cpu", "--quiet",
            "--data", d["name"], "--root", d["root"], "--cache-dir", d["cache_dir"],
            "--train-per-class", str(d["train_per_class"]), "--test-per-class", str(d["test_per_class"])]
    assert cli.curves_main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weird.name, root.name, out.name, "line 'a'.csv"])
    assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()
