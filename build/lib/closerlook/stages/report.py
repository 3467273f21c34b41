"""Rule of workflow/rules/report.smk: the claims' verdicts."""
from __future__ import annotations

from typing import Mapping




def claims(layouts: Mapping, rules: Mapping, json_path: str, md_path: str) -> dict:
    from ..claims import evaluate, write_reports

    result = evaluate(layouts, rules)
    write_reports(result, json_path, md_path)
    return result
