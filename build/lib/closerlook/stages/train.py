"""Rule of workflow/rules/train.smk: one training run."""
from __future__ import annotations

import sys
from typing import Mapping, Sequence

from .. import config
from ..io import atomic_write_json
from ..jobs import publish
from ._common import Log


def check_models(cfg: Mapping, output: str) -> list[str]:
    """The model checks planning leaves out (:func:`closerlook.config.check_models`: every run's model built
    on the meta device, its factory imported, its freeze groups resolved); ``output`` lists the runs checked.
    A bad model raises ConfigError naming ``runs.<run>`` before any training job starts. Layers the CCA family
    would compare on too few images per dimension are warned about (:func:`closerlook.config.sample_size_warnings`)
    on stderr and listed in ``output``."""
    runs = config.check_models(dict(cfg))
    warned = config.sample_size_warnings(dict(cfg))
    for w in warned:  # the job's log: a warning, not an error (a study may accept it, said in its config)
        print(f"WARNING similarity sample size: {w}", file=sys.stderr, flush=True)
    atomic_write_json(output, {"checked": runs, "sample_size_warnings": warned})
    return runs


def train(spec: Mapping, workdir: str, outputs: Sequence[str] = (), log: Log | None = print,
          factories: Sequence[str] = ()) -> dict:
    """One training run in ``workdir`` (resumes from its resume state), then its files published onto ``outputs``.

    ``factories`` (here and below): the external model factories the config names, the only ones a
    checkpoint's model spec may make this job import (:func:`closerlook.models.model_from_checkpoint`)."""
    from ..train import train_run

    result = train_run(spec, workdir, progress=log, factories=factories)
    publish(workdir, outputs)
    return result
