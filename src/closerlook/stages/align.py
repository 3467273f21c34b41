"""Rules of workflow/rules/align.smk: weight matching of a curve's end, the aligned / repaired lines."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from .. import curves, landscape
from ..devices import resolve_device
from ..io import ConfigError, save_checkpoint
from ..tables import write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders
from ..settings_types import AlignSettings, CurveSettings


def align_end(start: str, end: str, out: str, settings: Mapping, log: Log = print,
              factories: Sequence[str] = ()) -> None:
    """``end``'s weights permuted to match ``start`` (weight matching), saved as a checkpoint with ``end``'s meta
    plus the L2 distances to ``start`` before and after, and the seconds it took."""
    import time

    from .. import align

    a, b = _endpoint(start), _endpoint(end)
    if a is None or b is None:
        save_checkpoint(out, None, {"status": "diverged", "aligned_to": str(start), "aligned_from": str(end)})
        log("an endpoint diverged: wrote the aligned end marked diverged")
        return
    module = _module(a, start, "cpu", factories)
    t0 = time.perf_counter()
    aligned = align.align(module, a["model"], b["model"], settings)
    seconds = time.perf_counter() - t0
    lay = curves.Layout(module)
    ref = lay.flat_params(a["model"], dtype=torch.float64)
    dist = lambda sd: float((lay.flat_params(sd, dtype=torch.float64) - ref).norm())  # noqa: E731
    meta = {**b["meta"], "aligned_to": str(start), "aligned_from": str(end), "align": dict(settings),
            "distance_before": dist(b["model"]), "distance_after": dist(aligned), "align_s": seconds}
    save_checkpoint(out, aligned, meta)
    log(f"aligned {end} to {start} in {seconds:.1f}s: L2 distance {meta['distance_before']:.3f} -> {meta['distance_after']:.3f}")


def evaluate_aligned(start: str, aligned_end: str, outputs: Mapping[str, str], settings: Mapping, align_settings: Mapping,
                     data: Mapping, device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """Per output kind: the straight line from ``start`` to the aligned end (``"aligned"``) or the same line
    REPAIRed (``"repaired"``, networks without BN; statistics from the first ``repair_images`` training images)."""
    from .. import align

    s, al = CurveSettings.of(settings), AlignSettings.of(align_settings)
    a, b = _endpoint(start), _endpoint(aligned_end)
    if a is None or b is None:
        for kind, out in outputs.items():
            write_csv(landscape.diverged_path_table(s["points"], kind), out)
        log("an endpoint diverged: wrote tables marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev, factories)
    d = _data_block(data)
    tr, te = _eval_loaders(d, dev, s["eval_train_images"], s["eval_batch_size"])
    ts = landscape.path_points(s["points"])
    sa, sb = ({k: v.to(dev) for k, v in e["model"].items()} for e in (a, b))
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if "repaired" in outputs and has_bn:
        raise ConfigError(f"{aligned_end}: REPAIR is for networks without BN (recomputing BN statistics already "
                          "resets them); the aligned line is the corrected one")
    for kind, out in outputs.items():
        rep = _eval_loaders(d, dev, al["repair_images"], s["eval_batch_size"])[0] if kind == "repaired" else None
        write_csv(align.evaluate_line(module, sa, sb, tr, te, ts, repair_loader=rep, label=kind, log=log), out)
