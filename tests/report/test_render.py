"""Each rendering of a report: terminal, Markdown, HTML, JSON (strict, schema-valid), and save() by suffix."""
import json
import re

import jsonschema
import pytest

from nnstab.report import REPORT_SCHEMA, SCHEMA_VERSION, Report

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reject_constant(name):
    raise ValueError(f"bare {name} in JSON output")


# -- terminal -------------------------------------------------------------------------------------------
def test_terminal_plain_has_no_escape_codes_and_a_line_per_kind(nonfinite_records):
    text = Report(nonfinite_records).to_terminal(color=False)
    assert not ANSI.search(text)
    report = Report(nonfinite_records)
    for kind in report.kinds():
        assert sum(1 for line in text.splitlines() if re.match(rf"\s+\S+ {kind}\b", line)) == 1
    assert len(text.splitlines()) <= 20  # short: it is read at a glance


def test_terminal_puts_the_verdict_and_first_nonfinite_event_before_the_kinds(nonfinite_records):
    lines = Report(nonfinite_records).to_terminal(color=False).splitlines()
    assert "FAILED" in lines[1] and "2 errors, 1 warning, 1 note" in lines[1]
    assert lines[2].strip().startswith("first non-finite: step 37") and "fc2" in lines[2] and "forward" in lines[2]
    assert "clip gradients" in " ".join(lines[3:5])  # its message, saying what to try
    marks = {line.split()[1]: line.split()[0] for line in lines if re.match(r"\s+\S+ [a-z_]+(\s|$)", line)}
    assert marks["nonfinite"] == "✗" and marks["exploding_gradient"] == "⚠" and marks["overflow"] == "✓"


def test_terminal_colour_marks_severities(nonfinite_records):
    text = Report(nonfinite_records).to_terminal(color=True)
    assert "\x1b[1;31m✗" in text and "\x1b[33m⚠" in text and "\x1b[32m✓" in text
    assert ANSI.sub("", text) == Report(nonfinite_records).to_terminal(color=False)


def test_terminal_ascii_fallback_has_only_ascii(nonfinite_records):
    assert Report(nonfinite_records).to_terminal(color=False, ascii=True).isascii()


def test_terminal_healthy_run_says_healthy(healthy_records):
    text = Report(healthy_records).to_terminal(color=False)
    assert "HEALTHY" in text and "first non-finite" not in text


def test_terminal_colour_follows_the_stream(monkeypatch, healthy_records):
    from nnstab.report import terminal

    class Tty:
        encoding = "utf-8"

        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert terminal.wants_color(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not terminal.wants_color(Tty())


# -- markdown ---------------------------------------------------------------------------------------------
def test_markdown_has_verdict_first_event_and_findings_table(nonfinite_records):
    md = Report(nonfinite_records).to_markdown()
    assert md.startswith("# nnstab report: MLP")
    assert "**✗ FAILED**" in md
    assert "> **First non-finite event**: step 37, layer `fc2`, forward" in md
    table = [line for line in md.splitlines() if line.startswith("| **first** error | nonfinite | `fc2`")]
    assert len(table) == 1 and "clip gradients" in table[0]
    for heading in ("## Summary", "## Findings", "## Loss", "## Layers", "## Run"):
        assert heading in md


def test_markdown_escapes_pipes_in_cells(runs):
    records = [runs.header(), runs.step(0),
               runs.finding("unstable_formula", "head", 0, "forward", "warning", 1.0, 0.0,
                            "log(softmax(x)) | loses digits; use log_softmax."), runs.end(1)]
    md = Report(records).to_markdown()
    assert "log(softmax(x)) \\| loses digits" in md


# -- html ---------------------------------------------------------------------------------------------------
def test_every_markdown_table_has_as_many_header_cells_as_columns(nonfinite_records, healthy_records):
    # an unescaped pipe in a header ("max |activation|") splits it: GFM then renders no table at all
    for records in (nonfinite_records, healthy_records):
        lines = Report(records).to_markdown().splitlines()
        for head, rule in zip(lines, lines[1:]):
            if re.fullmatch(r"\|(---\|)+", rule):
                assert len(re.split(r"(?<!\\)\|", head)) - 2 == rule.count("---"), head


def test_markdown_keeps_a_module_named_like_a_tag_as_text(runs):
    evil = "<script>alert(1)</script>"
    records = [runs.header(), runs.step(0),
               runs.finding("nonfinite", evil, 0, "forward", "error", float("nan"), 0.0, f"'{evil}' produced NaN"),
               runs.end(1)]
    for line in Report(records).to_markdown().splitlines():
        assert evil not in line.replace(f"`{evil}`", ""), line


def test_html_is_self_contained(nonfinite_records):
    page = Report(nonfinite_records).to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)  # nothing fetched from anywhere
    assert "<script" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only references inside the page (SVG clip paths)
    assert page.count("<svg") == 4  # loss, gradient norms, activation ranges, dead/saturated


def test_html_highlights_the_first_nonfinite_event_and_escapes_text(runs, nonfinite_records):
    page = Report(nonfinite_records).to_html()
    row = re.search(r'<tr class="first-nonfinite" id="finding-first">(.*?)</tr>', page, re.S).group(1)
    assert "fc2" in row and "nonfinite" in row and "clip gradients" in row
    page = Report([runs.header(model="<b>Net</b>"), runs.step(0), runs.end(1)]).to_html()
    assert "&lt;b&gt;Net&lt;/b&gt;" in page and "<b>Net</b>" not in page


def test_html_of_a_run_without_statistics_says_so(runs):
    page = Report([runs.header(layers=[]), runs.end(0)]).to_html()
    assert page.count("<svg") == 0 and page.count("Not recorded in this run.") == 4


# -- json ----------------------------------------------------------------------------------------------------
def test_json_is_strict_and_keeps_nonfinite_values_as_strings(nonfinite_records):
    text = Report(nonfinite_records).to_json()
    data = json.loads(text, parse_constant=_reject_constant)
    assert data["first_nonfinite"]["value"] == "inf"
    assert data["steps"][-1]["loss"] == "nan"
    assert data["summary"]["verdict"] == "error" and data["end"]["status"] == "ok"
    assert data["schema_version"] == SCHEMA_VERSION and data["format"] == "nnstab-report"


@pytest.mark.parametrize("run", ["healthy_run", "nonfinite_run"])
def test_json_validates_against_the_schema(runs, run):
    data = json.loads(Report(getattr(runs, run)()).to_json())
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.validate(data, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)


def test_the_schema_rejects_a_bare_nan_figure(nonfinite_records):
    data = json.loads(Report(nonfinite_records).to_json())
    data["findings"][0]["value"] = "not a number"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)


# -- save ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, starts", [(".md", "# nnstab report"), (".html", "<!DOCTYPE html>"),
                                            (".json", "{"), (".txt", "nnstab ·"), (".jsonl", '{"type": "header"')])
def test_save_picks_the_format_from_the_suffix(tmp_path, nonfinite_records, suffix, starts):
    path = Report(nonfinite_records).save(tmp_path / f"out{suffix}")
    assert path.read_text(encoding="utf-8").startswith(starts)


def test_saved_jsonl_reads_back_to_the_same_report(tmp_path, nonfinite_records):
    report = Report(nonfinite_records)
    again = Report.from_log(report.save(tmp_path / "log.jsonl"))
    assert again.to_json() == report.to_json()


def test_save_with_an_unknown_suffix_names_the_accepted_ones(tmp_path, healthy_records):
    with pytest.raises(ValueError, match=r"\.html.*\.md"):
        Report(healthy_records).save(tmp_path / "report.pdf")


# -- how the run ended, and what was not checked ------------------------------------------------------------
def test_a_run_that_raised_is_never_called_healthy(healthy_records):
    records = healthy_records[:-1] + [{"type": "end", "status": "exception", "steps": 50,
                                       "error": "RuntimeError: mat1 and mat2 shapes cannot be multiplied"}]
    report = Report(records)
    text = report.to_terminal(color=False)
    assert "✗ NO FINDINGS · SCRIPT RAISED" in text and "HEALTHY" not in text
    assert "the script stopped with: RuntimeError" in text
    for rendered in (report.to_markdown(), report.to_html()):
        assert "SCRIPT RAISED" in rendered and "mat1 and mat2" in rendered and "HEALTHY" not in rendered


def test_a_log_cut_off_without_end_says_so(healthy_records):
    assert "⚠ NO FINDINGS · LOG ENDS EARLY" in Report(healthy_records[:-1]).to_terminal(color=False)


def test_kinds_switched_off_are_not_shown_as_clean(runs):
    records = [runs.header(options={"checks": {"nonfinite": {"every": 1}, "overflow": {}}}), runs.step(0), runs.end(1)]
    report = Report(records)
    text = report.to_terminal(color=False)
    assert "✓ nonfinite" in text and "✓ overflow" in text and "✓ dead_relu" not in text
    assert "– not checked: loss_divergence, exploding_gradient" in text
    assert report.summary()["by_kind"]["dead_relu"]["checked"] is False
    assert "| – | dead_relu | not checked |" in report.to_markdown()
    assert "<th>nonfinite</th><td><code>every=1</code>" in report.to_html()


def test_findings_of_a_distributed_run_name_their_rank_in_every_format(runs):
    message = "fc2 produced inf in its output at step 0."
    bad = runs.finding("nonfinite", "fc2", 0, "forward", "error", "inf", 0.0, message, rank=1)
    report = Report([runs.header(rank=1, world_size=2), runs.step(0), bad, runs.end(1)])
    assert "rank 1: fc2" in report.to_markdown()
    assert "rank 1: fc2" in report.to_html()
    assert "rank 1: fc2" in report.to_terminal(color=False)
    single = runs.finding("nonfinite", "fc2", 0, "forward", "error", "inf", 0.0, message)
    assert "rank 1" not in Report([runs.header(), runs.step(0), single, runs.end(1)]).to_markdown()
