"""Rule train_<run>: one training run (one seed); resumes after a kill."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"train {smk.params.spec['name']} seed {smk.params.spec['seed']}") as ctx:
    stages.train(dict(smk.params.spec, device=ctx["device"], threads=ctx["threads"]), smk.params.workdir, smk.output,
                 factories=model_factories(smk.config))
