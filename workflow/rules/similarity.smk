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
        # numpy on the CPU: the table never touches a GPU (the controls below capture with torch)
        **stage_resources("similarity", gpu=False, runtime=60),
    conda:
        ENV
    script:
        "../../scripts/similarity.py"


# Positive controls of the similarity measures (closerlook.controls): layer identification between two
# seeds of one recipe (their activation stores), change detection on one checkpoint with a middle layer
# re-initialised (captured inside the job). One job: claims reads all four outputs together.
# CTRL and _controls_inputs: common.smk.
if CTRL:

    rule similarity_controls:
        input:
            unpack(_controls_inputs),
        output:
            controls=P.controls_table(R),
            controls_md=P.controls_markdown(R),
            identification=P.identification_table(R),
            change_detection=P.change_detection_table(R),
        params:
            settings=CTRL,
            act=ACT,
            data=DATA,
            probe_size=C.probe_size(config),
        log:
            P.log(R, "similarity", "controls"),
        threads: stage_threads("similarity")
        resources:
            **stage_resources("similarity", runtime=60),
        conda:
            ENV
        script:
            "../../scripts/similarity_controls.py"
