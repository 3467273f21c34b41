"""Rule extract_activations: every analysis layer of one checkpoint on the fixed probe set."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"activations {smk.input.ckpt}") as ctx:
    stages.extract_activations(smk.input.ckpt, str(smk.output[0]), smk.params.settings, smk.params.data,
                               smk.params.probe_size, device=ctx["device"],
                               factories=model_factories(smk.config))
