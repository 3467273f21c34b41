# Stage 5: representation similarity. Per-layer CCA / SVCCA / CKA (and the
# chance baseline) between the activations of two checkpoints.


rule similarity:
    input:
        unpack(_comparison_inputs),
    output:
        P.similarity_table(R, "{comparison}", "{inst}"),
    params:
        settings=SIM,
        labels=lambda wc: [ep.label for ep in comparison_instances(wc.comparison)[wc.inst]],
    log:
        P.log(R, "similarity", "{comparison}", "{inst}"),
    threads: stage_threads("similarity")
    resources:
        **stage_resources("similarity", runtime=60),
    conda:
        ENV
    script:
        "../../scripts/similarity.py"
