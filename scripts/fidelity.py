"""Rule fidelity: the students' top-1 agreement with and KL from their teacher (closerlook.fidelity)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage="fidelity") as ctx:
    stages.fidelity(smk.params.pairs, smk.params.data, smk.output[0], smk.params.settings,
                    device=ctx["device"], factories=model_factories(smk.config))
