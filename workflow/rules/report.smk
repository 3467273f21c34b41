# Stage 7: the claims report. One verdict per claim of the paper, with the
# measured numbers, the rule and thresholds from config["claims"], and seeds.


rule claims:
    input:
        _claims_inputs,
    output:
        json=report(f"{R}/claims.json", caption="../report/claims.rst", category="Claims"),
        md=report(f"{R}/claims.md", caption="../report/claims.rst", category="Claims"),
    params:
        layouts=lambda wc: {fig: C.figure_layout(config, fig)[0] for fig in C.figure_names(config)},
        rules=C.claim_rules(config),
    log:
        log_path("report", "claims"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/claims.py"
