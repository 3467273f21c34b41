# Two commands for a newcomer: `make demo` and `make test` (both create .venv when missing).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
DEMO_CONFIG ?= config/demo.yaml
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: demo demo-extra test bench venv data-demo lint clean-demo gpu-check gpu-smoke findings

# Reinstall only when the project metadata or the pins change (editable install: code edits need
# none). pyproject.toml declares ranges; constraints.txt pins the versions the tests ran with.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,reports]'
	@touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (offline).
data-demo:
	@if ! ls $(FMNIST_DIR)/train-images-idx3-ubyte.gz >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian package dataset-fashion-mnist for the demo data"; \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "error: Fashion-MNIST not found in $(FMNIST_DIR); run 'sudo apt-get install dataset-fashion-mnist' or set FMNIST_DIR to a folder with the four *-ubyte.gz files" >&2; exit 2; \
	  fi; \
	fi

demo: $(STAMP) data-demo
	$(BIN)/snakemake --cores $(CORES) --configfile $(DEMO_CONFIG) --rerun-incomplete --printshellcmds
	$(BIN)/snakemake --cores $(CORES) --configfile $(DEMO_CONFIG) --report results/demo/report.html

# README's findings table, written from the finished demo's claims.json (with commit, machine, date).
findings: $(STAMP)
	$(BIN)/python -m closerlook.report_table results/demo/claims.json --readme README.md

# Beyond the paper at CPU scale: the older lenses (fig7_lenses, fig8_sharpness), AutoNEB, weight
# matching + REPAIR and the ensemble comparison (fig9_ensembles), on their own small runs: config/demo_extra.yaml.
demo-extra: $(STAMP) data-demo
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo_extra.yaml --rerun-incomplete --printshellcmds
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo_extra.yaml --report results/demo_extra/report.html

# PYTEST_RC_FILE (optional): where to record pytest's own exit status (make maps it to 2).
test: $(STAMP) data-demo
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ -n "$(PYTEST_RC_FILE)" ]; then echo $$rc > "$(PYTEST_RC_FILE)"; fi; exit $$rc

bench: $(STAMP) data-demo
	$(BIN)/python -m bench.run

# No venv needed: bench/gpu_check.sh runs with .venv's python, else a system python3 that has
# torch (a rented GPU machine), with PYTHONPATH=src.
gpu-check:
	bash bench/gpu_check.sh

# The paper DAG shrunk to minutes on one GPU (config/gpu_smoke.yaml). Two jobs at a time: one
# starts up (imports, data) while the other holds the GPU (each job locks a GPU for itself).
gpu-smoke: $(STAMP)
	$(BIN)/snakemake --cores 8 --resources gpu=2 --configfile config/gpu_smoke.yaml --rerun-incomplete

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/config.yaml
