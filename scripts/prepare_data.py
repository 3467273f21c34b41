"""Rule prepare_data: decode the data set once into the uint8 caches; record its facts."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.data import load_split, probe_fingerprint, probe_set, stratified_subset  # noqa: E402
from closerlook.io import atomic_write_json  # noqa: E402
from closerlook.jobs import job  # noqa: E402

smk = snakemake  # noqa: F821
d = smk.params.data
with job(smk, stage="prepare_data"):
    facts = {}
    for split in ("train", "test"):
        images, labels, info = load_split(d["name"], split, root=d.get("root"), cache_dir=d.get("cache_dir", "resources/data"), download=d.get("download", True))
        per_class = d.get(f"{split}_per_class")
        idx = stratified_subset(labels, per_class, d.get("subset_seed", 0))
        facts[split] = {"total": int(labels.numel()), "used": int(idx.numel()), "per_class": per_class}
        if split == "train":
            probe = probe_set(images[idx], smk.params.probe_size)
            facts["probe"] = {"size": int(probe.shape[0]), "fingerprint": probe_fingerprint(probe)}
    facts["info"] = info
    print(facts)
    atomic_write_json(smk.output.info, facts)
