"""Rule of workflow/rules/train.smk: one training run."""
from __future__ import annotations

from typing import Mapping, Sequence


from ..jobs import publish
from ._common import Log


def train(spec: Mapping, workdir: str, outputs: Sequence[str] = (), log: Log | None = print,
          factories: Sequence[str] = ()) -> dict:
    """One training run in ``workdir`` (resumes from its resume state), then its files published onto ``outputs``.

    ``factories`` (here and below): the external model factories the config names, the only ones a
    checkpoint's model spec may make this job import (:func:`closerlook.models.model_from_checkpoint`)."""
    from ..train import train_run

    result = train_run(spec, workdir, progress=log, factories=factories)
    publish(workdir, outputs)
    return result
