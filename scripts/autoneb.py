"""Rule autoneb: AutoNEB between a curve's endpoints, then the chain evaluated like a curve."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"autoneb {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    stages.autoneb(smk.input.start, smk.input.end, dict(smk.output.items()), smk.params.settings,
                   smk.params.eval_settings, smk.params.data, device=ctx["device"])
