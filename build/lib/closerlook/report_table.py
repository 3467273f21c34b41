"""README's findings table, written from a run's ``claims.json`` (never typed by hand).

``python -m closerlook.report_table results/demo/claims.json`` prints the table (one row per
claim: verdict, main effect, and the reason when it is not a verdict on the paper) under a line
naming the run's file, the commit, the machine and the date; ``--readme README.md`` puts it
between README's ``<!-- findings:begin -->`` / ``<!-- findings:end -->`` markers instead
(``make findings``). Commit: ``git describe --always --dirty`` of the checkout that writes the
table (run it right after the run); machine: CPU model and logical cores from /proc/cpuinfo;
date: the modification time of ``claims.json`` (UTC). Any of them can be given instead.

Torch-free: reads JSON and formats text (:mod:`closerlook.verdicts` for the effect text).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from .verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, effect_text, entry_lists, summary

BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"
WHY_CHARS = 160  # a reason longer than this is cut in README (claims.md has it whole)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def commit_of(repo: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=repo,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    model = ""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {platform.system()}"


def file_date(path: str | Path) -> str:
    return datetime.fromtimestamp(Path(path).stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def findings_table(result: Mapping, source: str, *, commit: str, machine: str, date: str) -> str:
    """The markdown block: provenance line, counts, one table per list of entries (claims, beyond, ...)."""
    level = float((result.get("rules") or {}).get("interval_level", 0.95))
    lines = [f"From `{source}` (commit `{commit}`, {machine}, {date}); written by "
             f"`python -m closerlook.report_table {source}`, not by hand.", ""]
    for key, entries in entry_lists(result):
        s = summary(entries)
        title = "the paper's claims" if key == "claims" else key
        lines += [f"{title}: reproduced {s[REPRODUCED]}, not reproduced {s[NOT_REPRODUCED]}, "
                  f"inconclusive {s[INCONCLUSIVE]}.", "",
                  "| # | claim | verdict | main effect | why (when inconclusive) |", "|---|---|---|---|---|"]
        for c in entries:
            short = str(c.get("claim", "")).split(";")[0].split(" (")[0]
            main = effect_text((c.get("effects") or [None])[0], level)
            why = str(c.get("reason", "")) if c.get("verdict") == INCONCLUSIVE else ""
            why = why if len(why) <= WHY_CHARS else why[:WHY_CHARS].rsplit(" ", 1)[0] + " ... (claims.md)"
            lines.append(f"| {c.get('id', '')} | {_cell(short)} | **{c.get('verdict', '')}** | {_cell(main)} | {_cell(why)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the findings markers replaced by ``block``."""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + block + END + rest.split(END, 1)[1]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m closerlook.report_table", description=__doc__.splitlines()[0])
    ap.add_argument("claims_json", help="a run's claims.json, e.g. results/demo/claims.json")
    ap.add_argument("--readme", help="write the table between the findings markers of this file instead of printing it")
    ap.add_argument("--commit", help="default: git describe of the current checkout")
    ap.add_argument("--machine", help="default: CPU model and cores of this machine")
    ap.add_argument("--date", help="default: claims.json's modification time")
    args = ap.parse_args(argv)
    path = Path(args.claims_json)
    if not path.exists():
        print(f"error: {path} does not exist (run the pipeline first, e.g. make demo)", file=sys.stderr)
        return 2
    block = findings_table(json.loads(path.read_text()), args.claims_json, commit=args.commit or commit_of(),
                           machine=args.machine or machine(), date=args.date or file_date(path))
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(replace_block(readme.read_text(), block))
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
