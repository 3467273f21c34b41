"""The benchmark's guards: rows that would take hours on this CPU are skipped, with the reason."""
import re
import time

from bench import train_bench
from bench.run import table


def _loop(step_s: float):
    while True:
        time.sleep(step_s)
        yield 1


def test_a_variant_far_slower_than_fp32_is_dropped_with_its_reason():
    # 0.2 s vs ~0 s per step: a factor of hundreds against SLOW_FACTOR = 3, robust to load
    loops = {"plain": _loop(0.0), "engine": _loop(0.001), "engine_cl": _loop(0.001), "engine_bf16": _loop(0.2)}
    out: dict = {}
    train_bench._drop_slow(loops, out, "m")
    assert set(loops) == {"plain", "engine", "engine_cl"}
    assert "train_ratio_m_bf16" in out["skipped"] and "fp32 engine" in out["skipped"]["train_ratio_m_bf16"]


def test_bf16_probe_answers_with_a_reason():
    ok, why = train_bench.bf16_support()
    assert isinstance(ok, bool) and why


def test_the_table_names_skipped_rows_and_why():
    res = {"train_ratio_small_cnn": 1.1, "skipped": {"train_ratio_small_cnn_bf16": "no native bf16"}}
    text = table(res)
    row = next(line for line in text.splitlines() if "bf16 autocast" in line and "small_cnn" in line)
    assert "skipped" in row
    assert "train_ratio_small_cnn_bf16: no native bf16" in text


def test_the_table_is_one_markdown_table_with_the_machine():
    res = {"cpus": 2, "cpu_model": "AMD EPYC 9R14", "torch": "2.14.1", "cca_max_abs_diff_f64": 1e-12,
           "train_ratio_small_cnn": 1.3, "demo_error": "rc=1: boom", "skipped": {"demo_wall_s": "--skip-demo"}}
    text = table(res)
    assert text.splitlines()[0].startswith("**Machine:** AMD EPYC 9R14, 2 logical cores")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[1].startswith("|---") and all(line.endswith("|") for line in rows)
    ncols = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
    assert len(ncols) == 1, "every row has the same number of cells (| inside a cell escaped)"
    assert "- demo: failed: rc=1: boom" in text and "- demo_wall_s: --skip-demo" in text


def test_similarity_targets_in_step_and_paired_medians():
    """bench.run's similarity targets are bench.similarity_bench.TARGETS (issue 26.5), and a ratio is the
    median over >= 5 alternating pairs."""
    from bench import run, similarity_bench as SB

    for k, v in SB.TARGETS.items():
        assert run.TARGETS[k] == v, k
    calls = []
    outs, times, ratios = SB._paired(lambda: calls.append("ref") or 1, lambda: calls.append("ours") or 2)
    assert outs == [1, 2] and len(calls) == 2 * SB.MIN_PAIRS
    assert calls[:4] == ["ref", "ours", "ours", "ref"]   # alternating order
    assert len(times) == 2 and len(ratios) == 1


def test_trace_bench_registers_its_rows_and_refuses_an_untraced_run():
    """bench.trace_bench (issue 27.1) adds its rows to the table; a run without sharpness_trace is named."""
    import pytest

    from bench import trace_bench

    from bench import run

    rows, targets = [], {}
    trace_bench.register(rows, targets)
    assert [r[1] for r in rows] == [r[1] for r in trace_bench.ROWS] and targets == {}
    trace_bench.register(run.ROWS, run.TARGETS)   # what bench.run does; idempotent
    assert "| explanations | trace CPU-s / untraced run CPU-s | 1.4 |" in table({"trace_over_train": 1.4})
    with pytest.raises(ValueError, match=r"runs\.sgd has no sharpness_trace"):
        trace_bench.run(config="config/demo.yaml", name="sgd")


def _fake_scontrol(tmp_path, ping_rc: int):
    d = tmp_path / f"bin{ping_rc}"
    d.mkdir()
    # a real `scontrol` without a controller answers `ping` at once but waits on `show config`
    (d / "scontrol").write_text(f"#!/bin/sh\n[ \"$1\" = ping ] && exit {ping_rc}\nsleep 30\n")
    (d / "scontrol").chmod(0o755)
    return d


def test_snakemake_env_shadows_scontrol_only_when_no_controller_answers(tmp_path, monkeypatch):
    import os
    import shutil
    import subprocess

    from bench import snakemake_env
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path, 0)}{os.pathsep}{os.environ['PATH']}")
    assert snakemake_env()["PATH"] == os.environ["PATH"]      # controller up: nothing changes
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path, 1)}{os.pathsep}{os.environ['PATH']}")
    env = snakemake_env()
    stub = shutil.which("scontrol", path=env["PATH"])
    assert stub and not stub.startswith(str(tmp_path))
    p = subprocess.run([stub, "show", "config"], env=env, capture_output=True, timeout=10)
    assert p.returncode != 0 and b"no SLURM controller" in p.stderr   # the plugin's failure, without its wait
