#!/usr/bin/env bash
# Snakemake runs this once inside the freshly created conda env (`--sdm conda`): it installs
# this checkout into the env, editable, so the rules import `closerlook` and code edits need no
# new env. workflow/rules/common.smk exports CLOSERLOOK_REPO (the Snakefile's folder).
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e "${CLOSERLOOK_REPO:?not set: run through the Snakefile}"
