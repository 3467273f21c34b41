# Stage 1: data. Decode the data set once into cached uint8 tensors that every
# training, curve and activation job reads. The cache depends only on the data
# set (name, root), so configs that share a data set share it; the subsets and
# the probe set of this config are recorded in results/<name>/data/info.json.
DATA = C.data_spec(config)
DATA_CACHE = [P.data_cache(DATA["cache_dir"], DATA["name"], split) for split in P.SPLITS]


rule prepare_data:
    output:
        DATA_CACHE,
    params:
        source=C.data_source(config),
        cache_dir=lambda wc, output: os.path.dirname(output[0]),
    log:
        P.data_log(DATA["cache_dir"], DATA["name"]),
    resources:
        **stage_resources("data", gpu=False, mem_mb=4000, runtime=30),
    conda:
        ENV
    script:
        "../../scripts/prepare_data.py"


rule data_info:
    input:
        DATA_CACHE,
    output:
        P.data_info(R),
    params:
        data=DATA,
        probe_size=C.probe_size(config),
    log:
        P.log(R, "data", "info"),
    resources:
        **stage_resources("data", gpu=False, mem_mb=4000, runtime=10),
    conda:
        ENV
    script:
        "../../scripts/data_info.py"
