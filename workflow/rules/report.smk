# Stage 7: the claims report. One verdict per claim of the paper, with the
# measured numbers, the rule and thresholds from config["claims"], and seeds.


rule claims:
    input:
        _claims_inputs,
    output:
        json=report(P.claims_file(R, "json"), caption="../report/claims.rst", category="Claims"),
        md=report(P.claims_file(R, "md"), caption="../report/claims.rst", category="Claims"),
    params:
        layouts=lambda wc: {**{fig: figure_layout(fig)[0] for fig in C.claim_figures(config)},
                            **C.claims_inputs(config)},  # controls / fidelity tables (claims 5b-7)
        rules=C.claim_rules(config),
    log:
        P.log(R, "report", "claims"),
    resources:
        **stage_resources("report", gpu=False, mem_mb=2000, runtime=10),
    conda:
        ENV
    script:
        "../../scripts/claims.py"
