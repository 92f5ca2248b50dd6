"""docs/science.md quotes measurements, not prose: each results table there is the benchmark
script's own rendering of the raw JSON committed beside it (docs/results/). A table edited by
hand, or a JSON replaced without updating the page, fails here."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT, load_benchmark

SCIENCE = (ROOT / "docs" / "science.md").read_text(encoding="utf-8")
RESULTS = ROOT / "docs" / "results"


@pytest.mark.parametrize("script, result, render", [
    ("methods", "methods.json", "table"),
    ("miniature_pi", "miniature_2w_seeds.json", "table"),
    ("real_loop", "real_loop.json", "render"),
    ("ruler", "ruler.json", "table"),
    ("recovery", "recovery.json", "table"),
])
def test_science_tables_are_the_scripts_rendering_of_the_committed_json(script, result, render):
    rendered = getattr(load_benchmark(script), render)(json.loads((RESULTS / result).read_text()))
    rows = [line for line in rendered.splitlines() if line.startswith("|")]
    assert len(rows) >= 4  # a header, a rule and rows: the table was rendered
    missing = [row for row in rows if row not in SCIENCE]
    assert not missing, f"docs/science.md does not quote {result}'s table as rendered: {missing[:3]}"


def test_the_rendering_carries_the_json_values():
    """The check above is only as good as the renderers: a value changed in the JSON must change the
    table (here one perplexity of the methods run)."""
    methods = load_benchmark("methods")
    result = json.loads((RESULTS / "methods.json").read_text())
    before = methods.table(result)
    result["results"]["yarn"]["perplexity"]["1024"]["perplexity"] += 1.0
    assert methods.table(result) != before


def test_the_recovery_argmax_table_is_the_scripts_rendering_of_the_committed_record():
    """The recovery run's second table reads the per-trial tokens from its command record."""
    recovery = load_benchmark("recovery")
    result = json.loads((RESULTS / "recovery.json").read_text())
    rendered = recovery.errors_table(result, recovery.read_commands(RESULTS / "recovery.commands.jsonl.gz"))
    rows = [line for line in rendered.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + sum(len(by_step) for by_step in result["table"].values())
    missing = [row for row in rows if row not in SCIENCE]
    assert not missing, f"docs/science.md does not quote the recovery argmax table as rendered: {missing[:3]}"
