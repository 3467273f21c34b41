# Stage 1: data. Decode the data set once into cached uint8 tensors that every
# training, curve and activation job reads. The cache depends only on the data
# set (name, root), so configs that share a data set share it; the subsets and
# the probe set of this config are recorded in results/<name>/data/info.json.
DATA = C.data_spec(config)
DATA_CACHE = [f"{DATA['cache_dir']}/{DATA['name']}-{split}.pt" for split in ("train", "test")]


rule prepare_data:
    output:
        DATA_CACHE,
    params:
        source={k: config["data"].get(k) for k in ("name", "root", "download")},
    log:
        f"{DATA['cache_dir']}/logs/prepare_{DATA['name']}.log",
    threads: 1
    resources:
        mem_mb=res("data", "mem_mb", 4000),
        runtime=res("data", "runtime", 30),
    conda:
        ENV
    script:
        "../../scripts/prepare_data.py"


rule data_info:
    input:
        DATA_CACHE,
    output:
        f"{R}/data/info.json",
    params:
        data=DATA,
        probe_size=config["data"].get("probe_size", 1000),
    log:
        log_path("data", "info"),
    threads: 1
    resources:
        mem_mb=res("data", "mem_mb", 4000),
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/data_info.py"
