"""The whole DAG through the real `snakemake` on config/tiny.yaml, and
incremental recomputation: what reruns after each kind of change.

One module-scoped run (a few minutes on 2 cores), then edits of the config or
the results, each followed by a real rerun; the files whose modification time
changed are exactly the ones the change should touch.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from testkit import write_tiny

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

FIGS = ["fig1_robustness", "fig2_sgdr", "fig3_plane", "fig4_warmup", "fig5_freeze", "fig6_distill"]


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "tiny.yaml"), "--cores", "2", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def outputs(workdir: Path) -> dict[str, float]:
    """mtime of every result file (logs and resume state excluded)."""
    res = workdir / "results" / "tiny"
    return {
        str(p.relative_to(res)): p.stat().st_mtime_ns
        for p in res.rglob("*")
        if p.is_file() and not str(p.relative_to(res)).startswith(("logs/", "work/"))
    }


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if before.get(k) != after[k]} | (set(before) - set(after))


@pytest.fixture(scope="module")
def done(tmp_path_factory, fmnist_dir):
    wd = tmp_path_factory.mktemp("tiny-e2e")
    write_tiny(wd / "tiny.yaml")
    r = snakemake(wd)
    assert r.returncode == 0, f"tiny pipeline failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return wd


def edit_config(wd: Path, fn) -> None:
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    fn(cfg)
    (wd / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_full_run_produces_figures_claims_and_logs(done):
    res = done / "results" / "tiny"
    for fig in FIGS:
        for ext in ("pdf", "png"):
            f = res / "figures" / f"{fig}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
    claims = json.loads((res / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == ["1a", "1b", "2a", "2b", "3", "4", "5a", "5b", "6", "7"]
    assert all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive") for c in claims["claims"])
    assert "Claim 7" in (res / "claims.md").read_text()
    log = (res / "logs" / "train" / "sgd" / "seed0.log").read_text()
    assert "epoch 1/3" in log and "epoch 3/3" in log, log[-2000:]


def test_nothing_to_do_after_a_finished_run(done):
    r = snakemake(done, "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_html_report_has_every_figure_with_its_caption(done):
    report = done / "report.html"
    r = snakemake(done, "--report", str(report))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    html = report.read_text()
    for fig in FIGS:
        assert f"{fig}.png" in html or f"{fig}.pdf" in html, fig
    assert "Figure 3" in html and "Figure 6" in html  # each figure got its own caption


def test_plot_option_reruns_only_that_figure(done):
    before = outputs(done)
    time.sleep(1.1)
    edit_config(done, lambda c: c["figures"]["fig3_plane"].__setitem__("levels", 7))
    r = snakemake(done)
    assert r.returncode == 0, r.stderr[-3000:]
    assert changed(before, outputs(done)) == {"figures/fig3_plane.pdf", "figures/fig3_plane.png"}


def test_distillation_temperature_reruns_only_the_student_chain(done):
    before = outputs(done)
    time.sleep(1.1)
    edit_config(done, lambda c: c["runs"]["distilled"]["distill"].__setitem__("temperature", 2.0))
    r = snakemake(done)
    assert r.returncode == 0, r.stderr[-3000:]
    ch = changed(before, outputs(done))
    # distill/fidelity.csv: the distilled student's fidelity to the teacher (issue 27) is in its chain
    expected_prefixes = ("runs/distilled/", "activations/distilled/", "similarity/distill-distilled/",
                         "distill/", "figures/fig6_distill.", "claims.")
    assert ch, "nothing reran"
    assert all(k.startswith(expected_prefixes) for k in ch), sorted(ch)
    assert {"runs/distilled/seed1/final.pt", "figures/fig6_distill.pdf", "claims.json"} <= ch, sorted(ch)
    assert not any(k.startswith("runs/sgd/") for k in ch)  # the teacher is untouched


def test_deleted_checkpoint_reruns_only_its_producer_chain(done):
    before = outputs(done)
    (done / "results" / "tiny" / "runs" / "sgdr" / "seed0" / "epoch2.pt").unlink()
    time.sleep(1.1)
    r = snakemake(done)
    assert r.returncode == 0, r.stderr[-3000:]
    ch = changed(before, outputs(done))
    allowed = ("runs/sgdr/", "curves/sgdr-w1-w3/", "planes/sgdr/", "figures/fig2_sgdr.", "figures/fig3_plane.",
               "claims.")
    assert "runs/sgdr/seed0/epoch2.pt" in ch
    assert all(k.startswith(allowed) for k in ch), sorted(ch)
    assert not any(k.startswith(("runs/sgd/", "curves/G-A/", "figures/fig1")) for k in ch)
