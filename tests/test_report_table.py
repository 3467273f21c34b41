"""README's findings table comes from a run's claims.json (closerlook.report_table), never by hand."""
from __future__ import annotations

import json

import pytest

from closerlook import claims, report_table, verdicts


@pytest.fixture(scope="module")
def claims_json(tmp_path_factory):
    """A real claims.json: the seven claims evaluated on no tables at all (all inconclusive)."""
    path = tmp_path_factory.mktemp("run") / "claims.json"
    claims.write_reports(claims.evaluate({}, dict(verdicts.DEFAULT_RULES)), path, path.with_suffix(".md"))
    return path


def test_table_has_every_claim_its_provenance_and_counts(claims_json):
    result = json.loads(claims_json.read_text())
    text = report_table.findings_table(result, "results/x/claims.json", commit="abc123", machine="m", date="d")
    assert text.startswith("From `results/x/claims.json` (commit `abc123`, m, d)")
    assert "reproduced 0, not reproduced 0, inconclusive 10." in text  # rows 1a-7 (claims split, issue 29)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "**" in line]
    assert [r.split("|")[1].strip() for r in rows] == [str(c["id"]) for c in result["claims"]]
    assert all(r.split("|")[5].strip() for r in rows)  # inconclusive: the reason is shown


def test_readme_block_is_replaced_between_markers(claims_json, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n{report_table.BEGIN}\nold table\n{report_table.END}\nafter\n")
    assert report_table.main([str(claims_json), "--readme", str(readme), "--commit", "c1", "--machine", "box",
                              "--date", "today"]) == 0
    text = readme.read_text()
    assert "old table" not in text and "(commit `c1`, box, today)" in text
    assert text.startswith("# t\n\nbefore\n") and text.endswith(f"{report_table.END}\nafter\n")
    with pytest.raises(ValueError):
        report_table.replace_block("no markers", "x")


def test_defaults_name_this_checkout_and_machine(claims_json, capsys):
    assert report_table.main([str(claims_json)]) == 0
    out = capsys.readouterr().out
    assert "logical cores" in out and "UTC" in out and "commit `" in out


def test_missing_claims_json_is_a_clear_error(tmp_path, capsys):
    assert report_table.main([str(tmp_path / "nope.json")]) == 2
    assert "make demo" in capsys.readouterr().err


def test_readme_has_the_markers():
    text = (report_table.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert text.index(report_table.BEGIN) < text.index(report_table.END)
