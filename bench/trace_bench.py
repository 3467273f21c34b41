"""Cost of lambda_max inside training (issue 27.1): the demo's traced large-batch run, with and without its trace.

The trace (:mod:`closerlook.sharpness_trace`) runs a few Lanczos steps of Hessian-vector products
on the current batch before configured iterations; what it costs is what a user pays per traced
run, and what the demo's 10-minute budget has to hold. The same run spec (``config/demo.yaml``'s
``lb_nowarmup``, seed 0, its configured ``sharpness_trace``) is trained twice in this process,
untraced and traced, into throw-away directories; both sides' CPU seconds (user + system, this
process and its threads, ``resource.getrusage``) include data loading and evaluation, so

- ``trace_run_cpu_s`` / ``untraced_run_cpu_s``: the whole run's CPU seconds with / without the trace;
- ``trace_cpu_s``: the CPU seconds the tracer itself counted (the sum of the CSV's ``cpu_s``);
- ``trace_over_train``: ``trace_cpu_s / untraced_run_cpu_s`` (docs/explanations.md measured ~1.5x under load);
- ``trace_cpu_per_hvp``: ``trace_cpu_s`` over the Hessian-vector products made (batch 250).

No target of its own: its budget is the demo's (``demo_wall_s`` <= 600 s, which includes four traced
runs). CPU seconds, not wall: a trace is single-process work, and CPU seconds do not move with the
load other processes put on a shared machine. ``pairs`` alternating pairs, medians.

Usage: ``python -m bench.trace_bench [--pairs 1] [--config config/demo.yaml] [--run lb_nowarmup]``.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from bench import register as _register

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    ("explanations", "untraced_run_cpu_s", "demo lb_nowarmup run, untraced, CPU-s", "python -m bench.trace_bench"),
    ("explanations", "trace_run_cpu_s", "the same run, traced, CPU-s", "python -m bench.trace_bench"),
    ("explanations", "trace_cpu_s", "the trace's own CPU-s (sum of cpu_s)", "python -m bench.trace_bench"),
    ("explanations", "trace_over_train", "trace CPU-s / untraced run CPU-s", "python -m bench.trace_bench"),
    ("explanations", "trace_cpu_per_hvp", "CPU-s per Hessian-vector product (batch 250)", "python -m bench.trace_bench"),
]
TARGETS: dict = {}  # none of its own: the demo's 600 s holds it (module docstring)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _train(spec: dict, traced: bool) -> tuple[float, list[dict]]:
    """One run into a temp directory: its CPU seconds and its trace rows (empty when untraced)."""
    from closerlook.sharpness_trace import TRAJECTORY_FILE
    from closerlook.tables import read_plain
    from closerlook.train import train_run

    s = {**spec, "sharpness_trace": spec["sharpness_trace"] if traced else None}
    with tempfile.TemporaryDirectory(prefix="closerlook-trace-") as out:
        t0 = _cpu()
        res = train_run(s, out, progress=None)
        cpu = _cpu() - t0
        if res.get("status") != "ok":
            raise RuntimeError(f"the {'traced' if traced else 'untraced'} run ended with status {res.get('status')!r}")
        df, problem = read_plain(Path(out) / TRAJECTORY_FILE) if traced else (None, None)
    if traced and problem:
        raise RuntimeError(f"the traced run's {TRAJECTORY_FILE} is {problem}")
    return cpu, ([] if df is None else df.to_dict("records"))


def run(pairs: int = 1, config: str = "config/demo.yaml", name: str = "lb_nowarmup", seed: int = 0) -> dict:
    from closerlook.config import load_config, run_spec

    spec = run_spec(load_config(str(ROOT / config)), name, seed)
    if not spec.get("sharpness_trace"):
        raise ValueError(f"{config}: runs.{name} has no sharpness_trace to measure")
    spec["checkpoints"] = {"epochs": [], "iterations": []}
    plain, traced, trace, hvps = [], [], [], []
    for i in range(pairs):  # alternating order: plain first in even pairs, traced first in odd ones
        for side in ((False, True) if i % 2 == 0 else (True, False)):
            cpu, rows = _train(spec, side)
            if side:
                traced.append(cpu)
                trace.append(sum(float(r["cpu_s"]) for r in rows))
                hvps.append(sum(int(r["hvps"]) for r in rows))
            else:
                plain.append(cpu)
    med = statistics.median
    return {"untraced_run_cpu_s": round(med(plain), 2), "trace_run_cpu_s": round(med(traced), 2),
            "trace_cpu_s": round(med(trace), 2), "trace_over_train": round(med(trace) / med(plain), 3),
            "trace_cpu_per_hvp": round(med(trace) / max(1, med(hvps)), 4), "trace_hvps": int(med(hvps)),
            "trace_bench_run": f"{config} runs.{name} seed {seed}, {pairs} pair(s)"}


def register(rows: list, targets: dict, pairs: int = 1):
    """This bench's rows and targets in bench/run.py's table; returns the section to run."""
    return _register(rows, targets, ROWS, TARGETS, lambda: run(pairs))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.trace_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--run", default="lb_nowarmup")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = run(a.pairs, a.config, a.run, a.seed)
    for k, v in res.items():
        print(f"{k:>20}: {v}")
    return res


if __name__ == "__main__":
    main()
