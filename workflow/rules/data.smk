# Stage 1: data. Decode the data set once into cached uint8 tensors that every
# training, curve and activation job reads.
DATA = C.data_spec(config)
DATA_CACHE = [f"{DATA['cache_dir']}/{DATA['name']}-{split}.pt" for split in ("train", "test")]


rule prepare_data:
    output:
        cache=DATA_CACHE,
        info=f"{R}/data/info.json",
    params:
        data=config["data"],
        probe_size=config["data"].get("probe_size", 1000),
    log:
        log_path("data", "prepare"),
    threads: 1
    resources:
        mem_mb=res("data", "mem_mb", 4000),
        runtime=res("data", "runtime", 30),
    conda:
        ENV
    script:
        "../../scripts/prepare_data.py"
