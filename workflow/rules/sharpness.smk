# Stage 3c: sharpness (config `sharpness:`). Lanczos lambda_max / lambda_min and
# Hutchinson's trace (with its standard error) of the training loss on a fixed
# subset, at t-points along the fitted curve and the straight line of one curve's
# pair, and at chosen checkpoints; eval mode, BN statistics recomputed first.


rule sharpness_path:
    input:
        unpack(lambda wc: _path_inputs(wc)),
        data=DATA_CACHE,
    output:
        P.sharpness_path(R, "{curve}", "{inst}", "{path}"),
    params:
        settings=SHARP,
        data=DATA,
    log:
        P.log(R, "sharpness", "{curve}", "{inst}-{path}"),
    threads: stage_threads("sharpness")
    resources:
        **stage_resources("sharpness"),
    conda:
        ENV
    script:
        "../../scripts/sharpness_path.py"


rule sharpness_checkpoint:
    input:
        ckpt=P.checkpoint(R, "{run}", "{seed}", "{tag}"),
        data=DATA_CACHE,
    output:
        P.sharpness_checkpoint(R, "{run}", "{seed}", "{tag}"),
    params:
        settings=SHARP,
        data=DATA,
        label=lambda wc: f"{wc.run}/seed{wc.seed}/{wc.tag}",
    log:
        P.log(R, "sharpness", "checkpoints", "{run}-seed{seed}-{tag}"),
    threads: stage_threads("sharpness")
    resources:
        **stage_resources("sharpness", runtime=120),
    conda:
        ENV
    script:
        "../../scripts/sharpness_checkpoint.py"
