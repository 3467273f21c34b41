# Stage 4: activations. Capture every analysis layer of one checkpoint on the
# fixed probe set (first N training images, unaugmented, eval mode).


rule extract_activations:
    input:
        ckpt=P.checkpoint(R, "{run}", "{seed}", "{tag}"),
        data=DATA_CACHE,
    output:
        directory(P.activation_dir(R, "{run}", "{seed}", "{tag}")),
    params:
        settings=ACT,
        data=DATA,
        probe_size=C.probe_size(config),
    log:
        P.log(R, "activations", "{run}", "seed{seed}-{tag}"),
    threads: stage_threads("activations")
    resources:
        **stage_resources("activations", runtime=60),
    conda:
        ENV
    script:
        "../../scripts/extract_activations.py"
