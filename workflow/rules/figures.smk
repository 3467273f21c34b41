# Stage 6: figures. Each figure is its own target:
#   snakemake results/<name>/figures/<figure>.pdf
# runs only what that figure needs.


rule figure:
    input:
        _figure_inputs,
    output:
        report(
            multiext(P.figure_stem(R, "{figure}"), *[f".{e}" for e in C.figure_formats(config)]),
            caption="../report/figure.rst",
            category="Figures",
        ),
    params:
        layout=lambda wc: figure_layout(wc.figure)[0],
        options=lambda wc: C.figure_options(config, wc.figure),
    wildcard_constraints:
        figure="|".join(P.FIGURES),
    log:
        P.log(R, "figures", "{figure}"),
    resources:
        **stage_resources("figures", gpu=False, mem_mb=4000, runtime=30),
    conda:
        ENV
    script:
        "../../scripts/figure.py"
