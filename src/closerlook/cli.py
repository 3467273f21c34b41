"""The command lines, apart from the library: ``python -m closerlook.train`` and
``python -m closerlook.curves fit|evaluate|plane`` (console scripts ``closerlook-train`` and
``closerlook-curves``). Each parses its flags into the plain values a stage takes and calls
:mod:`closerlook.stages` (or :func:`closerlook.train.train_run`); ``train.py`` and ``curves.py``
only hand ``python -m`` over to here, so no library module imports the stages.

Exit status: 0 done, 2 a configuration or checkpoint error (printed as ``error: ...``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import stages
from .curves import FIT_DEFAULTS, SCHEDULES, T_SAMPLINGS
from .io import CheckpointError, CloserlookError, ConfigError
from .defaults import PLANE_DEFAULTS
from .landscape import PATH_DEFAULTS
from .settings_types import StopRule
from .spec import load_spec, set_key
from .train import train_run


# ----------------------------------------------------------------------------- closerlook.train

def _jsonable(d: dict) -> dict:
    """``d`` with non-finite floats as None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def train_main(argv: list[str] | None = None) -> int:
    """``python -m closerlook.train`` (console script ``closerlook-train``): one run spec -> one run directory."""
    ap = argparse.ArgumentParser(prog="python -m closerlook.train", description="Train one run spec into a run directory.")
    ap.add_argument("--spec", required=True, help="run spec (YAML or JSON)")
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key (dotted, value parsed as YAML), e.g. --set optimizer.lr=0.1")
    ap.add_argument("--allow-factory", action="append", default=[], metavar="MODULE:FACTORY",
                    help="an external model factory a teacher checkpoint may name (the spec's own is allowed)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        for kv in args.set:
            if "=" not in kv:
                raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            set_key(spec, k.strip(), v)
        res = train_run(spec, args.out, progress=None if args.quiet else (lambda m: print(m, flush=True)),
                        factories=args.allow_factory)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_jsonable(res), sort_keys=True), flush=True)
    return 0


# ----------------------------------------------------------------------------- closerlook.curves

def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="JSON/YAML data spec (a run spec's 'data' block or a whole run spec)")
    p.add_argument("--data", help="data set name (overrides the spec)")
    for flag in ("--root", "--cache-dir"):
        p.add_argument(flag)
    for flag in ("--train-per-class", "--test-per-class", "--subset-seed"):
        p.add_argument(flag, type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--eval-train-images", type=int, default=None,
                   help="evaluate training loss on the first N (subset) training images only")
    p.add_argument("--bn-batches", type=int, default=None, help="BN recompute on this many batches (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="batch of the evaluation passes")
    p.add_argument("--allow-factory", action="append", default=[], metavar="MODULE:FACTORY",
                   help="an external model factory the checkpoints may name (the --spec's model is allowed)")
    p.add_argument("--quiet", action="store_true")


def _curves_parser() -> argparse.ArgumentParser:
    d = FIT_DEFAULTS
    ap = argparse.ArgumentParser(prog="python -m closerlook.curves", description="Mode connectivity: curves between two networks, their fitting, save and load.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit a curve between two checkpoints")
    for flag in ("--start", "--end"):
        f.add_argument(flag, required=True)
    f.add_argument("--out", required=True, help="output folder (curve.pt, metrics.csv, resume.pt)")
    f.add_argument("--kind", default=d["kind"], choices=["bezier", "polychain"])
    f.add_argument("--num-bends", type=int, default=d["num_bends"])
    f.add_argument("--epochs", type=int, required=True)
    for flag, key in (("--lr", "lr"), ("--momentum", "momentum"), ("--wd", "weight_decay")):
        f.add_argument(flag, type=float, default=d[key])
    for flag, key in (("--batch-size", "batch_size"), ("--t-per-batch", "t_per_batch"), ("--resume-every", "resume_every")):
        f.add_argument(flag, type=int, default=d[key])
    f.add_argument("--schedule", default=d["schedule"], choices=list(SCHEDULES))
    f.add_argument("--plateau-patience", type=int, default=d["plateau_patience"],
                   help="--schedule plateau: halve the lr after this many checks in a row without improvement")
    f.add_argument("--t-sampling", default=d["t_sampling"], choices=list(T_SAMPLINGS))
    f.add_argument("--t-split", action=argparse.BooleanOptionalAction, default=d["t_split"])
    f.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-resume", action="store_true")
    f.add_argument("--checkpoint-epochs", type=int, nargs="*", default=[])
    f.add_argument("--stop-min-delta", type=float, default=d["stop"]["min_delta"],
                   help="the stopping rule: stop when the max loss over --stop-ts has not fallen by more "
                        "than this (nats) for --stop-patience checks")
    f.add_argument("--no-stop", action="store_true", help="no stopping rule: always --epochs (not with --schedule plateau)")
    sd = StopRule.of(d["stop"])
    for flag, key in (("--stop-patience", "patience"), ("--stop-every", "every"), ("--stop-images", "images")):
        f.add_argument(flag, type=int, default=sd[key])
    f.add_argument("--stop-ts", type=float, nargs="+", default=sd["ts"])
    _add_data_args(f)
    e = sub.add_parser("evaluate", help="evaluate a fitted curve or the straight line")
    for flag in ("--start", "--end"):
        e.add_argument(flag, required=True)
    e.add_argument("--curve", help="curve.pt from 'fit'; omit to evaluate the straight line")
    e.add_argument("--out", required=True, help="output CSV")
    e.add_argument("--points", type=int, default=PATH_DEFAULTS["points"])
    _add_data_args(e)
    p = sub.add_parser("plane", help="loss plane through w1, w2 and a bend, with projections")
    for flag in ("--w1", "--w2"):
        p.add_argument(flag, required=True)
    p.add_argument("--bend", required=True, help="curve.pt (its first bend) or a model checkpoint")
    p.add_argument("--project", nargs="*", default=[], help="checkpoints to project (label = file stem)")
    p.add_argument("--labels", nargs="*", default=None, help="labels of the --project checkpoints (default: file stems)")
    p.add_argument("--out-dir", required=True, help="writes grid.csv and points.csv")
    p.add_argument("--grid-points", type=int, nargs="+", default=None,
                   help=f"n (an n x n grid) or n_u n_v (default {PLANE_DEFAULTS['grid']})")
    p.add_argument("--margin", type=float, nargs="+", default=None,
                   help=f"one value, or four (left right bottom top) (default {PLANE_DEFAULTS['margin']})")
    _add_data_args(p)
    return ap


def _data_spec(args) -> tuple[dict, dict]:
    """(the data block from --spec and the data flags, the whole --spec file)."""
    spec: dict = {}
    if args.spec:
        p = Path(args.spec)
        if not p.exists():
            raise ConfigError(f"--spec: {p} does not exist")
        import yaml

        spec = yaml.safe_load(p.read_text()) if p.suffix in (".yaml", ".yml") else json.loads(p.read_text())
        if not isinstance(spec, dict):
            raise ConfigError(f"--spec: {p} must hold a mapping")
    data = dict(spec.get("data", spec) if "data" in spec else spec)
    for key in ("name", "root", "cache_dir", "train_per_class", "test_per_class", "subset_seed"):
        val = getattr(args, "data" if key == "name" else key)
        if val is not None:
            data[key] = val
    if "name" not in data:
        raise ConfigError("data: no data set name (give --data or a --spec file with data.name)")
    return data, spec


def curves_main(argv: Sequence[str] | None = None) -> int:
    """``python -m closerlook.curves fit|evaluate|plane`` (console script ``closerlook-curves``): the
    workflow's curve stages on files."""
    args = _curves_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    common = {"eval_train_images": args.eval_train_images, "bn_batches": args.bn_batches}
    if args.eval_batch_size:
        common["eval_batch_size"] = args.eval_batch_size
    try:
        data, spec = _data_spec(args)
        allow = [*args.allow_factory, *([spec["model"]["name"]] if isinstance(spec.get("model"), dict) else [])]
        if args.cmd == "fit":
            augment = args.augment if args.augment is not None else bool(spec.get("augment", False))
            settings = {"kind": args.kind, "num_bends": args.num_bends, "epochs": args.epochs, "lr": args.lr,
                        "momentum": args.momentum, "weight_decay": args.wd, "batch_size": args.batch_size,
                        "t_per_batch": args.t_per_batch, "schedule": args.schedule, "augment": augment,
                        "plateau_patience": args.plateau_patience,
                        "t_sampling": args.t_sampling, "t_split": args.t_split,
                        "resume": not args.no_resume, "checkpoint_epochs": args.checkpoint_epochs,
                        "resume_every": args.resume_every, "stop": None}
            if not args.no_stop:
                settings["stop"] = {"min_delta": args.stop_min_delta, "patience": args.stop_patience,
                                    "every": args.stop_every, "images": args.stop_images, "ts": args.stop_ts}
            stages.fit_curve(args.start, args.end, args.out, settings, data, seed=args.seed, device=args.device, log=log,
                             factories=allow)
        elif args.cmd == "evaluate":
            stages.evaluate_path(args.start, args.end, args.out, {"points": args.points, **common}, data,
                                 curve=args.curve, device=args.device, log=log, factories=allow)
        else:
            settings = dict(common)
            if args.grid_points is not None:
                if len(args.grid_points) not in (1, 2):
                    raise ConfigError("--grid-points: give n (an n x n grid) or n_u n_v")
                settings["grid"] = args.grid_points * 2 if len(args.grid_points) == 1 else args.grid_points
            if args.margin is not None:
                if len(args.margin) not in (1, 4):
                    raise ConfigError("--margin: give one value or four (left right bottom top)")
                settings["margin"] = args.margin[0] if len(args.margin) == 1 else args.margin
            stages.plane(args.w1, args.w2, args.bend, args.out_dir, settings, data, project=args.project,
                         labels=args.labels, device=args.device, log=log, factories=allow)
    except CloserlookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
