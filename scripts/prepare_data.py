"""Rule prepare_data: decode the data set once into its uint8 caches (downloads CIFAR-10 if asked)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.data import load_split  # noqa: E402
from closerlook.jobs import job  # noqa: E402

smk = snakemake  # noqa: F821
src = smk.params.source
cache_dir = str(smk.output[0]).rsplit("/", 1)[0]
with job(smk, stage="prepare_data"):
    for split in ("train", "test"):
        images, labels, info = load_split(src["name"], split, root=src.get("root"), cache_dir=cache_dir,
                                          download=src.get("download", True))
        print(f"{src['name']} {split}: {tuple(images.shape)} -> {cache_dir}")
