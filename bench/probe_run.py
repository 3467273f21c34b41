"""Stability probe: train one run of a config with spec overrides, print one result line.

``python -m bench.probe_run --config config/demo.yaml --run lb_warmup --seed 0 --set optimizer.lr=0.2``
trains the run exactly as the workflow would (``config.run_spec``), into a throw-away directory
(``--out``, default a temp dir), and prints one JSON line: run, seed, overrides, status, final
test accuracy, the per-epoch test accuracies and the wall time. ``--teacher CKPT`` replaces a
distilled run's teacher checkpoint (train the teacher first with ``--out``). Used to measure
where each demo run family diverges (docs/DEMO-PROBES.md).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time

from closerlook.config import load_config, run_spec
from closerlook.spec import set_key
from closerlook.tables import read_table
from closerlook.train import train_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.probe_run")
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint for a distilled run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    spec = run_spec(load_config(args.config), args.run, args.seed)
    spec["checkpoints"] = {"epochs": [], "iterations": []}   # a probe keeps only final.pt
    for kv in args.set:
        k, v = kv.split("=", 1)
        set_key(spec, k.strip(), v)
    if args.teacher:
        spec["distill"]["teacher"] = args.teacher
    out = args.out or tempfile.mkdtemp(prefix="probe-")
    t0 = time.time()
    res = train_run(spec, out, progress=None)
    m, _problem = read_table(f"{out}/metrics.csv")
    accs = [round(float(a), 3) for a in m["test_acc"]] if "test_acc" in m else []
    line = {"run": args.run, "seed": args.seed, "set": args.set, "status": res.get("status"),
            "test_acc": accs[-1] if accs else None, "acc_per_epoch": accs,
            "train_loss": [round(float(x), 3) if math.isfinite(float(x)) else None for x in m["train_loss"]],
            "wall_s": round(time.time() - t0, 1), "out": out}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
