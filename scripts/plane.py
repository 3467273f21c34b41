"""Rule plane: loss surface on the plane (w1, w2, bend) with projected checkpoints."""
from pathlib import Path

from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"plane {smk.wildcards.plane} {smk.wildcards.inst}") as ctx:
    stages.plane(smk.input.start, smk.input.end, smk.input.curve, str(Path(smk.output.grid).parent),
                 smk.params.settings, smk.params.data, project=list(smk.input.project), device=ctx["device"],
                 factories=model_factories(smk.config))
