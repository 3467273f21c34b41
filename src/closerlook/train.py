"""Training engine: one run spec (docs/DESIGN.md) -> one run directory.

``train_run(spec, out_dir)`` trains with SGD/Adam, a per-iteration schedule
(:mod:`closerlook.schedules`) times linear warmup, optional freezing of named
parameter groups for the first K iterations, true large batches or gradient
accumulation (``micro_batch_size``), optional Hinton distillation, and writes

- ``epoch{E}.pt`` / ``iter{I}.pt`` (iteration 0 = initialisation) / ``final.pt``
  via :func:`closerlook.io.save_checkpoint`;
- ``metrics.csv`` (one row per epoch), ``status.json`` (written last);
- ``resume.pt`` (model, optimizer, scheduler, RNG, data position, metrics so
  far), rewritten atomically every ``resume_every`` iterations and at every
  epoch end, removed once the run is complete.

A killed run restarted with the same spec continues from ``resume.pt``; on CPU
the final weights are bitwise identical to an uninterrupted run (the data order
and augmentation of an epoch depend only on (seed, epoch), the lr is a closed
form of the iteration, and the RNG state is saved). Checkpoints already on
disk are never rewritten.

A NaN/inf training loss (or non-finite weights at a checkpoint) stops the run
as ``diverged``: every promised checkpoint not yet written is written with
``model: None``, metrics and status are written, and the process exits 0.

Gradient accumulation note: with ``micro_batch_size`` the gradient equals the
true large-batch gradient (loss of each micro-batch divided by the number of
micro-batches) for models without batch norm. With batch norm the batch
statistics (and the running-statistics updates) are those of each
micro-batch, so an accumulated run is *not* the same as a true large batch:
use a true batch (no ``micro_batch_size``) where memory allows.

CLI: ``python -m closerlook.train --spec run.yaml --out DIR [--set key=value ...]`` (in :mod:`closerlook.cli`).
"""
from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data, devices, models, resume, schedules, sharpness_trace
from .io import CheckpointError, ConfigError, atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from .spec import check_iterations, spec_hash, validate_run_spec
from .tables import METRICS_COLUMNS


# ----------------------------------------------------------------------------- building blocks

def build_optimizer(model: nn.Module, opt: Mapping) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if opt["name"] == "sgd":
        return torch.optim.SGD(params, lr=float(opt["lr"]), momentum=float(opt.get("momentum", 0.0)),
                               weight_decay=float(opt.get("weight_decay", 0.0)),
                               nesterov=bool(opt.get("nesterov", False)), dampening=float(opt.get("dampening", 0.0)))
    if opt["name"] == "adam":
        return torch.optim.Adam(params, lr=float(opt["lr"]), betas=tuple(float(b) for b in opt.get("betas", (0.9, 0.999))),
                                eps=float(opt.get("eps", 1e-8)), weight_decay=float(opt.get("weight_decay", 0.0)),
                                amsgrad=bool(opt.get("amsgrad", False)))
    raise ConfigError(f"optimizer.name: unknown optimizer {opt['name']!r}; choose sgd or adam")


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) to float32 for the loss; float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Batch means; computed in float32 (also under autocast). ``teacher_logits=None``
    gives plain cross-entropy.
    """
    s = _up(student_logits)
    ce = F.cross_entropy(s, targets)
    if teacher_logits is None:
        return ce
    t = float(temperature)
    log_ps = F.log_softmax(s / t, dim=1)
    log_pt = F.log_softmax(_up(teacher_logits).to(s.dtype) / t, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return float(alpha) * t * t * kl + (1.0 - float(alpha)) * ce


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch_size: int | None, *,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         teacher: nn.Module | None = None, autocast=None,
                         forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         ce_sum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one (possibly accumulated) batch; returns (sum of per-sample loss, #correct) as tensors.

    ``ce_sum`` (optional, a float64 scalar tensor): the batch's summed hard-label cross-entropy is added to
    it, for a distilled run whose loss is not a cross-entropy (its "trained" premise reads this).

    ``micro_batch_size`` < len(x): the batch is split into equal micro-batches and
    each micro-batch loss is divided by their number, so the gradient equals the
    full batch's mean-loss gradient (without batch norm).
    """
    forward = model if forward is None else forward
    loss_fn = loss_fn or (lambda s, t, yy: F.cross_entropy(_up(s), yy))
    n = x.shape[0]
    mb = n if not micro_batch_size or micro_batch_size >= n else int(micro_batch_size)
    n_micro = math.ceil(n / mb)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for xm, ym in zip(x.split(mb), y.split(mb)):
        with (autocast() if autocast else contextlib.nullcontext()):
            logits = forward(xm)
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(xm)
            loss = loss_fn(logits, t_logits, ym)
        (loss / n_micro).backward() if n_micro > 1 else loss.backward()
        with torch.no_grad():
            loss_sum += loss.detach().double() * xm.shape[0]
            correct += (logits.detach().argmax(1) == ym).sum()
            if ce_sum is not None:
                ce_sum += F.cross_entropy(_up(logits.detach()), ym, reduction="sum").double()
    return loss_sum, correct


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, autocast=None, forward=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over an (unaugmented) loader, in eval mode."""
    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    n = 0
    with torch.inference_mode():
        for x, y in loader.batches(0):
            with (autocast() if autocast else contextlib.nullcontext()):
                logits = forward(x)
            logits = _up(logits)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    model.train(was_training)
    n = max(n, 1)
    return float(loss_sum) / n, float(correct) / n


class _CompiledOrEager:
    """``torch.compile(model)``, falling back to the eager model if compiling fails on first use."""

    def __init__(self, model: nn.Module, say: Callable[[str], Any]) -> None:
        self.model, self.say, self.ok = model, say, None
        try:
            self.fn = torch.compile(model)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.ok = False
        self.say(f"compile: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                 "running eagerly")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ok is False:
            return self.model(x)
        if self.ok:
            return self.fn(x)
        try:
            out = self.fn(x)
        except Exception as exc:  # no C++ toolchain, unsupported op, ...
            self._fail(exc)
            return self.model(x)
        self.ok = True
        return out




def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    return str(x)


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in METRICS_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def load_teacher(path: str | os.PathLike, device: torch.device, data_info: Mapping,
                 allow: Sequence[str] = ()) -> nn.Module | None:
    """Teacher from a checkpoint (meta['model'] spec), eval mode, no grad; None if it diverged.

    An external factory is imported only when ``allow`` names it (:func:`closerlook.models.check_allowed`)."""
    ck = load_checkpoint(path)
    meta = ck.get("meta", {})
    if ck.get("model") is None:
        return None
    if "model" not in meta:
        raise CheckpointError(f"{path}: teacher checkpoint has no meta['model'] spec to rebuild the network")
    models.check_allowed(meta["model"], allow, str(path))
    dinfo = meta.get("data") or data_info
    teacher = models.build_model(meta["model"], dinfo.get("in_channels", data_info["in_channels"]),
                                 dinfo.get("num_classes", data_info["num_classes"]),
                                 dinfo.get("image_size", data_info["image_size"]))
    try:
        teacher.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: teacher weights do not fit its model spec {meta['model']}: {exc}") from exc
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# ----------------------------------------------------------------------------- the engine

@dataclass
class _Run:
    """Everything a run needs once set up (:func:`_setup`); ``st`` is what resume.pt saves."""

    s: dict
    out: Path
    key: str
    say: Callable[[str], Any]
    device: torch.device
    precision: str
    amp: Callable | None
    train_loader: data.DeviceLoader
    test_loader: data.DeviceLoader
    ipe: int
    total: int
    model: nn.Module
    forward: Callable
    frozen: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    teacher: nn.Module | None
    loss_fn: Callable | None
    base_meta: dict
    st: dict = field(default_factory=lambda: {"iteration": 0, "epoch": 0, "pos": 0, "rows": [], "wall_s": 0.0,
                                              "loss_sum": 0.0, "ce_sum": 0.0, "correct": 0, "count": 0,
                                              "epoch_train_s": 0.0})
    diverged_at: int | None = None
    reason: str = ""
    trace: Any = None  # closerlook.sharpness_trace.Tracer (lambda_max inside training), None: off

    @property
    def ck_epochs(self) -> set:
        return set(self.s["checkpoints"]["epochs"])

    @property
    def ck_iters(self) -> set:
        return set(self.s["checkpoints"]["iterations"])

    def lr(self, iteration: int) -> float:
        return schedules.lr_at(self.s, iteration, self.ipe, self.total)

    def checkpoint(self, name: str, iteration: int, status: str = "ok") -> None:
        path = self.out / name
        if path.exists():  # never rewritten (a resumed run would write the same bytes anyway)
            return
        meta = dict(self.base_meta, epoch=iteration / self.ipe, iteration=iteration, status=status,
                    lr=self.lr(iteration) if iteration < self.total else None)
        save_checkpoint(path, self.model.state_dict() if status == "ok" else None, meta)

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def diverge(self, iteration: int, reason: str) -> None:
        self.diverged_at, self.reason = iteration, reason


def _status_complete(out: Path, key: str) -> dict | None:
    st_path, final = out / "status.json", out / "final.pt"
    if not (st_path.exists() and final.exists()):
        return None
    try:
        st = json.loads(st_path.read_text())
    except (OSError, ValueError):
        return None
    if st.get("complete") and st.get("spec_hash") == key and st.get("status") in ("ok", "diverged"):
        return st
    return None


def train_run(spec: Mapping, out_dir: str | os.PathLike, *, progress: Callable[[str], Any] | None = print,
              factories: Sequence[str] = ()) -> dict:
    """Train one run into ``out_dir`` (resuming from ``out_dir/resume.pt`` when present).

    ``factories``: external model factories a distillation teacher's checkpoint may name (those the
    config names; the run's own model is always allowed).

    Returns ``{"status": "ok"|"diverged", "epoch", "iteration", "train_loss", "train_acc",
    "test_loss", "test_acc", "wall_s", "images_per_s", ...}``.
    """
    say = progress or (lambda _m: None)
    s = validate_run_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = _status_complete(out, spec_hash(s))
    if done is not None:
        say(f"{out}: already complete ({done['status']}); nothing to do")
        return dict(done.get("final", {}), status=done["status"])
    run = _setup(s, out, say, [*factories, s["model"]["name"]])
    clock = _resume_or_fresh(run)
    acc = {"loss": torch.tensor(run.st["loss_sum"], dtype=torch.float64, device=run.device),
           # hard-label cross-entropy, kept apart from the loss only where they differ (distillation)
           "ce": torch.tensor(run.st.get("ce_sum", 0.0), dtype=torch.float64, device=run.device),
           "correct": torch.tensor(run.st["correct"], dtype=torch.int64, device=run.device)}
    t_train = 0.0
    run.model.train()
    while run.diverged_at is None and run.st["epoch"] < s["epochs"]:
        t_train = _train_epoch(run, acc, clock)
        if run.diverged_at is None:
            _end_epoch(run, acc, clock, t_train)
    return _finish(run, acc, clock, t_train)


def _setup(s: dict, out: Path, say: Callable[[str], Any], allow: Sequence[str] = ()) -> _Run:
    """Device, data, model (initialised from the seed alone), optimizer, scheduler, teacher."""
    devices.set_threads(s["threads"])
    device = devices.resolve_device(s["device"])
    precision = devices.resolve_precision(s["precision"], device)
    amp = (lambda: devices.autocast(device, precision)) if precision != "fp32" else None
    tr_x, tr_y, te_x, te_y, info = data.load_subsets(s["data"])
    kw = dict(mean=info["mean"], std=info["std"], device=device, channels_last=s["channels_last"])
    train_loader = data.DeviceLoader(tr_x, tr_y, s["batch_size"], augment=s["augment"], shuffle=True, seed=s["seed"],
                                     drop_last=True, **kw)
    test_loader = data.DeviceLoader(te_x, te_y, s["eval_batch_size"], augment=False, shuffle=False, seed=0,
                                    drop_last=False, **kw)
    ipe = len(train_loader)
    if ipe < 1:
        raise ConfigError(f"batch_size: {s['batch_size']} is larger than the training set ({len(tr_y)} images)")
    total = ipe * s["epochs"]
    check_iterations(s["checkpoints"]["iterations"], total)

    resume.seed_everything(s["seed"])
    model = models.build_model(s["model"], info["in_channels"], info["num_classes"], info["image_size"]).to(device)
    if s["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    pmap = dict(model.named_parameters())
    frozen = [pmap[n] for n in models.resolve_freeze(model, s["freeze"]["groups"])] if s["freeze"] else []
    optimizer = build_optimizer(model, s["optimizer"])
    teacher, loss_fn = _teacher(s, device, info, allow)
    key = spec_hash(s)
    data_meta = {k: info[k] for k in ("name", "in_channels", "num_classes", "image_size")}
    base_meta = {"run": s["name"], "seed": s["seed"], "model": s["model"], "data": data_meta, "spec_hash": key,
                 "optimizer": s["optimizer"], "schedule": s["schedule"], "warmup": s["warmup"],
                 "batch_size": s["batch_size"], "iters_per_epoch": ipe, "total_iterations": total}
    run = _Run(s=s, out=out, key=key, say=say, device=device, precision=precision, amp=amp,
               train_loader=train_loader, test_loader=test_loader, ipe=ipe, total=total, model=model,
               forward=_CompiledOrEager(model, say) if s["compile"] else model, frozen=frozen, optimizer=optimizer,
               scheduler=schedules.make_scheduler(optimizer, s, ipe, total), teacher=teacher, loss_fn=loss_fn,
               base_meta=base_meta)
    if s["distill"] and teacher is None:
        run.diverge(0, "teacher checkpoint is marked diverged")
    run.trace = sharpness_trace.Tracer.for_run(run)
    return run


def _teacher(s: dict, device: torch.device, info: Mapping,
             allow: Sequence[str] = ()) -> tuple[nn.Module | None, Callable | None]:
    """The distillation teacher (None when its run diverged) and the loss, or (None, None) without distillation."""
    dist = s["distill"]
    if not dist:
        return None, None
    teacher = load_teacher(dist["teacher"], device, info, allow)
    if teacher is not None and s["channels_last"]:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher, (lambda st, tt, yy: distillation_loss(st, tt, yy, dist["temperature"], dist["alpha"]))


@dataclass
class _Clock:
    """Wall time of the run across resumes: what resume.pt saved plus this process's share."""

    wall0: float
    t_start: float = field(default_factory=time.perf_counter)

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.t_start


def _resume_or_fresh(run: _Run) -> _Clock:
    """Continue from resume.pt (same spec), or start afresh: stale outputs removed, iteration-0 checkpoints."""
    r = resume.load(run.out / "resume.pt", run.key, run.say)
    if r is not None:
        run.model.load_state_dict(r["model"])
        run.optimizer.load_state_dict(r["optimizer"])
        run.scheduler.load_state_dict(r["scheduler"])
        resume.set_rng_state(r["rng"])
        run.st.update(r["state"])
        st = run.st
        run.say(f"resume: continuing {run.s['name']} from iteration {st['iteration']} (epoch {st['epoch']}, batch {st['pos']})")
        return _Clock(st["wall_s"])
    # Anything under our output names is stale (another spec, or a run killed before its first resume
    # save, which would write the same bytes again): remove it, or the "never rewrite an existing
    # checkpoint" rule would keep a stale file.
    stale = [f"epoch{e}.pt" for e in run.ck_epochs] + [f"iter{i}.pt" for i in run.ck_iters]
    stale += ["final.pt", "metrics.csv", "status.json"]
    removed = [name for name in stale if (run.out / name).exists()]
    for name in stale:
        (run.out / name).unlink(missing_ok=True)
    if removed:
        run.say(f"fresh start: removed stale outputs {', '.join(removed)}")
    if 0 in run.ck_iters:
        run.checkpoint("iter0.pt", 0)
    if 0 in run.ck_epochs:
        run.checkpoint("epoch0.pt", 0)
    return _Clock(0.0)


def _save_resume(run: _Run, acc: dict, clock: _Clock) -> None:
    run.st["wall_s"] = clock.wall()
    resume.save(run.out / "resume.pt", run.key, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "rng": resume.rng_state(), "state": dict(run.st)})


def _train_epoch(run: _Run, acc: dict, clock: _Clock) -> float:
    """The batches of the current epoch from the saved position; returns this epoch's training seconds."""
    s, st = run.s, run.st
    freeze_until = s["freeze"]["iterations"] if s["freeze"] else 0
    # the loss is checked every iteration on a CPU, every 8 on a GPU (each check synchronises)
    check_every = 1 if run.device.type == "cpu" else 8
    sleep = float(os.environ.get("CLOSERLOOK_TEST_ITER_SLEEP", "0") or 0)  # test hook: slow runs down
    t0 = time.perf_counter()
    for x, y in run.train_loader.batches(st["epoch"], st["pos"]):
        it = st["iteration"]
        for p in run.frozen:
            p.requires_grad_(it >= freeze_until)
        if run.trace is not None:
            run.trace.before_step(it, x, y)
        run.optimizer.zero_grad(set_to_none=True)
        ls, cor = accumulate_gradients(run.model, x, y, s["micro_batch_size"], loss_fn=run.loss_fn,
                                       teacher=run.teacher, autocast=run.amp, forward=run.forward,
                                       ce_sum=acc["ce"] if run.teacher is not None else None)
        if (it + 1) % check_every == 0 or (it + 1) in run.ck_iters or (it + 1) % s["resume_every"] == 0:
            if not math.isfinite(float(ls)):
                run.diverge(it, f"non-finite training loss at iteration {it}")
                acc["loss"] += ls
                st["count"] += y.shape[0]
                break
        run.optimizer.step()
        run.scheduler.step()
        acc["loss"] += ls
        acc["correct"] += cor
        st["count"] += y.shape[0]
        st["iteration"], st["pos"] = it + 1, st["pos"] + 1
        if sleep:
            time.sleep(sleep)
        if st["iteration"] in run.ck_iters:
            if not run.weights_finite():
                run.diverge(it, f"non-finite weights after iteration {it}")
                break
            run.checkpoint(f"iter{st['iteration']}.pt", st["iteration"])
        if st["iteration"] % s["resume_every"] == 0 and st["pos"] < run.ipe:
            st["loss_sum"], st["ce_sum"], st["correct"] = float(acc["loss"]), float(acc["ce"]), int(acc["correct"])
            st["epoch_train_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            _save_resume(run, acc, clock)
    if run.diverged_at is None and not math.isfinite(float(acc["loss"])):
        run.diverge(st["iteration"] - 1, "non-finite training loss")
    return st["epoch_train_s"] + time.perf_counter() - t0


def _end_epoch(run: _Run, acc: dict, clock: _Clock, t_train: float) -> None:
    """Test evaluation, the metrics row, the epoch checkpoint, the resume state."""
    s, st = run.s, run.st
    e1 = st["epoch"] + 1
    n = max(st["count"], 1)
    train_loss, train_acc = float(acc["loss"]) / n, int(acc["correct"]) / n
    train_ce = float(acc["ce"]) / n if run.teacher is not None else train_loss
    if e1 % s["eval_every"] == 0 or e1 == s["epochs"]:
        test_loss, test_acc = evaluate(run.model, run.test_loader, autocast=run.amp, forward=run.forward)
    else:
        test_loss, test_acc = float("nan"), float("nan")
    lr_now = run.lr(st["iteration"] - 1)
    row = {"epoch": e1, "iteration": st["iteration"], "lr": lr_now, "train_loss": train_loss,
           "train_acc": train_acc, "train_ce": train_ce, "test_loss": test_loss, "test_acc": test_acc, "wall_s": round(clock.wall(), 3),
           "images_per_s": round(st["count"] / max(t_train, 1e-9), 1), "status": "ok"}
    if (e1 in run.ck_epochs or e1 == s["epochs"]) and not run.weights_finite():
        run.diverge(st["iteration"] - 1, f"non-finite weights at the end of epoch {e1}")
        return
    st["rows"].append(row)
    write_metrics(run.out / "metrics.csv", st["rows"])
    if e1 in run.ck_epochs:
        run.checkpoint(f"epoch{e1}.pt", st["iteration"])
    run.say(f"epoch {e1}/{s['epochs']} it {st['iteration']} lr {lr_now:.4g} train_loss {train_loss:.4f} "
            f"train_acc {train_acc:.4f} test_loss {test_loss:.4f} test_acc {test_acc:.4f} "
            f"img/s {row['images_per_s']:.0f}")
    st.update(epoch=e1, pos=0, loss_sum=0.0, ce_sum=0.0, correct=0, count=0, epoch_train_s=0.0)
    acc["loss"].zero_()
    acc["ce"].zero_()
    acc["correct"].zero_()
    if e1 < s["epochs"]:
        _save_resume(run, acc, clock)


def _finish(run: _Run, acc: dict, clock: _Clock, t_train: float) -> dict:
    """final.pt, metrics, status.json (written last); a diverged run writes every promised checkpoint without weights."""
    st, nan = run.st, float("nan")
    if run.diverged_at is not None:
        n = max(st["count"], 1)
        st["rows"].append({"epoch": st["epoch"] + 1, "iteration": st["iteration"], "lr": run.lr(max(st["iteration"] - 1, 0)),
                           "train_loss": nan, "train_acc": int(acc["correct"]) / n, "test_loss": nan, "test_acc": nan,
                           "wall_s": round(clock.wall(), 3), "images_per_s": round(st["count"] / max(t_train, 1e-9), 1),
                           "status": "diverged"})
        run.say(f"diverged: {run.reason}; writing the remaining checkpoints as diverged")
        for e in sorted(run.ck_epochs):
            run.checkpoint(f"epoch{e}.pt", e * run.ipe, status="diverged")
        for i in sorted(run.ck_iters):
            run.checkpoint(f"iter{i}.pt", i, status="diverged")
        run.checkpoint("final.pt", run.total, status="diverged")
        final = {"epoch": st["epoch"], "iteration": st["iteration"], "train_loss": nan, "train_acc": nan,
                 "test_loss": nan, "test_acc": nan}
    else:
        run.checkpoint("final.pt", run.total)
        final = {k: st["rows"][-1][k] for k in ("epoch", "iteration", "train_loss", "train_acc", "test_loss", "test_acc")}
    status = "ok" if run.diverged_at is None else "diverged"
    final.update(wall_s=round(clock.wall(), 3), images_per_s=st["rows"][-1]["images_per_s"] if st["rows"] else nan)
    write_metrics(run.out / "metrics.csv", st["rows"])
    if run.trace is not None:
        run.trace.write()
    status_obj = {"status": status, "complete": True, "run": run.s["name"], "seed": run.s["seed"], "spec_hash": run.key,
                  "final": _jsonable(final), "device": str(run.device), "precision": run.precision,
                  "iters_per_epoch": run.ipe, "total_iterations": run.total}
    if run.diverged_at is not None:
        status_obj.update(diverged_at_iteration=run.diverged_at, reason=run.reason)
    atomic_write_json(run.out / "status.json", status_obj)
    (run.out / "resume.pt").unlink(missing_ok=True)
    return dict(final, status=status)


def _jsonable(d: Mapping) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


if __name__ == "__main__":  # pragma: no cover  (`python -m closerlook.train`: the command line is in closerlook.cli)
    from closerlook.cli import train_main

    sys.exit(train_main())
