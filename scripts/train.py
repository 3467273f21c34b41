"""Rule train_<run>: one training run (one seed); resumes after a kill."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.jobs import job, publish  # noqa: E402
from closerlook.train import train_run  # noqa: E402

smk = snakemake  # noqa: F821
with job(smk, stage=f"train {smk.params.spec['name']} seed {smk.params.spec['seed']}") as ctx:
    spec = dict(smk.params.spec, device=ctx["device"], threads=ctx["threads"])
    train_run(spec, smk.params.workdir)
    publish(smk.params.workdir, smk.output)
