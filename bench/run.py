"""All the CPU performance figures of the project in one run: one markdown table (with the machine and what was skipped, and why) and ``results/bench/bench.json``.

Sections (each reuses the bench module named in its rows' "command" column):

- training images/s, the engine's loop vs a plain reference loop (torchvision
  ``DataLoader`` with per-image PIL transforms), ``small_cnn`` and ``vgg16`` on
  32x32 inputs (small_cnn: Fashion-MNIST 28x28), fp32, channels_last and bf16
  autocast (:mod:`bench.train_bench`);
- curve evaluation: one evaluated path point vs the naive way (new model +
  ``load_state_dict`` + ``update_bn`` per point), and one curve-fitting epoch over
  one ordinary training epoch (:mod:`bench.curve_bench`);
- path finders: AutoNEB vs a Bezier curve fit at an equal number of gradient evaluations on the
  demo model, and weight matching of two VGG-16s on the CPU (:mod:`bench.pathfinder_bench`);
- lenses: points per second of a 2-D filter-normalised grid vs a naive rebuild-and-load loop, one
  point's cost over one BN pass + one evaluation, and the streamed trajectory PCA of 100 synthetic
  checkpoints of a 15M-parameter model: peak memory against its bound (:mod:`bench.lens_bench`);
- similarity: CCA, PWCCA and linear CKA vs numpy reference implementations at
  (64 x 2,000), (256 x 10,000), (512 x 50,000), float64 and float32 products,
  ratio and agreement, plus the streaming accumulator's peak memory
  (:mod:`bench.similarity_bench`);
- explanations: the CPU cost of lambda_max inside training (the demo's traced large-batch run with and
  without its trace; :mod:`bench.trace_bench`);
- the workflow: ``snakemake -n`` on the paper config against a trivial DAG of the same size
  (:mod:`bench.plan_bench`, ``plan_paper_s``: it replaced a separate ``dryrun_paper_s`` run) and the
  demo pipeline's wall time from scratch in a fresh temporary ``--directory``
  (``demo_wall_s``, about 10 minutes; ``--skip-demo`` or
  ``CLOSERLOOK_BENCH_SKIP_DEMO=1`` skips it).

Targets (CPU): training >= 1.25x the plain loop in fp32; similarity (bench.similarity_bench.TARGETS,
reasons there): CCA >= 1.0x Google's algorithm at every size, >= 1.2x in float64 (agreeing to 1e-10)
and >= 1.0x with float32 products (1e-5 relative) at 512 x 50,000, medians of >= 5 alternating pairs;
demo <= 10 min.

Both sides of every comparison run in this one process under the same BLAS
environment (``OPENBLAS_*``, ``OMP_*``, ``MKL_*``: reported, never changed).

Usage: ``.venv/bin/python -m bench.run [--skip-demo] [--quick] [--out results/bench/bench.json]``
(``make bench`` runs it with the defaults).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import snakemake_env

ROOT = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"

TARGETS = {  # key: (op, threshold, text)
    "train_ratio_small_cnn": (">=", 1.25, ">= 1.25x"),
    "train_ratio_vgg16": (">=", 1.25, ">= 1.25x"),
    # similarity: bench.similarity_bench.TARGETS (kept in step by tests/test_bench.py)
    **{f"cca_ratio_{t}_{p}": (">=", 1.0, ">= 1.0x") for t in ("64x2000", "256x10000") for p in ("f64", "f32")},
    "cca_ratio_512x50000_f64": (">=", 1.2, ">= 1.2x (median of >= 5 alternating pairs)"),
    "cca_ratio_512x50000_f32": (">=", 1.0, ">= 1.0x (median of >= 5 alternating pairs)"),
    "cca_max_abs_diff_f64": ("<=", 1e-10, "<= 1e-10 (ours vs ref)"),
    "cca_max_rel_diff_f32": ("<=", 1e-5, "<= 1e-5 relative (ours vs ref)"),
    "demo_wall_s": ("<=", 600.0, "<= 600 s"),
    "curve_conv_ratio_10": (">=", 2.0, ">= 2x"),
    "lens_point_over_pass": ("<=", 1.1, "<= 1.1x"),
    "pca_rss_over_bound": ("<=", 1.0, "<= 1.0"),
}


def _load() -> str:
    try:
        return "load avg %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load n/a"


def _snakemake() -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def demo_wall(cores: int = 2, timeout_s: int = 3600) -> dict:
    """The demo pipeline end to end in a fresh directory (nothing cached: data preparation included)."""
    d = tempfile.mkdtemp(prefix="closerlook-demo-")
    cmd = _snakemake() + ["-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / "config/demo.yaml"),
                          "--directory", d, "--cores", str(cores), "--quiet"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=snakemake_env())
        rc, err = p.returncode, (p.stderr or "")[-800:]
    except subprocess.TimeoutExpired:
        rc, err = "timeout", f"stopped after {timeout_s} s"
    wall = time.perf_counter() - t0
    out = {"demo_wall_s": round(wall, 1) if rc == 0 else None, "demo_cores": cores}
    if rc != 0:
        out["demo_error"] = f"rc={rc}: {err}"
        out["demo_dir_kept"] = d          # left for inspection
    else:
        shutil.rmtree(d, ignore_errors=True)
    return out


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.1e}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _met(key: str, v) -> str:
    if key not in TARGETS:
        return ""
    if v is None:
        return "not measured"
    op, thr, _ = TARGETS[key]
    ok = v >= thr if op == ">=" else v <= thr
    return "yes" if ok else "NO"


ROWS = [  # (section, key, figure text, command)
    ("training", "train_ips_small_cnn_plain", "small_cnn img/s, plain loop (fp32)", "python -m bench.train_bench"),
    ("training", "train_ips_small_cnn_engine", "small_cnn img/s, engine (fp32)", "python -m bench.train_bench"),
    ("training", "train_ratio_small_cnn", "small_cnn engine / plain, fp32", "python -m bench.train_bench"),
    ("training", "train_ratio_small_cnn_cl", "small_cnn engine / plain, channels_last", "python -m bench.train_bench"),
    ("training", "train_ratio_small_cnn_bf16", "small_cnn engine / plain, bf16 autocast", "python -m bench.train_bench"),
    ("training", "train_ratio_small_cnn_cl_bf16", "small_cnn engine / plain, cl + bf16", "python -m bench.train_bench"),
    ("training", "train_ips_vgg16_plain", "vgg16 img/s, plain loop (fp32)", "python -m bench.train_bench"),
    ("training", "train_ips_vgg16_engine", "vgg16 img/s, engine (fp32)", "python -m bench.train_bench"),
    ("training", "train_ratio_vgg16", "vgg16 engine / plain, fp32", "python -m bench.train_bench"),
    ("training", "train_ratio_vgg16_cl", "vgg16 engine / plain, channels_last", "python -m bench.train_bench"),
    ("training", "train_ratio_vgg16_bf16", "vgg16 engine / plain, bf16 autocast", "python -m bench.train_bench"),
    ("training", "train_ratio_vgg16_cl_bf16", "vgg16 engine / plain, cl + bf16", "python -m bench.train_bench"),
    ("curves", "curve_point_s", "one path point, s (ours)", "python -m bench.curve_bench"),
    ("curves", "curve_point_naive_s", "one path point, s (naive)", "python -m bench.curve_bench"),
    ("curves", "curve_point_ratio", "path point ours / naive", "python -m bench.curve_bench"),
    ("curves", "curve_epoch_over_train_epoch", "curve epoch / training epoch", "python -m bench.curve_bench"),
    ("curves", "curve_conv_garipov_25", "grad evals to <= 25 % of barrier, Garipov", "python -m bench.curve_convergence --bench"),
    ("curves", "curve_conv_ours_25", "grad evals to <= 25 % of barrier, ours", "python -m bench.curve_convergence --bench"),
    ("curves", "curve_conv_garipov_10", "grad evals to <= 10 % of barrier, Garipov", "python -m bench.curve_convergence --bench"),
    ("curves", "curve_conv_ours_10", "grad evals to <= 10 % of barrier, ours", "python -m bench.curve_convergence --bench"),
    ("curves", "curve_conv_ratio_10", "Garipov / ours, to <= 10 % (epochs of evals)", "python -m bench.curve_convergence --bench"),
    ("lenses", "lens_grid_pps", "2-D filter-norm grid, points/s (ours)", "python -m bench.lens_bench"),
    ("lenses", "lens_grid_naive_pps", "2-D grid, points/s (naive rebuild+load)", "python -m bench.lens_bench"),
    ("lenses", "lens_point_over_pass", "grid point / (1 BN pass + 1 evaluation)", "python -m bench.lens_bench"),
    ("lenses", "pca_s", "PCA 100 x 15M checkpoints, wall s", "python -m bench.lens_bench"),
    ("lenses", "pca_peak_rss_mb", "PCA peak RSS, MB", "python -m bench.lens_bench"),
    ("lenses", "pca_stacked_mb", "stacked N x P float64 matrix, MB", "python -m bench.lens_bench"),
    ("lenses", "pca_rss_over_bound", "PCA (peak - imports) / bound", "python -m bench.lens_bench"),
]
ROWS += [
    ("paths", "autoneb_grad_evals", "AutoNEB gradient evaluations (demo model)", "python -m bench.pathfinder_bench"),
    ("paths", "autoneb_s", "AutoNEB, wall s", "python -m bench.pathfinder_bench"),
    ("paths", "bezier_equal_budget_s", "Bezier fit, same gradient evals, wall s", "python -m bench.pathfinder_bench"),
    ("paths", "autoneb_over_bezier", "AutoNEB / Bezier wall time", "python -m bench.pathfinder_bench"),
    ("paths", "align_vgg16_s", "weight matching two VGG-16s, wall s", "python -m bench.pathfinder_bench"),
]
for _tag in ("64x2000", "256x10000", "512x50000"):
    ROWS += [
        ("similarity", f"cca_ratio_{_tag}_f64", f"CCA {_tag} ref / ours, float64", "python -m bench.similarity_bench"),
        ("similarity", f"cca_ratio_{_tag}_f32", f"CCA {_tag} ref / ours, f32 products", "python -m bench.similarity_bench"),
        ("similarity", f"pwcca_ratio_{_tag}", f"PWCCA {_tag} ref / ours", "python -m bench.similarity_bench"),
        ("similarity", f"cka_ratio_{_tag}", f"linear CKA {_tag} ref / ours", "python -m bench.similarity_bench"),
    ]
ROWS += [
    ("similarity", "cca_max_abs_diff_f64", "CCA max |ours - ref|, float64", "python -m bench.similarity_bench"),
    ("similarity", "cca_max_rel_diff_f32", "CCA max |ours - ref| / max |ref|, f32 products", "python -m bench.similarity_bench"),
    ("similarity", "stream_peak_mb", "streaming 50000x4096 layer: peak MB", "python -m bench.similarity_bench"),
    ("workflow", "demo_wall_s", "demo pipeline from scratch, wall s (2 cores)",
     "snakemake --configfile config/demo.yaml --cores 2 (fresh --directory)"),
]


def machine_line(res: dict) -> str:
    """The machine a bench ran on, in one line (CPU model, cores, Python, torch, numpy, BLAS env, load)."""
    return (f"**Machine:** {res.get('cpu_model') or res.get('host', '?')}, {res.get('cpus', '?')} logical cores; "
            f"Python {res.get('python', '?')}, torch {res.get('torch', '?')}, numpy {res.get('numpy', '?')}; "
            f"BLAS env: {res.get('blas_env', '?')}; {res.get('load_start', '?')} at start, {res.get('load_end', '?')} at end; "
            f"{res.get('started_utc', '?')} to {res.get('finished_utc', '?')}")


def table(res: dict) -> str:
    """One markdown table: every figure with its target and whether it is met, the machine above it, and
    what was skipped (a row's "met?" says skipped; the list below says why)."""
    lines = [machine_line(res), "", "| section | figure | value | target | met? | command |", "|---|---|---:|---|---|---|"]
    skipped = dict(res.get("skipped") or {})
    for key in [k for k in res if k.endswith("_error")]:
        skipped.setdefault(key[: -len("_error")], f"failed: {res[key]}")
    for section, key, text, cmd in ROWS:
        if key not in res and key not in TARGETS and key not in skipped:
            continue
        v = res.get(key)
        tgt = TARGETS.get(key, (None, None, ""))[2]
        met = "skipped" if key in skipped else _met(key, v)
        cells = [section, text, _fmt(v), tgt, met]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + f" | `{cmd}` |")
    if skipped:
        lines += ["", "**Skipped, and why:**", ""] + [f"- {key}: {why}" for key, why in sorted(skipped.items())]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--skip-demo", action="store_true",
                    default=os.environ.get("CLOSERLOOK_BENCH_SKIP_DEMO", "") not in ("", "0"),
                    help="skip the ~10-minute demo pipeline (also CLOSERLOOK_BENCH_SKIP_DEMO=1)")
    ap.add_argument("--quick", action="store_true", help="short training loops, no 512 x 50,000 similarity case")
    ap.add_argument("--out", default="results/bench/bench.json")
    ap.add_argument("--only", nargs="*", choices=["train", "curves", "paths", "lenses", "similarity", "explanations", "workflow"],
                    help="run only these sections (their keys replace those of an existing --out file)")
    ap.add_argument("--steps", type=int, default=60, help="timed small_cnn steps per training loop")
    ap.add_argument("--vgg-steps", type=int, default=10, help="timed vgg16 steps per training loop")
    ap.add_argument("--sim-repeats", type=int, default=5, help="similarity: alternating pairs per size (>= 5)")
    ap.add_argument("--sim-clock", choices=["wall", "cpu"], default="wall",
                    help="similarity clock: wall (default) or process CPU time (inflated by BLAS threads spinning under load)")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    from closerlook.io import atomic_write_json

    sections = set(a.only or ["train", "curves", "paths", "lenses", "similarity", "explanations", "workflow"])
    prev: dict = {}
    if a.only and Path(a.out).exists():  # partial re-run: keep the other sections' figures
        import json

        prev = json.loads(Path(a.out).read_text())
    res: dict = {**prev, "rerun_sections": sorted(sections)} if prev else {}
    res.update({"host": platform.node(), "cpu_model": _cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": _load()})
    import numpy as np
    import torch

    res["torch"] = torch.__version__
    res["numpy"] = np.__version__
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    res["blas_env"] = ";".join(f"{k}={v}" for k, v in env.items()) or "(no BLAS variables set)"
    timings = {}

    def section(name, fn):
        t0 = time.perf_counter()
        print(f"== {name} ({_load()})", flush=True)
        try:
            r = fn()
        except Exception as exc:  # one broken section must not lose the others
            r = {f"{name}_error": f"{type(exc).__name__}: {exc}"}
            print(f"   {name} failed: {r[f'{name}_error']}", flush=True)
        timings[name] = round(time.perf_counter() - t0, 1)
        res.update({k: v for k, v in r.items() if k not in ("threads", "batch", "env", "skipped")})
        res.setdefault("skipped", {}).update(r.get("skipped") or {})
        if "threads" in r:
            res[f"{name}_threads"] = r["threads"]

    if "train" in sections:
        from bench import train_bench

        section("train", lambda: train_bench.run(steps=20 if a.quick else a.steps, vgg_steps=3 if a.quick else a.vgg_steps))
    if "curves" in sections:
        from bench import curve_bench

        section("curves", lambda: curve_bench.run())
        from bench import curve_convergence  # issue 24.1: two-seed barrier, ours vs Garipov's (one pair, one fit seed)

        section("curve_convergence", lambda: curve_convergence.run())
    if "paths" in sections:
        from bench import pathfinder_bench

        section("paths", lambda: pathfinder_bench.run())
    if "lenses" in sections:
        from bench import lens_bench

        section("lenses", lambda: lens_bench.run(checkpoints=20 if a.quick else 100))
    if "similarity" in sections:
        from bench import similarity_bench

        def sim():
            import inspect

            kw = {}
            params = inspect.signature(similarity_bench.run).parameters
            if "repeats" in params:
                kw["repeats"] = a.sim_repeats
            if "clock" in params:
                kw["clock"] = a.sim_clock
            res["similarity_timing"] = (f"median of {max(5, a.sim_repeats)} alternating pairs on the {a.sim_clock} clock"
                                        if kw else "one run, wall")
            r = similarity_bench.run(quick=a.quick, **kw)
            print(similarity_bench._table(r))
            return r

        section("similarity", sim)
    if "explanations" in sections:
        section("trace", __import__("bench.trace_bench", fromlist=["register"]).register(ROWS, TARGETS))  # issue 27.1
    if "workflow" in sections:
        section("plan", __import__("bench.plan_bench", fromlist=["register"]).register(ROWS, TARGETS))  # issue 26.1
        if a.skip_demo:
            res["demo_wall_s"] = None
            res["demo_note"] = "skipped (--skip-demo / CLOSERLOOK_BENCH_SKIP_DEMO)"
            res.setdefault("skipped", {})["demo_wall_s"] = "--skip-demo / CLOSERLOOK_BENCH_SKIP_DEMO=1 (the demo takes ~10 min)"
        else:
            section("demo", demo_wall)
    res["section_s"] = {**res.get("section_s", {}), **timings}
    res["load_end"] = _load()
    res["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    print()
    print(f"## closerlook benchmark (commands run from the repo root with {PY}; training on "
          f"{res.get('train_threads', '?')} thread(s))\n")
    print(table(res))
    print(f"\nwritten: {out}")
    return res


if __name__ == "__main__":
    main()
