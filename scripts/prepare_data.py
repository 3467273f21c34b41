"""Rule prepare_data: decode the data set once into its uint8 caches (downloads CIFAR-10 if asked)."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage="prepare_data"):
    stages.prepare_data(smk.params.source, smk.params.cache_dir)
