"""Planning cost: ``snakemake -n`` on the paper DAG vs a trivial Snakefile of the same size.

A user waits for a dry run before every real one (and on a cluster's login node every
``snakemake`` call plans first), so planning should cost what Snakemake itself costs for a
DAG of this size, not that plus ours. The reference is a generated Snakefile of 12 trivial
rules (shell ``touch``) whose DAG has as many jobs as the paper config's; both run as whole
processes (``--quiet``, ``--cores 1``) in fresh empty ``--directory`` folders, so the whole
DAG is pending, exactly as on a fresh clone.

- ``plan_paper_s`` / ``plan_trivial_s``: medians over ``pairs`` alternating pairs (paper,
  trivial, paper, trivial, ...): a load spike hits both sides alike, so the ratio
  ``plan_ratio`` (median of the per-pair ratios) is robust on a shared machine where the
  seconds themselves are not. Target: ``plan_ratio <= 1.2``.
- ``plan_paper_cpu_s`` / ``plan_trivial_cpu_s`` / ``plan_cpu_ratio``: the same in CPU seconds (user + system,
  from ``os.wait4``): what the process itself spent, independent of other load on the machine.
- ``plan_peak_rss_mb``: the paper dry run's peak resident memory (largest over the runs, from
  ``os.wait4``); target < 300 MiB. ``plan_trivial_rss_mb``: the same for the reference.
- ``plan_jobs``: the paper DAG's job count (the reference is generated with this many).

Usage: ``python -m bench.plan_bench [--pairs 5] [--configfile config/config.yaml] [--json out]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import register as _register, snakemake_env

ROOT = Path(__file__).resolve().parents[1]
N_RULES = 12  # the reference's rule count, `all` included (the "12 trivial rules")


def snakemake_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def trivial_snakefile(n_jobs: int, n_rules: int = N_RULES) -> str:
    """A Snakefile of ``n_rules`` rules (``all`` among them) planning ``n_jobs`` jobs: the work rules
    form a chain, each job of rule i reading one output of rule i-1 (a DAG with edges, as ours);
    ``all`` asks for every output, so every job is in the DAG."""
    work = n_rules - 1
    counts = [(n_jobs - 1) // work + (1 if i < (n_jobs - 1) % work else 0) for i in range(work)]
    lines = [f"N = {counts}", "", "rule all:", "    input: [f'r{i}/{k}.txt' for i, n in enumerate(N) for k in range(n)]", ""]
    for i in range(work):
        lines += [f"rule r{i}:"]
        if i:
            lines += [f"    input: lambda wc: f'r{i - 1}/{{int(wc.k) % N[{i - 1}]}}.txt'"]
        lines += [f"    output: 'r{i}/{{k}}.txt'", "    shell: 'touch {output}'", ""]
    return "\n".join(lines)


def dry_run(args: list[str], quiet: bool = True, env: dict | None = None) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, output) of one ``snakemake -n`` process in a fresh empty directory
    (``quiet``: ``--quiet``, as timed; otherwise the job table is printed, for counting)."""
    with tempfile.TemporaryDirectory(prefix="closerlook-plan-") as d:
        cmd = snakemake_cmd() + args + ["--directory", d, "-n", "--cores", "1"] + (["--quiet"] if quiet else [])
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {out[-800:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def job_count(output: str) -> int:
    """The total of Snakemake's job-stats table (printed without ``--quiet``)."""
    m = re.search(r"^total\s+(\d+)", output, re.M)
    if not m:
        raise RuntimeError(f"no job count in the dry run's output: {output[-400:]}")
    return int(m.group(1))


def run(pairs: int = 5, configfile: str = "config/config.yaml") -> dict:
    env = snakemake_env()
    paper = ["-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / configfile)]
    n = job_count(dry_run(paper, quiet=False, env=env)[3])  # also warms the file cache; its job count sizes the reference
    with tempfile.TemporaryDirectory(prefix="closerlook-trivial-") as d:
        ref = Path(d) / "Snakefile"
        ref.write_text(trivial_snakefile(n))
        trivial = ["-s", str(ref)]
        n_ref = job_count(dry_run(trivial, quiet=False, env=env)[3])
        runs: dict[str, list[tuple]] = {"paper": [], "trivial": []}
        for _ in range(pairs):
            for side, args in (("paper", paper), ("trivial", trivial)):
                runs[side].append(dry_run(args, env=env)[:3])
    (ps, pcpu, prss), (ts, tcpu, trss) = (list(zip(*runs["paper"])), list(zip(*runs["trivial"])))
    ratios = [p / t for p, t in zip(ps, ts)]
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    return {"plan_jobs": n, "plan_trivial_jobs": n_ref, "plan_pairs": pairs,
            "plan_paper_s": med(ps), "plan_trivial_s": med(ts),
            "plan_ratio": med(ratios), "plan_ratios": [round(r, 3) for r in ratios],
            "plan_paper_cpu_s": med(pcpu), "plan_trivial_cpu_s": med(tcpu),
            "plan_cpu_ratio": med([p / t for p, t in zip(pcpu, tcpu)]),
            "plan_peak_rss_mb": round(max(prss), 1), "plan_trivial_rss_mb": round(max(trss), 1)}


# the rows and targets of bench/run.py's table (registered there with one line: `register(ROWS, TARGETS)`)
ROWS = [
    ("workflow", "plan_ratio", "dry run: paper DAG / same-size trivial, wall", "python -m bench.plan_bench"),
    ("workflow", "plan_cpu_ratio", "dry run: paper DAG / trivial, CPU s", "python -m bench.plan_bench"),
    ("workflow", "plan_paper_s", "dry run, paper DAG, wall s (median)", "python -m bench.plan_bench"),
    ("workflow", "plan_trivial_s", "dry run, trivial same-size DAG, wall s", "python -m bench.plan_bench"),
    ("workflow", "plan_peak_rss_mb", "dry run, paper DAG, peak RSS MiB", "python -m bench.plan_bench"),
]
TARGETS = {"plan_ratio": ("<=", 1.2, "<= 1.2x"), "plan_peak_rss_mb": ("<=", 300.0, "<= 300 MiB")}


def run_fresh(pairs: int = 5) -> dict:
    """:func:`run` in a fresh Python process. Linux keeps a process's peak RSS across ``exec``, and a forked
    child starts from its parent's, so a dry run started by bench/run.py after its memory-heavy sections
    (3.3 GB) would report that as its own peak; the children of a fresh, small process report theirs."""
    with tempfile.TemporaryDirectory(prefix="closerlook-planbench-") as d:
        out = Path(d) / "plan.json"
        p = subprocess.run([sys.executable, "-m", "bench.plan_bench", "--pairs", str(pairs), "--json", str(out)],
                           cwd=ROOT, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"python -m bench.plan_bench failed ({p.returncode}): {(p.stderr or p.stdout)[-800:]}")
        return json.loads(out.read_text())


def register(rows: list, targets: dict, pairs: int = 5):
    """This bench's rows and targets in bench/run.py's table; returns the section to run (in a fresh process)."""
    return _register(rows, targets, ROWS, TARGETS, lambda: run_fresh(pairs))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.plan_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    res = run(a.pairs, a.configfile)
    for k, v in res.items():
        print(f"{k:>22}: {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
