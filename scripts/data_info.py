"""Rule data_info: the subsets and probe set this config uses (sizes, fingerprint)."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage="data_info"):
    print(stages.data_info(smk.params.data, smk.params.probe_size, smk.output[0]))
