"""Rule data_info: the subsets and probe set this config uses (sizes, fingerprint)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.data import load_subsets, probe_fingerprint, probe_set  # noqa: E402
from closerlook.io import atomic_write_json  # noqa: E402
from closerlook.jobs import job  # noqa: E402

smk = snakemake  # noqa: F821
with job(smk, stage="data_info"):
    xtr, ytr, xte, yte, info = load_subsets(smk.params.data)
    probe = probe_set(xtr, smk.params.probe_size)
    facts = {"data": smk.params.data, "info": info, "train_images": int(ytr.numel()), "test_images": int(yte.numel()),
             "probe": {"size": int(probe.shape[0]), "fingerprint": probe_fingerprint(probe)}}
    print(facts)
    atomic_write_json(smk.output[0], facts)
