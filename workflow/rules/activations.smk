# Stage 4: activations. Capture every analysis layer of one checkpoint on the
# fixed probe set (first N training images, unaugmented, eval mode).


rule extract_activations:
    input:
        ckpt=f"{R}/runs/{{run}}/seed{{seed}}/{{tag}}.pt",
        data=DATA_CACHE,
    output:
        directory(f"{R}/activations/{{run}}/seed{{seed}}/{{tag}}"),
    params:
        settings=ACT,
        data=DATA,
        probe_size=config["data"].get("probe_size", 1000),
    log:
        log_path("activations", "{run}", "seed{seed}-{tag}"),
    threads: res("activations", "threads", 1)
    resources:
        gpu=GPU,
        mem_mb=res("activations", "mem_mb", 8000),
        runtime=res("activations", "runtime", 60),
    conda:
        ENV
    script:
        "../../scripts/extract_activations.py"
