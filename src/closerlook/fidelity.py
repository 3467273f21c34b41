"""Distillation as fidelity (Stanton et al., NeurIPS 2021, "Does knowledge distillation really work?").

How closely a student matches its teacher's predictions, on the test set and on the training images
(the images distillation itself fitted), for the distilled student and for the independent (label-only)
student of the same seed:

* ``agreement``: top-1 agreement, the share of images where student and teacher predict the same class;
* ``kl``: mean KL(teacher || student) at temperature T = 1, in nats:
  ``mean_i sum_c p_t(c|x_i) (log p_t(c|x_i) - log p_s(c|x_i))`` with ``p = softmax(logits / T)``.
  The direction is Stanton's: the teacher's distribution is the reference the student is scored against.

One implementation, shared by fig6's fidelity panel (:mod:`closerlook.figures_fidelity`), the "Beyond the
paper" verdicts (:mod:`closerlook.explanations`) and claim 7's premise (interface B: the table
``results/<name>/distill/fidelity.csv``, one row per (student, seed, split), columns :data:`COLUMNS`).

Both networks are in eval mode (BN with the checkpoint's running statistics, as the test accuracy of
``metrics.csv`` is measured), on unaugmented images in the stored order.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from .defaults import FIDELITY_DEFAULTS  # noqa: F401 (its owner is the torch-free defaults table)

STUDENTS = ("distilled", "independent")
SPLITS = ("test", "train")
COLUMNS = ("student", "seed", "split", "agreement", "kl", "n_images", "status")


def kl_teacher_student(teacher_logits, student_logits, temperature: float = 1.0):
    """Per-image KL(p_t || p_s) with ``p = softmax(logits / temperature)`` (a float64 tensor, nats)."""
    import torch

    t = torch.as_tensor(teacher_logits, dtype=torch.float64) / float(temperature)
    s = torch.as_tensor(student_logits, dtype=torch.float64) / float(temperature)
    lt, ls = torch.log_softmax(t, dim=1), torch.log_softmax(s, dim=1)
    return (lt.exp() * (lt - ls)).sum(dim=1)


def agreement(teacher_logits, student_logits):
    """Per-image top-1 agreement (bool tensor)."""
    import torch

    return torch.as_tensor(teacher_logits).argmax(1) == torch.as_tensor(student_logits).argmax(1)


def fidelity(teacher_logits, student_logits, temperature: float = 1.0) -> dict:
    """``{"agreement", "kl", "n_images"}`` of one student against its teacher on the same images."""
    n = int(len(teacher_logits))
    if n == 0 or len(student_logits) != n:
        raise ValueError(f"fidelity: {n} teacher and {len(student_logits)} student logits")
    kl = kl_teacher_student(teacher_logits, student_logits, temperature)
    return {"agreement": float(agreement(teacher_logits, student_logits).double().mean()),
            "kl": float(kl.mean()), "n_images": n}


def logits(module, state: Mapping, loader) -> Any:
    """The network's logits on every batch of ``loader`` (eval mode, no grad), concatenated, on the CPU."""
    import torch

    module.load_state_dict(state)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = [module(x).detach().double().cpu() for x, _y in loader]
    finally:
        module.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def diverged_rows(student: str, seed: int, n: Mapping[str, int]) -> list[dict]:
    return [{"student": student, "seed": int(seed), "split": sp, "agreement": math.nan, "kl": math.nan,
             "n_images": int(n.get(sp, 0)), "status": "diverged"} for sp in SPLITS]


def rows_for(teacher: Mapping[str, Any], student: Mapping[str, Any] | None, role: str, seed: int,
             temperature: float = 1.0) -> list[dict]:
    """Rows (one per split) of one student; ``teacher`` / ``student``: split -> logits (None: diverged)."""
    n = {sp: len(teacher[sp]) for sp in SPLITS if teacher is not None}
    if student is None or teacher is None:
        return diverged_rows(role, seed, n)
    out = []
    for sp in SPLITS:
        f = fidelity(teacher[sp], student[sp], temperature)
        ok = math.isfinite(f["kl"])
        out.append({"student": role, "seed": int(seed), "split": sp, **f, "status": "ok" if ok else "diverged"})
    return out


def sort_rows(rows: Iterable[Mapping]) -> list[dict]:
    key = lambda r: (STUDENTS.index(r["student"]), int(r["seed"]), SPLITS.index(r["split"]))  # noqa: E731
    return sorted((dict(r) for r in rows), key=key)
